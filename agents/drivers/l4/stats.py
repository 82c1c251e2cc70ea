"""An nftables-l4 load balancer's counters: its table's named counters, its namespace's
conntrack, and the agent's health checks.

Per listener port P (`nftables.l4render`): ``conn_P`` counts the connections DNATed to a member
(total), ``in_P``/``out_P`` the bytes forwarded to the members and back (IP bytes, headers
included). Open connections (active) are the ESTABLISHED conntrack entries to the VIP and P,
each counted for the member it was DNATed to. A member's check is the agent's TCP health
check: UP or DOWN (empty when its pool has no monitor). Operating statuses are the driver's
(`model.operating`), as it reports them. The kernel counts nothing per member but open flows.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from splice.agents import netns
from splice.agents.model import LoadBalancerSpec
from splice.agents.stats import LbStats, ListenerStats, MemberStats, now, pool_stats

from ..nftables import apply as napply
from ..nftables.conntrack import Flow, parse_entries
from ..nftables.l4render import counter_names
from .model import PROVIDER, L4Layout, MemberKey, monitored, operating

if TYPE_CHECKING:
    from .driver import L4Driver


@dataclass(frozen=True, slots=True)
class Raw:
    """What the host holds for one load balancer: counters by name (packets, bytes), and the
    open flows to its VIP; ``found`` False when its namespace or table is missing."""

    counters: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    flows: tuple[Flow, ...] = ()
    found: bool = True


def parse_counters(listing: Mapping[str, object]) -> dict[str, tuple[int, int]]:
    """``nft -j list counters table …`` → name → (packets, bytes)."""
    out: dict[str, tuple[int, int]] = {}
    for obj in listing.get("nftables", []) or []:  # type: ignore[attr-defined]
        c = obj.get("counter") if isinstance(obj, dict) else None
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            out[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return out


def read(layout: L4Layout, spec: LoadBalancerSpec) -> Raw:
    """Blocking: the table's counters and the ESTABLISHED flows to the VIP, in its namespace.
    The thread enters it (`netns.in_netns`) and ``nft`` and ``conntrack`` start there: half
    the cost of ``ip netns exec`` for each (which also makes a mount namespace)."""
    table = layout.table(spec.id)

    def both() -> Raw:
        listing = napply.run(None, ["nft", "-j", "list", "counters", "table", "ip", table],
                             check=False)
        if listing.returncode != 0:
            return Raw(found=False)
        flows = napply.run(None, ["conntrack", "-L", "-f", "ipv4", "-p", "tcp", "--state",
                                  "ESTABLISHED", "-d", spec.vip_address], check=False)
        return Raw(parse_counters(json.loads(listing.stdout or "{}")),
                   tuple(parse_entries(flows.stdout)))

    try:
        return netns.in_netns(layout.namespace(spec.id), both)
    except FileNotFoundError:  # no namespace (yet, or any more)
        return Raw(found=False)


def lb_stats(spec: LoadBalancerSpec, raw: Raw, down: Collection[MemberKey], at: float) -> LbStats:
    op = operating(spec, down, raw.found)
    open_to: Counter[tuple[int, str, int]] = Counter()  # (listener port, member address, port)
    for f in raw.flows:
        if f.protocol == "tcp" and f.dst == spec.vip_address and f.dnat and f.dport is not None:
            open_to[(f.dport, f.inner_dst, f.inner_dport or 0)] += 1
    listeners = {}
    for li in spec.listeners:
        conn, bytes_in, bytes_out = counter_names(li.protocol_port)
        listeners[li.id] = ListenerStats(
            port=li.protocol_port, status=str(op.listeners[li.id]),
            bytes_in=raw.counters.get(bytes_in, (0, 0))[1],
            bytes_out=raw.counters.get(bytes_out, (0, 0))[1],
            active=sum(n for (p, _, _), n in open_to.items() if p == li.protocol_port),
            total=raw.counters.get(conn, (0, 0))[0])
    ports = {li.default_pool_id: li.protocol_port for li in spec.listeners if li.default_pool_id}
    members = {}
    for pool in spec.pools:
        for m in pool.members:
            check = ("" if not monitored(pool) or not m.admin_state_up
                     else "DOWN" if (pool.id, m.id) in down else "UP")
            members[m.id] = MemberStats(
                pool_id=pool.id, address=m.address, port=m.protocol_port,
                status=str(op.members[m.id]), check=check,
                active=open_to.get((ports.get(pool.id, 0), m.address, m.protocol_port), 0))
    pools = {p.id: pool_stats(str(op.pools[p.id]), members, p.id,
                              sum(1 for m in p.members if m.admin_state_up))
             for p in spec.pools}
    return LbStats(loadbalancer_id=spec.id, provider=PROVIDER, status=str(op.loadbalancer),
                   at=at, listeners=listeners, pools=pools, members=members)


def lb_stats_all(specs: Iterable[LoadBalancerSpec], raws: Iterable[Raw],
                 down: Mapping[str, Collection[MemberKey]], at: float) -> dict[str, LbStats]:
    return {s.id: lb_stats(s, r, down.get(s.id, ()), at)
            for s, r in zip(specs, raws, strict=True)}


async def collect(driver: L4Driver) -> dict[str, LbStats]:
    """The counters of every load balancer the driver serves (its last desired set)."""
    specs = list(driver._desired.values())
    loop = asyncio.get_running_loop()
    raws = await asyncio.gather(*(loop.run_in_executor(driver._pool, read, driver.layout, s)
                                  for s in specs))
    return lb_stats_all(specs, raws, driver.checks.down(), now())
