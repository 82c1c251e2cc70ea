"""haproxy's processes and files: check, write, start, reload, stop, and read its stats.

* **files**: :func:`write_checked` writes ``haproxy.cfg.new``, runs ``haproxy -c``, keeps a
  refused file aside as ``haproxy.cfg.rejected``, else fsyncs and renames.
* **process**: :func:`start` runs haproxy master-worker inside the LB namespace
  (``ip netns exec``), :func:`reload` saves server state and sends SIGUSR2 to the master — the
  new worker inherits the listening sockets, so no connection is refused during a reload —
  and :func:`show_stat` reads the stats socket.

A master that has just started or re-executed itself drops a SIGUSR2 that arrives before it
has registered its handler (about 10 ms after its worker answers; measured with haproxy 2.6:
one of two back-to-back reloads was lost and waited out its deadline). Both therefore wait
until the master's own CLI answers and lists the current worker before they return, and a
reload waits for that before it signals too.

What the configuration says is `haproxy_render.py`'s (pure).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from splice.agents.drivers.haproxy.render import LbPaths, digest
from splice.agents.netns import pids_in_namespace, process_alive

HAPROXY = "haproxy"
NETNS_EXEC = "nsenter"  # or "ip" (ip netns exec): see `enter_netns`


class HaproxyError(RuntimeError):
    """haproxy refused a configuration, failed to start, or did not take a reload."""


class ConfigRejectedError(HaproxyError):
    """``haproxy -c`` refused the rendered configuration (it is kept as ``.rejected``)."""


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
    cmd = [*enter_netns(namespace), HAPROXY, "-f", paths.config,
           "-S", f"{paths.master_socket},mode,600"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise HaproxyError(f"haproxy failed to start: {proc.stderr.strip()[-2000:]}")
    info = _wait_for(lambda: _try_info(paths), deadline_s, "haproxy stats socket")
    pid = master_pid(paths)
    if pid is None:
        raise HaproxyError("haproxy started without writing its pidfile")
    _wait_for(lambda: master_ready(paths, info.get("Pid")), deadline_s, "haproxy master CLI")
    return pid


def enter_netns(namespace: str) -> list[str]:
    """The command prefix that runs a program in `namespace`'s network namespace only.

    Not ``ip netns exec``: that also gives the program a mount namespace of its own, copied
    from the host's, which holds one bind mount per named namespace (with 300 load balancers,
    each haproxy had 312 mounts: work and memory that grow with the square of their number).
    haproxy needs no /sys of its namespace, so entering the network namespace is enough."""
    if NETNS_EXEC == "ip":
        return ["ip", "netns", "exec", namespace]
    return ["nsenter", f"--net=/run/netns/{namespace}", "--"]


def reload(paths: LbPaths, deadline_s: float = 15.0) -> None:
    """Hitless reload: save server state, SIGUSR2 the master, wait for the new worker.

    The master re-executes itself, fetches the listening sockets from the old worker, starts a
    new worker that loads the server state (health and weights survive), and tells the old one
    to finish its connections. Done when the stats socket is answered by a new worker pid.
    """
    pid = master_pid(paths)
    if pid is None:
        raise HaproxyError("no pidfile: haproxy is not running")
    _wait_for(lambda: master_ready(paths, None), deadline_s, "haproxy master ready to reload")
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

    after = _wait_for(reloaded, deadline_s, "new haproxy worker after reload")
    _wait_for(lambda: master_ready(paths, after.get("Pid")), deadline_s,
              "haproxy master CLI after reload")


def master_ready(paths: LbPaths, worker: str | None) -> bool:
    """The master answers on its CLI (so it takes the next SIGUSR2) and, when `worker` is
    given, lists that pid as one of its workers."""
    try:
        text = command(paths.master_socket, "show proc", half_close=True)
    except OSError:
        return False
    if not text.startswith("#"):
        return False
    return worker is None or any(ln.split()[:2] == [worker, "worker"] for ln in text.splitlines())


def kill_leftovers(namespace: str, paths: LbPaths) -> None:
    """SIGKILL the processes in `namespace` that run this LB's configuration (workers outlive
    a killed master), leaving the namespace's other processes alone."""
    for pid in pids_in_namespace(namespace):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if paths.config.encode() in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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


def command(sock_path: str, line: str, timeout_s: float = 2.0, *, half_close: bool = False) -> str:
    """One command on a haproxy CLI socket (it answers and closes). The master's CLI closes
    only once the client has: `half_close` shuts our side after the command."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(sock_path)
        s.sendall(line.encode() + b"\n")
        if half_close:
            s.shutdown(socket.SHUT_WR)
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
