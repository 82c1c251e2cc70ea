"""Pure planning for the nftables-l4 load balancers of one host: ``plan(desired, observed, …)``.

No I/O, no clock. Desired: the LBs of provider nftables-l4 placed here, with the members the
health checks hold down. Observed: what the host holds with this driver's prefixes (bridges,
``<prefix>n…`` legs, ``<prefix>l4-…`` namespaces and, in each, the VIP leg, the sysctls and
the ``<prefix>l4-…`` tables). The plan:

* nothing for a converged LB;
* the bridges the legs need first;
* per LB, in order: the namespace, the VIP leg (when its veth, bridge, state, address or route
  differ), the sysctls that differ, its table through the nftables core's `plan_table` (one
  atomic replacement when it differs in any way; other ``l4-`` tables in its namespace go),
  and after a replacement the conntrack cut of the flows to backends no longer kept;
* `ReportError` for an LB that cannot be rendered, or whose short id another desired LB took
  first (the smaller id keeps it);
* slots nobody wants (a deleted LB, a namespace or leg left over): namespace and leg go
  (its table with the namespace); then our bridges left with no port but those legs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from splice.agents.model import LoadBalancerSpec
from splice.agents.netns import NamespaceLinks, VipLeg

from .. import ops as ops_
from ..bridges import unused_bridges
from ..nftables import plan as nft
from ..nftables.conntrack import Flow
from ..nftables.render import UnsafeValueError, render_l4
from ..ops import DeleteBridge, EnsureBridge, EnsureNamespace, EnsureVipLeg, LbOp, Op, ReportError
from .model import L4Layout, MemberKey, kept_backends, listeners, short

# --------------------------------------------------------------------------- observed


@dataclass(frozen=True, slots=True)
class SlotSeen:
    """One LB slot on the host, found by its namespace or its leg."""

    short: str
    namespace: bool = False
    links: NamespaceLinks | None = None  # the VIP leg inside the namespace
    host_leg: bool = False
    host_leg_master: str | None = None
    sysctls: Mapping[str, str] = field(default_factory=dict)
    tables: Mapping[nft.TableKey, nft.ObservedTable] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Observed:
    bridges: frozenset[str] = frozenset()  # ours
    bridge_ports: Mapping[str, int] = field(default_factory=dict)  # any owner's ports
    slots: Mapping[str, SlotSeen] = field(default_factory=dict)  # by short id


# --------------------------------------------------------------------------- ops (and `..ops`)


@dataclass(frozen=True, slots=True)
class SetSysctls(LbOp):
    namespace: str
    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Tables(LbOp):
    """The nftables core's steps in the LB's namespace (`nftables.apply.apply`)."""

    namespace: str
    ops: tuple[nft.Op, ...]


@dataclass(frozen=True, slots=True)
class CutFlows(LbOp):
    """Delete the conntrack entries of flows to the VIP whose backend is no longer kept."""

    namespace: str
    vip: str
    keep: tuple[tuple[int, frozenset[tuple[str, int]]], ...]  # listener port → backends


@dataclass(frozen=True, slots=True)
class DeleteSlot(LbOp):
    """A slot nobody wants: its namespace (with its table) and its leg."""

    namespace: str
    host_leg: str


# --------------------------------------------------------------------------- planning


def split_clashes(desired: Mapping[str, LoadBalancerSpec]) -> tuple[dict[str, LoadBalancerSpec],
                                                                     dict[str, str]]:
    """The LBs that keep their slot, and why the others are refused (`ops.split_clashes`)."""
    return ops_.split_clashes(desired, short)


def plan(desired: Mapping[str, LoadBalancerSpec], observed: Observed, layout: L4Layout,
         down: Mapping[str, Collection[MemberKey]], keep: Collection[str] = ()) -> list[Op]:
    """All steps for the host; ``down``: the members the health checks hold down, by LB;
    ``keep``: the bridges the host's other drivers need (never deleted here)."""
    accepted, clashes = split_clashes(desired)
    needed = {layout.bridge(s.network) for s in accepted.values()}
    ops: list[Op] = [EnsureBridge(b) for b in sorted(needed - observed.bridges)]
    ops += [ReportError(short(i), i, why) for i, why in sorted(clashes.items())]
    for lb_id, spec in sorted(accepted.items()):
        seen = observed.slots.get(short(lb_id), SlotSeen(short(lb_id)))
        ops += plan_lb(spec, seen, layout, down.get(lb_id, ()))
    wanted = {short(i) for i in accepted}
    orphans = [observed.slots[s] for s in sorted(set(observed.slots) - wanted)]
    ops += [DeleteSlot(s.short, layout.namespace_of(s.short), layout.leg_of(s.short))
            for s in orphans]
    leaving = [s.host_leg_master for s in orphans if s.host_leg]
    ops += [DeleteBridge(b) for b in unused_bridges(observed.bridges, needed | set(keep),
                                                      observed.bridge_ports, leaving)]
    return ops


def leg_ok(leg: VipLeg, seen: SlotSeen) -> bool:
    links = seen.links
    return (links is not None and seen.host_leg and seen.host_leg_master == leg.bridge
            and links.vip_if_up and links.addresses == {f"{leg.address}/{leg.prefixlen}"}
            and links.default_gateway == leg.gateway)


def plan_lb(spec: LoadBalancerSpec, seen: SlotSeen, layout: L4Layout,
            down: Collection[MemberKey]) -> list[Op]:
    """One LB's steps, from its namespace to its table and the flows it no longer keeps."""
    sid, namespace = short(spec.id), layout.namespace(spec.id)
    if getattr(spec, "hosted_in", None) is not None:  # the command side refuses it
        return [ReportError(sid, spec.id, "a routed nftables-l4 load balancer is not served")]
    ops: list[Op] = [] if seen.namespace else [EnsureNamespace(sid, namespace)]
    leg = layout.leg(spec)
    fresh_leg = not seen.namespace or not leg_ok(leg, seen)
    if fresh_leg:
        ops.append(EnsureVipLeg(sid, leg))
    have = seen.sysctls if seen.namespace else {}
    wrong = tuple((k, v) for k, v in layout.sysctls() if have.get(k) != v)
    if wrong:
        ops.append(SetSysctls(sid, namespace, wrong))
    try:
        ruleset = render_l4(layout.table(spec.id), spec.vip_address, listeners(spec, down))
    except UnsafeValueError as e:
        return [*ops, ReportError(sid, spec.id, f"not renderable: {e}")]
    tables = seen.tables if seen.namespace else {}
    steps = nft.plan_table(nft.Desired(spec.id, ruleset), tables.get(ruleset.key))
    steps += [nft.DeleteTable(*k) for k in sorted(tables) if k != ruleset.key]
    if steps:
        ops.append(Tables(sid, namespace, tuple(steps)))
    if any(isinstance(s, nft.ReplaceTable) for s in steps):
        keep = kept_backends(spec, down)
        ops.append(CutFlows(sid, namespace, spec.vip_address, tuple(sorted(keep.items()))))
    return ops


def flows_to_cut(flows: Iterable[Flow], vip: str,
                 keep: Mapping[int, Collection[tuple[str, int]]]) -> list[Flow]:
    """The TCP flows DNATed from the VIP to a backend its listener no longer keeps (a member
    down, disabled or gone; a listener gone). The LB's own flows (health checks, from the
    VIP) are never cut."""
    out = []
    for f in flows:
        if f.protocol != "tcp" or f.dst != vip or not f.dnat or f.dport is None:
            continue
        kept = keep.get(f.dport)
        if kept is None or (f.inner_dst, f.inner_dport) not in kept:
            out.append(f)
    return out
