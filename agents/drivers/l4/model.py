"""What an nftables-l4 load balancer is on a host, and what everything of it is called. Pure.

Names, all with the agent's prefix (each driver deletes only what carries its own prefixes, so
they never overlap another driver's: haproxy's ``<prefix>lb-``/``<prefix>v``, the router's
``<prefix>r-``/``<prefix>q``):

* namespace ``<prefix>l4-<8 hex of the LB id>``;
* host end of the VIP leg ``<prefix>n<8 hex>`` on the network's bridge
  (``NetworkSpec.bridge_name``, shared with the other drivers); its namespace end
  ``<prefix>vip``, holding the VIP;
* table ``ip <prefix>l4-<8 hex>`` (`nftables.render.l4_table`).

The namespace is a one-armed router: forwarding on, no ICMP redirects (they would send the
clients straight to the members), loose reverse-path filtering.

From the fold's state to what the renderer takes (`listeners`): per enabled TCP listener of an
enabled LB, the live members of its default pool (enabled pool; members enabled, up by the
health checks, weight > 0; the backup members only when no other is live), each with
``weight / gcd`` slots, interleaved; a jhash seed for SOURCE_IP (algorithm or persistence),
stable because it derives from the pool's id. And the operating status, as haproxy's driver
reports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from functools import reduce
from math import gcd
from typing import Any

from splice.agents.drivers.reports import Operating, OperatingStatus, lb_status, pool_status
from splice.agents.model import LoadBalancerSpec, NetworkSpec, fit_ifname
from splice.agents.netns import VipLeg
from splice.events.lbaas import Member, Pool

from ..nftables.render import L4Listener, l4_table

PROVIDER = "nftables-l4"

NAMESPACE_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/conf/default/send_redirects", "0"),
    ("net/ipv4/conf/all/rp_filter", "2"),
    ("net/ipv4/conf/default/rp_filter", "2"),
)
LEG_SYSCTLS: tuple[tuple[str, str], ...] = (("send_redirects", "0"), ("rp_filter", "2"))

MemberKey = tuple[str, str]  # (pool id, member id)


def short(lb_id: str) -> str:
    return lb_id.replace("-", "")[:8]


def _after_prefix(suffix: str) -> Any:
    """A read-only attribute of `L4Layout`: its prefix, then `suffix`."""
    return property(lambda layout: f"{layout.prefix}{suffix}")


@dataclass(frozen=True, slots=True)
class L4Layout:
    """The names of the nftables-l4 provider's objects on this host, all under `prefix`."""

    prefix: str

    namespace_prefix = _after_prefix("l4-")
    leg_prefix = _after_prefix("n")
    table_prefix = _after_prefix("l4-")
    ns_ifname = _after_prefix("vip")

    def namespace_of(self, short_id: str) -> str:
        return f"{self.namespace_prefix}{short_id}"

    def leg_of(self, short_id: str) -> str:
        return fit_ifname(self.leg_prefix, short_id)

    def namespace(self, lb_id: str) -> str:
        return self.namespace_of(short(lb_id))

    def host_leg(self, lb_id: str) -> str:
        return self.leg_of(short(lb_id))

    def table(self, lb_id: str) -> str:
        return l4_table(self.prefix, lb_id)

    def bridge(self, network: NetworkSpec) -> str:
        return network.bridge_name(self.prefix)

    def leg(self, spec: LoadBalancerSpec) -> VipLeg:
        return VipLeg(namespace=self.namespace(spec.id), host_ifname=self.host_leg(spec.id),
                      ns_ifname=self.ns_ifname, bridge=self.bridge(spec.network),
                      address=spec.vip_address, prefixlen=spec.network.prefixlen,
                      gateway=spec.network.gateway, mac=spec.vip_mac)

    def sysctls(self) -> tuple[tuple[str, str], ...]:
        """Every sysctl the namespace must hold (paths under /proc/sys), the leg's too."""
        leg = tuple((f"net/ipv4/conf/{self.ns_ifname}/{k}", v) for k, v in LEG_SYSCTLS)
        return NAMESPACE_SYSCTLS + leg


# --------------------------------------------------------------------------- transform


def seed_of(pool_id: str) -> int:
    """A stable jhash seed from the pool's id (never 0: nft lists a zero seed as none)."""
    return int.from_bytes(hashlib.sha256(pool_id.encode()).digest()[:4], "big") % 0xFFFFFFFF + 1


def source_affinity(pool: Pool) -> bool:
    sp = pool.session_persistence
    return pool.lb_algorithm == "SOURCE_IP" or (sp is not None and sp.type == "SOURCE_IP")


def monitored(pool: Pool) -> bool:
    hm = pool.healthmonitor
    return hm is not None and hm.admin_state_up


def live_members(pool: Pool, down: Collection[MemberKey]) -> list[Member]:
    """The members that get new connections: enabled, not down, weight > 0; the backups
    only when no other member is live (as haproxy's ``backup`` servers)."""
    if not pool.admin_state_up:
        return []
    live = [m for m in pool.members
            if m.admin_state_up and m.weight > 0 and (pool.id, m.id) not in down]
    return [m for m in live if not m.backup] or live


def slots(members: list[Member]) -> tuple[tuple[str, int], ...]:
    """``weight / gcd`` slots per member, interleaved (a, b, a, a for weights 3 and 1) so
    that round robin spreads within one turn."""
    if not members:
        return ()
    divisor = reduce(gcd, (m.weight for m in members))
    counts = [(m, m.weight // divisor) for m in members]
    top = max(c for _, c in counts)
    return tuple((m.address, m.protocol_port) for turn in range(top) for m, c in counts
                 if c > turn)


def listeners(spec: LoadBalancerSpec, down: Collection[MemberKey]) -> list[L4Listener]:
    """What the renderer takes: the enabled listeners with their slots (none when the LB is
    disabled)."""
    if not spec.admin_state_up:
        return []
    out = []
    for li in spec.listeners:
        if not li.admin_state_up:
            continue
        pool = spec.state.pools.get(li.default_pool_id or "")
        if pool is None:
            out.append(L4Listener(li.protocol_port))
            continue
        seed = seed_of(pool.id) if source_affinity(pool) else None
        out.append(L4Listener(li.protocol_port, slots(live_members(pool, down)), seed))
    return out


def kept_backends(spec: LoadBalancerSpec, down: Collection[MemberKey]) -> dict[int, frozenset[tuple[str, int]]]:
    """Per listener port, the backends whose open connections stay (live, draining ones
    too): a flow to any other was cut from conntrack."""
    out: dict[int, frozenset[tuple[str, int]]] = {}
    if not spec.admin_state_up:
        return out
    for li in spec.listeners:
        pool = spec.state.pools.get(li.default_pool_id or "")
        if not li.admin_state_up or pool is None or not pool.admin_state_up:
            continue
        out[li.protocol_port] = frozenset(
            (m.address, m.protocol_port) for m in pool.members
            if m.admin_state_up and (pool.id, m.id) not in down)
    return out


# --------------------------------------------------------------------------- status


def member_status(pool: Pool, member: Member, down: Collection[MemberKey]) -> Operating:
    if not member.admin_state_up:
        return Operating.OFFLINE
    if monitored(pool) and (pool.id, member.id) in down:
        return Operating.ERROR
    if member.weight == 0:
        return Operating.DRAINING
    return Operating.ONLINE if monitored(pool) else Operating.NO_MONITOR


def operating(spec: LoadBalancerSpec, down: Collection[MemberKey],
              answering: bool) -> OperatingStatus:
    """``answering``: the LB's namespace, leg and table are in place (its converge did not
    fail); else everything enabled is in ERROR, as with a haproxy that does not answer."""
    members: dict[str, Operating] = {}
    pools: dict[str, Operating] = {}
    for pool in spec.pools:
        for m in pool.members:
            members[m.id] = (member_status(pool, m, down) if answering or not m.admin_state_up
                             else Operating.ERROR)
        pools[pool.id] = pool_status(pool, members)
    on = {li.id: (Operating.OFFLINE if not (li.admin_state_up and spec.admin_state_up)
                  else Operating.ONLINE if answering else Operating.ERROR)
          for li in spec.listeners}
    return OperatingStatus(lb_status(spec, answering, on, pools), on, pools, members)
