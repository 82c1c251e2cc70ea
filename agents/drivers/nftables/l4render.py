"""The in-kernel L4 load balancer's table (provider ``nftables-l4``), pure: listeners in, nft
JSON out (the layout is in `render`'s docstring).

Besides the DNAT and the resets, the table counts, per listener port P, in three named
counters (names made of the validated port number only, nothing a tenant wrote):

* ``conn_P``: the connections DNATed to a member (the nat chain sees a flow's first packet);
* ``in_P`` / ``out_P``: the bytes of the flows to the VIP and P that the namespace forwards,
  client to member (conntrack's original direction) and back (reply). IP bytes, headers
  included, as the kernel counts them.

Named counters outlive a replacement of the table's rules (`Ruleset.batch` keeps them), so a
member going down and the table rendered again does not reset them; the agent reads them with
``nft -j list counters`` (`drivers.l4.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .render import (
    DSTNAT_PRIO,
    ESTABLISHED,
    FILTER_PRIO,
    INPUT_CHAIN,
    L4_FAMILY,
    POSTROUTING_CHAIN,
    PREROUTING_CHAIN,
    SRCNAT_PRIO,
    Chain,
    L4Listener,
    Rule,
    Ruleset,
    UnsafeValueError,
    _match,
    _port,
    _slot_key,
    ipv4,
    port,
)

FORWARD_CHAIN = "forward"


def counter_names(listener_port: int) -> tuple[str, str, str]:
    """The named counters of one listener port: connections, bytes in, bytes out."""
    p = port(listener_port)
    return f"conn_{p}", f"in_{p}", f"out_{p}"


def _ct(key: str, right: Any, direction: str | None = None) -> dict[str, Any]:
    left: dict[str, Any] = {"key": key, **({"dir": direction} if direction else {})}
    return _match({"ct": left}, right)


def _bytes_rule(address: str, listener_port: int, direction: str, name: str) -> Rule:
    """Count the forwarded packets of flows to the VIP and port, in one direction (written
    as ``nft -j list`` gives it back, so the read-back compares equal)."""
    return Rule(FORWARD_CHAIN, (
        _ct("ip daddr", address, "original"), _ct("protocol", "tcp"),
        _ct("proto-dst", listener_port, "original"), _ct("direction", direction),
        {"counter": name}))


def render_l4(table: str, vip: str, listeners: Sequence[L4Listener]) -> Ruleset:
    """An L4 load balancer's table; listeners by port."""
    address = ipv4(vip)
    rules = [Rule(POSTROUTING_CHAIN, (_match({"ct": {"key": "status"}}, "dnat", "in"),
                                      {"masquerade": None})),
             Rule(INPUT_CHAIN, ESTABLISHED)]
    resets: list[Rule] = []
    counts: list[Rule] = []
    counters: list[str] = []
    seen: set[int] = set()
    for li in sorted(listeners, key=lambda x: port(x.port)):
        if li.port in seen:
            raise UnsafeValueError(f"two listeners on port {li.port}")
        seen.add(li.port)
        conn, bytes_in, bytes_out = counter_names(li.port)
        counters += [conn, bytes_in, bytes_out]
        to_vip = (_match({"payload": {"protocol": "ip", "field": "daddr"}}, address),
                  _port("tcp", "dport", li.port, li.port))
        if li.backends:
            elements = [[i, {"concat": [ipv4(a), port(p)]}] for i, (a, p) in enumerate(li.backends)]
            key = _slot_key(len(elements), li.seed)
            rules.append(Rule(PREROUTING_CHAIN, (*to_vip, {"counter": conn}, {"dnat": {
                "family": L4_FAMILY, "addr": {"map": {"key": key, "data": {"set": elements}}}}})))
        resets.append(Rule(INPUT_CHAIN, (*to_vip, {"reject": {"type": "tcp reset"}})))
        counts += [_bytes_rule(address, li.port, "original", bytes_in),
                   _bytes_rule(address, li.port, "reply", bytes_out)]
    chains = (Chain(PREROUTING_CHAIN, "nat", "prerouting", DSTNAT_PRIO, "accept"),
              Chain(POSTROUTING_CHAIN, "nat", "postrouting", SRCNAT_PRIO, "accept"),
              Chain(INPUT_CHAIN, "filter", "input", FILTER_PRIO, "accept"),
              Chain(FORWARD_CHAIN, "filter", "forward", FILTER_PRIO, "accept"))
    return Ruleset(L4_FAMILY, table, chains, tuple(rules + resets + counts), tuple(counters))
