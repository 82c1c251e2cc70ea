"""haproxy driver: transform a spec into plain values, render, check, apply, run, observe.

Three layers, each testable alone:

* **transform + render** (pure): :func:`render` turns a :class:`LoadBalancerSpec` and the LB's
  file paths into configuration text. All escaping happens in :func:`transform` — values are
  quoted with :func:`quote` (single quotes: no ``${VAR}`` expansion, ``#`` and spaces are
  literal) or come from a closed set (enums, UUIDs, integers). The template only lays out.
* **files** (blocking): :func:`write_checked` writes ``haproxy.cfg.new``, runs ``haproxy -c``,
  keeps a refused file aside as ``haproxy.cfg.rejected``, else fsyncs and renames.
* **process** (blocking): :func:`start` runs haproxy master-worker inside the LB namespace
  (``ip netns exec``), :func:`reload` saves server state and sends SIGUSR2 to the master — the
  new worker inherits the listening sockets, so no connection is refused during a reload —
  and :func:`show_stat` reads the stats socket.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from splice.agents.model import (
    Algorithm,
    CompareType,
    HealthMonitorSpec,
    L7Action,
    L7PolicySpec,
    L7RuleSpec,
    L7RuleType,
    ListenerSpec,
    LoadBalancerSpec,
    MemberSpec,
    PersistenceType,
    PoolSpec,
    Protocol,
    check_text,
    parse_expected_codes,
)
from splice.agents.netns import process_alive

HAPROXY = "haproxy"
DEFAULT_MAXCONN = 8000  # per LB when listeners are unlimited; many LBs share one host's fds
HARD_STOP_AFTER = "5m"  # old workers of a reload give up lingering connections after this


class HaproxyError(RuntimeError):
    """haproxy refused a configuration, failed to start, or did not take a reload."""


class ConfigRejectedError(HaproxyError):
    """``haproxy -c`` refused the rendered configuration (it is kept as ``.rejected``)."""


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True, slots=True)
class LbPaths:
    """The files of one LB in its state directory (unix sockets: keep ``dir`` short)."""

    dir: str

    @property
    def config(self) -> str:
        return f"{self.dir}/haproxy.cfg"

    @property
    def pidfile(self) -> str:
        return f"{self.dir}/haproxy.pid"

    @property
    def stats_socket(self) -> str:
        return f"{self.dir}/stats.sock"

    @property
    def master_socket(self) -> str:
        return f"{self.dir}/master.sock"

    @property
    def server_state(self) -> str:
        return f"{self.dir}/server-state"

    @property
    def applied(self) -> str:
        """Digest of the configuration the running haproxy has loaded (written after success)."""
        return f"{self.dir}/applied.sha256"


# --------------------------------------------------------------------------- escaping


def quote(value: str) -> str:
    """One haproxy configuration word holding exactly ``value``.

    Inside single quotes haproxy expands nothing (no ``${VAR}``, no backslash escapes) and
    ``#`` does not start a comment; a single quote is written as ``'\\''`` (close, escaped
    quote, reopen), as in a POSIX shell. Line breaks cannot be quoted: the model refuses them,
    and this function re-checks so that it is safe on its own.
    """
    check_text("value", value, limit=4096)
    return "'" + value.replace("'", "'\\''") + "'"


def log_format_literal(value: str) -> str:
    """Escape ``%`` for directives whose argument is a log-format string (``redirect``)."""
    return value.replace("%", "%%")


def comment(value: str) -> str:
    """A name shown in a ``#`` comment: refused if it could end the comment line."""
    return check_text("name", value)


def address(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def ms(value: int) -> str:
    return f"{value}ms"


# --------------------------------------------------------------------------- transform

_BALANCE = {
    Algorithm.ROUND_ROBIN: "roundrobin",
    Algorithm.LEAST_CONNECTIONS: "leastconn",
    Algorithm.SOURCE_IP: "source",
}
_MATCH = {
    CompareType.EQUAL_TO: "-m str",
    CompareType.STARTS_WITH: "-m beg",
    CompareType.ENDS_WITH: "-m end",
    CompareType.CONTAINS: "-m sub",
    CompareType.REGEX: "-m reg",
}


def frontend_name(listener_id: str) -> str:
    return f"l-{listener_id}"


def backend_name(pool_id: str) -> str:
    return f"p-{pool_id}"


def server_name(member_id: str) -> str:
    return f"m-{member_id}"


def transform(spec: LoadBalancerSpec, paths: LbPaths) -> dict[str, Any]:
    """The template's whole input: plain strings, ints and lists, already escaped."""
    limited = [lst.connection_limit for lst in spec.listeners if lst.connection_limit > 0]
    unlimited = any(lst.connection_limit == -1 for lst in spec.listeners)
    maxconn = (DEFAULT_MAXCONN if unlimited else 0) + sum(limited) or DEFAULT_MAXCONN
    by_pool = spec.listeners_by_pool
    return {
        "lb": {
            "id": spec.id,
            "generation": spec.generation,
            "comment": comment(spec.name),
            "maxconn": maxconn,
            "hard_stop_after": HARD_STOP_AFTER,
        },
        "paths": {
            "pidfile": quote(paths.pidfile),
            "stats_socket": quote(paths.stats_socket),
            "server_state": quote(paths.server_state),
        },
        "frontends": [_frontend(spec, lst) for lst in spec.listeners],
        "backends": [_backend(pool, by_pool[pool.id]) for pool in spec.pools],
    }


def _mode(protocol: Protocol) -> str:
    return "http" if protocol is Protocol.HTTP else "tcp"


def _frontend(spec: LoadBalancerSpec, lst: ListenerSpec) -> dict[str, Any]:
    acls: list[dict[str, str]] = []
    policies = []
    active = [p for p in lst.ordered_policies if p.admin_state_up and p.rules]
    for index, policy in enumerate(active, start=1):
        names = []
        for rule_index, rule in enumerate(policy.rules, start=1):
            name = f"r{index}_{rule_index}"
            acls.append({"name": name, **_acl(rule)})
            names.append(f"!{name}" if rule.invert else name)
        policies.append(_policy(policy, index, " ".join(names)))
    return {
        "name": frontend_name(lst.id),
        "comment": comment(lst.name),
        "mode": _mode(lst.protocol),
        "bind": address(spec.vip_address, lst.port),
        "maxconn": lst.connection_limit if lst.connection_limit > 0 else DEFAULT_MAXCONN,
        "timeout_client": ms(lst.timeout_client_data_ms),
        "disabled": not (lst.admin_state_up and spec.admin_state_up),
        "acls": acls,
        "policies": policies,
        "default_backend": backend_name(lst.default_pool_id) if lst.default_pool_id else None,
    }


def _acl(rule: L7RuleSpec) -> dict[str, str]:
    """Octavia's rule → ACL mapping; ``--`` ends the flags so a value like ``-f /etc/x``
    stays a pattern, and the value itself is quoted."""
    fetch = {
        L7RuleType.HOST_NAME: "req.hdr(host)",
        L7RuleType.PATH: "path",
        L7RuleType.FILE_TYPE: "path_end" if rule.compare_type is not CompareType.REGEX else "path",
        L7RuleType.HEADER: f"req.hdr({rule.key})",
        L7RuleType.COOKIE: f"req.cook({rule.key})",
    }[rule.type]
    flags = _MATCH[rule.compare_type]
    if rule.type is L7RuleType.HOST_NAME:
        flags = f"-i {flags}"
    return {"fetch": fetch, "flags": flags, "value": quote(rule.value)}


def _policy(policy: L7PolicySpec, index: int, condition: str) -> dict[str, Any]:
    """Policies are evaluated first-match-wins by position, whatever their action: the first
    matching policy's index goes into a transaction variable, then each action fires on its
    own index. (haproxy itself would run every ``deny`` before any ``use_backend``.)"""
    out: dict[str, Any] = {
        "id": policy.id,
        "position": policy.position,
        "index": index,
        "action": str(policy.action),
        "condition": condition,
        "code": policy.redirect_http_code,
    }
    if policy.action is L7Action.REDIRECT_TO_POOL:
        assert policy.redirect_pool_id is not None
        out["backend"] = backend_name(policy.redirect_pool_id)
    if policy.action is L7Action.REDIRECT_TO_URL:
        assert policy.redirect_url is not None
        out["location"] = quote(log_format_literal(policy.redirect_url))
    return out


def _backend(pool: PoolSpec, listeners: list[ListenerSpec]) -> dict[str, Any]:
    """A pool shared by several listeners takes the most patient of their member timeouts."""
    connect = max((lst.timeout_member_connect_ms for lst in listeners), default=5000)
    data = max((lst.timeout_member_data_ms for lst in listeners), default=50000)
    sp = pool.session_persistence
    return {
        "name": backend_name(pool.id),
        "comment": comment(pool.name),
        "mode": _mode(pool.protocol),
        "balance": _BALANCE[pool.lb_algorithm],
        "timeout_connect": ms(connect),
        "timeout_server": ms(data),
        "disabled": not pool.admin_state_up,
        "persistence": str(sp.type) if sp else None,
        "cookie_name": sp.cookie_name if sp and sp.type is PersistenceType.APP_COOKIE else None,
        "monitor": _monitor(pool.healthmonitor) if pool.healthmonitor else None,
        "servers": [_server(m) for m in pool.members],
    }


def _monitor(hm: HealthMonitorSpec) -> dict[str, Any]:
    codes = ",".join(
        str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in parse_expected_codes(hm.expected_codes)
    )
    return {
        "type": str(hm.type),
        "inter": f"{hm.delay}s",
        "timeout": f"{hm.timeout}s",
        "rise": hm.max_retries,
        "fall": hm.max_retries_down,
        "method": str(hm.http_method),
        "path": quote(hm.url_path),
        "codes": codes,
    }


def _server(member: MemberSpec) -> dict[str, Any]:
    return {
        "name": server_name(member.id),
        "comment": comment(member.name),
        "address": address(member.address, member.protocol_port),
        "weight": member.weight,
        "backup": member.backup,
        "disabled": not member.admin_state_up,
    }


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("splice.agents", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - not HTML; values are escaped for haproxy by transform()
    )


def render(spec: LoadBalancerSpec, paths: LbPaths) -> str:
    """Pure: the same spec and paths give the same text, byte for byte."""
    return _environment().get_template("haproxy.cfg.j2").render(**transform(spec, paths))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- files


def check_config(path: str) -> None:
    """``haproxy -c``: raise with haproxy's own words if it refuses the file."""
    proc = subprocess.run(
        [HAPROXY, "-c", "-q", "-f", path], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise ConfigRejectedError((proc.stderr or proc.stdout).strip()[-2000:])


def write_checked(paths: LbPaths, text: str) -> bool:
    """Write, check, fsync, rename; ``False`` if the file already holds ``text``.

    A refused file is kept as ``haproxy.cfg.rejected`` for the operator and the running
    configuration is left untouched.
    """
    Path(paths.dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        if Path(paths.config).read_text() == text:
            return False
    new = f"{paths.config}.new"
    _write_synced(new, text)
    try:
        check_config(new)
    except ConfigRejectedError:
        os.replace(new, f"{paths.config}.rejected")
        raise
    os.replace(new, paths.config)
    _fsync_dir(paths.dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{paths.config}.rejected")
    return True


def _write_synced(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_applied(paths: LbPaths, text: str) -> None:
    _write_synced(paths.applied, digest(text))


def applied_digest(paths: LbPaths) -> str | None:
    try:
        return Path(paths.applied).read_text().strip() or None
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- process


def master_pid(paths: LbPaths) -> int | None:
    try:
        return int(Path(paths.pidfile).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def running_master(paths: LbPaths, netns_inode: int | None) -> int | None:
    """The master's pid if it is alive, is haproxy, and runs in the expected namespace."""
    pid = master_pid(paths)
    if pid is None or netns_inode is None:
        return None
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "haproxy":
            return None
        if os.stat(f"/proc/{pid}/ns/net").st_ino != netns_inode:
            return None
    except OSError:
        return None
    return pid


def start(namespace: str, paths: LbPaths, deadline_s: float = 10.0) -> int:
    """Start master-worker haproxy in ``namespace`` and wait until its stats socket answers.

    ``daemon`` in the config makes haproxy detach (it outlives the agent: the data plane keeps
    serving across agent restarts); bind errors still surface as a non-zero exit status.
    """
    for stale in (paths.pidfile, paths.server_state):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    cmd = ["ip", "netns", "exec", namespace, HAPROXY, "-f", paths.config,
           "-S", f"{paths.master_socket},mode,600"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise HaproxyError(f"haproxy failed to start: {proc.stderr.strip()[-2000:]}")
    _wait_for(lambda: _try_info(paths), deadline_s, "haproxy stats socket")
    pid = master_pid(paths)
    if pid is None:
        raise HaproxyError("haproxy started without writing its pidfile")
    return pid


def reload(paths: LbPaths, deadline_s: float = 15.0) -> None:
    """Hitless reload: save server state, SIGUSR2 the master, wait for the new worker.

    The master re-executes itself, fetches the listening sockets from the old worker, starts a
    new worker that loads the server state (health and weights survive), and tells the old one
    to finish its connections. Done when the stats socket is answered by a new worker pid.
    """
    pid = master_pid(paths)
    if pid is None:
        raise HaproxyError("no pidfile: haproxy is not running")
    before = _try_info(paths)
    save_server_state(paths)
    try:
        os.kill(pid, signal.SIGUSR2)
    except ProcessLookupError:
        raise HaproxyError("haproxy master vanished before reload") from None
    old_worker = before.get("Pid") if before else None

    def reloaded() -> dict[str, str] | None:
        info = _try_info(paths)
        return info if info and info.get("Pid") != old_worker else None

    _wait_for(reloaded, deadline_s, "new haproxy worker after reload")


def stop(paths: LbPaths, deadline_s: float = 5.0) -> None:
    """SIGTERM the master (it stops its workers); the namespace sweep kills any straggler."""
    pid = master_pid(paths)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and process_alive(pid):
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_for(probe: Any, deadline_s: float, what: str) -> Any:
    end = time.monotonic() + deadline_s
    delay = 0.005
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > end:
            raise HaproxyError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# --------------------------------------------------------------------------- stats socket


def command(sock_path: str, line: str, timeout_s: float = 2.0) -> str:
    """One command on a haproxy CLI socket (it answers and closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(sock_path)
        s.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _try_info(paths: LbPaths) -> dict[str, str] | None:
    try:
        text = command(paths.stats_socket, "show info")
    except OSError:
        return None
    info = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return info or None


def save_server_state(paths: LbPaths) -> None:
    """``show servers state`` into the server-state file the next worker loads."""
    try:
        text = command(paths.stats_socket, "show servers state")
    except OSError:
        return
    if text.startswith("1\n"):
        tmp = f"{paths.server_state}.new"
        _write_synced(tmp, text)
        os.replace(tmp, paths.server_state)


def show_stat(paths: LbPaths) -> list[dict[str, str]] | None:
    """``show stat`` as CSV rows (``pxname``, ``svname``, ``status``...), or None if silent."""
    try:
        text = command(paths.stats_socket, "show stat")
    except OSError:
        return None
    return parse_stat(text)


def parse_stat(text: str) -> list[dict[str, str]]:
    text = text.lstrip("# ")
    return [dict(row) for row in csv.DictReader(io.StringIO(text)) if row.get("pxname")]
