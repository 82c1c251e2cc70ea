"""The load balancer's rules beyond types, once: what a host can serve.

The wire types (`lbaas.py`) bound each value alone; these functions check what values mean
together: protocol compatibility, persistence and cookie rules, L7 rule keys and regular
expressions, monitor timing, listener limits. The command side calls them when it decides
(so what it accepts, a host can serve); the agent never checks again, it trusts the fold.

Each check raises `RuleViolation` naming the field (a JSON path under ``where``).

What a provider can serve is checked here too (``check_served_*``, given the load balancer's
``insertion.provider``): the in-kernel ``nftables-l4`` balances TCP connections only, round
robin or by source address, with TCP health checks, and has no L7 policies and no connection
limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .lbaas import (
    HealthMonitor,
    L7PolicyIn,
    L7RuleIn,
    Listener,
    ListenerIn,
    MemberIn,
    Pool,
    PoolIn,
    SessionPersistence,
)


class RuleViolation(ValueError):
    """A command's values contradict each other or cannot be served; `field` names the input."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message, self.field = message, field


# Which pool protocols a listener of each protocol can send traffic to (Octavia's table).
COMPATIBLE: dict[str, frozenset[str]] = {
    "TCP": frozenset({"TCP"}),
    "HTTP": frozenset({"HTTP"}),
    "HTTPS": frozenset({"HTTPS", "TCP"}),
}
KEYED_RULES = frozenset({"HEADER", "COOKIE"})
# Group constructs that mean the same to Python's `re` and to haproxy's PCRE2: any other
# `(?` (inline flags such as `(?u)`, named groups) is refused rather than guessed at.
_REGEX_GROUPS = re.compile(r"\(\?(?!:|=|!|<=|<!)")


def check_pool_protocol(listener_protocol: str, pool_protocol: str, field: str) -> None:
    if pool_protocol not in COMPATIBLE[listener_protocol]:
        raise RuleViolation(f"a {listener_protocol} listener cannot use a {pool_protocol} pool",
                            field)


def check_persistence(sp: SessionPersistence | None, pool_protocol: str, where: str) -> None:
    if sp is None:
        return
    if sp.type in ("HTTP_COOKIE", "APP_COOKIE") and pool_protocol != "HTTP":
        raise RuleViolation(f"{sp.type} persistence needs an HTTP pool", where)
    if sp.type == "APP_COOKIE" and not sp.cookie_name:
        raise RuleViolation("APP_COOKIE persistence needs cookie_name", f"{where}.cookie_name")
    if sp.type != "APP_COOKIE" and sp.cookie_name is not None:
        raise RuleViolation(
            f"cookie_name is only for APP_COOKIE ({sp.type} uses a cookie of its own)",
            f"{where}.cookie_name",
        )


def check_members(members: Iterable[MemberIn], where: str) -> None:
    seen: set[tuple[str, int]] = set()
    for i, m in enumerate(members):
        key = (m.address, m.protocol_port)
        if key in seen:
            raise RuleViolation(f"member {m.address}:{m.protocol_port} is listed twice",
                                f"{where}[{i}]")
        seen.add(key)


def check_monitor(hm: HealthMonitor | None, where: str) -> None:
    if hm is None:
        return
    if hm.timeout > hm.delay:
        raise RuleViolation("timeout must not exceed delay", f"{where}.timeout")
    for part in hm.expected_codes.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise RuleViolation(f"range {part} goes down", f"{where}.expected_codes")


def check_rule(r: L7RuleIn, where: str) -> None:
    if r.type in KEYED_RULES and not r.key:
        raise RuleViolation(f"a {r.type} rule needs a key", f"{where}.key")
    if r.type not in KEYED_RULES and r.key is not None:
        raise RuleViolation(f"a {r.type} rule takes no key", f"{where}.key")
    if r.compare_type == "REGEX":
        if _REGEX_GROUPS.search(r.value):
            raise RuleViolation("only (?: (?= (?! (?<= (?<! groups are allowed", f"{where}.value")
        try:
            re.compile(r.value)
        except re.error as e:
            raise RuleViolation(f"not a regular expression: {e}", f"{where}.value") from None


def check_policy(p: L7PolicyIn, listener_protocol: str, pool_id: str | None,
                 pool_protocols: dict[str, str], where: str) -> None:
    """`pool_id`: the redirect pool as resolved (by name or id); `pool_protocols` by pool id."""
    if listener_protocol != "HTTP":
        raise RuleViolation("L7 policies need an HTTP listener", where)
    if p.action == "REDIRECT_TO_POOL":
        if pool_id is None or pool_id not in pool_protocols:
            raise RuleViolation("REDIRECT_TO_POOL needs a pool of this load balancer",
                                f"{where}.redirect_pool_id")
        check_pool_protocol(listener_protocol, pool_protocols[pool_id], f"{where}.redirect_pool_id")
    if p.action == "REDIRECT_TO_URL" and not p.redirect_url:
        raise RuleViolation("REDIRECT_TO_URL needs redirect_url", f"{where}.redirect_url")
    for i, r in enumerate(p.rules):
        check_rule(r, f"{where}.rules[{i}]")


def check_connection_limit(limit: int | None, field: str) -> None:
    if limit == 0:
        raise RuleViolation("0 would admit no connection: -1 is unlimited", field)


def check_listener(li: ListenerIn, taken_ports: set[int], taken_names: set[str],
                   where: str) -> None:
    if li.protocol_port in taken_ports:
        raise RuleViolation(f"port {li.protocol_port} has a listener already",
                            f"{where}.protocol_port")
    if li.name in taken_names:
        raise RuleViolation(f"a listener named {li.name!r} exists", f"{where}.name")
    check_connection_limit(li.connection_limit, f"{where}.connection_limit")


# -- what a provider can serve ----------------------------------------------------------------

L4_PROVIDER = "nftables-l4"
L4_ALGORITHMS = ("ROUND_ROBIN", "SOURCE_IP")


def check_served_listener(provider: str, li: ListenerIn | Listener, where: str) -> None:
    if provider != L4_PROVIDER:
        return
    if li.protocol != "TCP":
        raise RuleViolation(f"{L4_PROVIDER} serves TCP listeners only, not {li.protocol}",
                            f"{where}.protocol")
    if li.connection_limit != -1:
        raise RuleViolation(f"{L4_PROVIDER} has no connection limit: -1 only",
                            f"{where}.connection_limit")
    if li.l7policies:
        raise RuleViolation(f"{L4_PROVIDER} has no L7 policies", f"{where}.l7policies")


def check_served_pool(provider: str, p: PoolIn | Pool, where: str) -> None:
    if provider != L4_PROVIDER:
        return
    if p.protocol != "TCP":
        raise RuleViolation(f"{L4_PROVIDER} serves TCP pools only, not {p.protocol}",
                            f"{where}.protocol")
    if p.lb_algorithm not in L4_ALGORITHMS:
        raise RuleViolation(f"{L4_PROVIDER} balances by {' or '.join(L4_ALGORITHMS)}, not "
                            f"{p.lb_algorithm}", f"{where}.lb_algorithm")
    sp = p.session_persistence
    if sp is not None and sp.type != "SOURCE_IP":
        raise RuleViolation(f"{L4_PROVIDER} keeps sessions by SOURCE_IP only, not {sp.type}",
                            f"{where}.session_persistence.type")
    check_served_monitor(provider, p.healthmonitor, f"{where}.healthmonitor")


def check_served_monitor(provider: str, hm: HealthMonitor | None, where: str) -> None:
    if provider == L4_PROVIDER and hm is not None and hm.type != "TCP":
        raise RuleViolation(f"{L4_PROVIDER} checks members over TCP only, not {hm.type}",
                            f"{where}.type")


def check_served_policy(provider: str, where: str) -> None:
    if provider == L4_PROVIDER:
        raise RuleViolation(f"{L4_PROVIDER} has no L7 policies", where)
