"""haproxy's configuration, pure: a load balancer's fold state in, configuration text out.

All escaping happens in :func:`transform`: values are quoted with :func:`quote` (single
quotes: no ``${VAR}`` expansion, ``#`` and spaces are literal) or come from a closed set
(the wire's literals, UUIDs, integers). The template only lays out. The same state and paths
give the same text, byte for byte. Process control (check, write, start, reload) is
`haproxy.py`'s.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2

from splice.agents.model import LoadBalancerSpec, ordered_policies
from splice.events.lbaas import HealthMonitor, L7Policy, L7Rule, Listener, Member, Pool

DEFAULT_MAXCONN = 8000  # per LB when listeners are unlimited; many LBs share one host's fds
HARD_STOP_AFTER = "5m"  # old workers of a reload give up lingering connections after this


class UnsafeValueError(ValueError):
    """A value that quoting cannot make safe (a line break): never rendered."""


# --------------------------------------------------------------------------- paths


def _in_dir(name: str, doc: str | None = None) -> Any:
    """A read-only attribute of `LbPaths`: the path of the file `name` in its directory."""
    return property(lambda paths: f"{paths.dir}/{name}", doc=doc)


@dataclass(frozen=True, slots=True)
class LbPaths:
    """The files of one LB in its state directory (unix sockets: keep ``dir`` short)."""

    dir: str

    config = _in_dir("haproxy.cfg")
    pidfile = _in_dir("haproxy.pid")
    stats_socket = _in_dir("stats.sock")
    master_socket = _in_dir("master.sock")
    server_state = _in_dir("server-state")
    applied = _in_dir("applied.sha256", "Digest of the configuration the running haproxy has "
                      "loaded (written after success).")


# --------------------------------------------------------------------------- escaping


def quote(value: str) -> str:
    """One haproxy configuration word holding exactly ``value``.

    Inside single quotes haproxy expands nothing (no ``${VAR}``, no backslash escapes) and
    ``#`` does not start a comment; a single quote is written as ``'\\''`` (close, escaped
    quote, reopen), as in a POSIX shell. Line breaks cannot be quoted: the model refuses them,
    and this function re-checks so that it is safe on its own.
    """
    return "'" + _printable(value).replace("'", "'\\''") + "'"


def log_format_literal(value: str) -> str:
    """Escape ``%`` for directives whose argument is a log-format string (``redirect``)."""
    return value.replace("%", "%%")


def comment(value: str | None) -> str:
    """A name shown in a ``#`` comment: refused if it could end the comment line."""
    return _printable(value or "")


def _printable(value: str) -> str:
    """haproxy's configuration is line-based: a control character (newline, carriage return,
    NUL, Unicode line or paragraph separators) is the one thing quoting cannot neutralise. The
    wire's types already refuse them; this keeps the renderer safe on its own."""
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise UnsafeValueError(f"control character {ch!r} in {value!r}")
    return value


def address(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def ms(value: int) -> str:
    """0 is haproxy's "no timeout", as it is Octavia's."""
    return f"{value}ms"


# --------------------------------------------------------------------------- transform

_BALANCE = {"ROUND_ROBIN": "roundrobin", "LEAST_CONNECTIONS": "leastconn", "SOURCE_IP": "source"}
_MATCH = {
    "EQUAL_TO": "-m str",
    "STARTS_WITH": "-m beg",
    "ENDS_WITH": "-m end",
    "CONTAINS": "-m sub",
    "REGEX": "-m reg",
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


def _mode(protocol: str) -> str:
    return "http" if protocol == "HTTP" else "tcp"  # HTTPS is TLS pass-through: TCP


def _frontend(spec: LoadBalancerSpec, lst: Listener) -> dict[str, Any]:
    acls: list[dict[str, str]] = []
    policies = []
    active = [p for p in ordered_policies(lst) if p.admin_state_up and p.rules]
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
        "bind": address(spec.vip_address, lst.protocol_port),
        "maxconn": lst.connection_limit if lst.connection_limit > 0 else DEFAULT_MAXCONN,
        "timeout_client": ms(lst.timeout_client_data),
        "disabled": not (lst.admin_state_up and spec.admin_state_up),
        "acls": acls,
        "policies": policies,
        "default_backend": backend_name(lst.default_pool_id) if lst.default_pool_id else None,
    }


def _acl(rule: L7Rule) -> dict[str, str]:
    """Octavia's rule → ACL mapping; ``--`` ends the flags so a value like ``-f /etc/x``
    stays a pattern, and the value itself is quoted."""
    fetch = {
        "HOST_NAME": "req.hdr(host)",
        "PATH": "path",
        "FILE_TYPE": "path_end" if rule.compare_type != "REGEX" else "path",
        "HEADER": f"req.hdr({rule.key})",
        "COOKIE": f"req.cook({rule.key})",
    }[rule.type]
    flags = _MATCH[rule.compare_type]
    if rule.type == "HOST_NAME":
        flags = f"-i {flags}"
    return {"fetch": fetch, "flags": flags, "value": quote(rule.value)}


def _policy(policy: L7Policy, index: int, condition: str) -> dict[str, Any]:
    """Policies are evaluated first-match-wins by position, whatever their action: the first
    matching policy's index goes into a transaction variable, then each action fires on its
    own index. (haproxy itself would run every ``deny`` before any ``use_backend``.)"""
    out: dict[str, Any] = {
        "id": policy.id,
        "position": policy.position,
        "index": index,
        "action": policy.action,
        "condition": condition,
        "code": policy.redirect_http_code,
    }
    if policy.action == "REDIRECT_TO_POOL":
        assert policy.redirect_pool_id is not None
        out["backend"] = backend_name(policy.redirect_pool_id)
    if policy.action == "REDIRECT_TO_URL":
        assert policy.redirect_url is not None
        out["location"] = quote(log_format_literal(policy.redirect_url))
    return out


def _backend(pool: Pool, listeners: list[Listener]) -> dict[str, Any]:
    """A pool shared by several listeners takes the most patient of their member timeouts
    (0, no timeout, is the most patient of all)."""
    connect = _patient(lst.timeout_member_connect for lst in listeners) if listeners else 5000
    data = _patient(lst.timeout_member_data for lst in listeners) if listeners else 50000
    sp = pool.session_persistence
    hm = pool.healthmonitor if pool.healthmonitor and pool.healthmonitor.admin_state_up else None
    return {
        "name": backend_name(pool.id),
        "comment": comment(pool.name),
        "mode": _mode(pool.protocol),
        "balance": _BALANCE[pool.lb_algorithm],
        "timeout_connect": ms(connect),
        "timeout_server": ms(data),
        "disabled": not pool.admin_state_up,
        "persistence": sp.type if sp else None,
        "cookie_name": sp.cookie_name if sp and sp.type == "APP_COOKIE" else None,
        "monitor": _monitor(hm) if hm else None,
        "servers": [_server(m) for m in pool.members],
    }


def _patient(values: Any) -> int:
    vals = list(values)
    return 0 if 0 in vals else max(vals)


def _monitor(hm: HealthMonitor) -> dict[str, Any]:
    return {
        "type": hm.type,
        "inter": f"{hm.delay}s",
        "timeout": f"{hm.timeout}s",
        "rise": hm.max_retries,
        "fall": hm.max_retries_down,
        "method": hm.http_method,
        "path": quote(hm.url_path),
        "codes": hm.expected_codes,
    }


def _server(member: Member) -> dict[str, Any]:
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
        loader=jinja2.PackageLoader("splice.agents.drivers.haproxy", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - not HTML; values are escaped for haproxy by transform()
    )


def render(spec: LoadBalancerSpec, paths: LbPaths) -> str:
    """The configuration of one load balancer: the template laid out over `transform`."""
    return _environment().get_template("haproxy.cfg.j2").render(**transform(spec, paths))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


