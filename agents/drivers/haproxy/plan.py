"""Pure planning: ``plan(desired, observed) -> list[Op]``.

No I/O, no clock: given what should exist and what was seen, return the steps that close the
gap, in order. Every step is idempotent, so re-planning after a partial failure is always safe
(level-triggered). Only objects whose names carry the host's prefix are ever planned for
deletion; the observer never even reports the others.

:func:`plan` composes the pieces (:func:`plan_bridges`, :func:`plan_lb`, :func:`plan_orphan`,
:func:`plan_bridge_cleanup`) for the whole host; the driver runs exactly it, and the table tests
pin it down.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from splice.agents.drivers.bridges import unused_bridges
from splice.agents.drivers.haproxy.render import LbPaths, digest, render
from splice.agents.drivers.ops import (
    DeleteBridge,
    EnsureBridge,
    EnsureNamespace,
    EnsureVipLeg,
    LbOp,
    Op,
    ReportError,
    split_clashes,
)
from splice.agents.model import HostLayout, LoadBalancerSpec
from splice.agents.netns import NamespaceLinks, VipLeg

# --------------------------------------------------------------------------- observed


@dataclass(frozen=True, slots=True)
class ObservedLB:
    """One LB slot on the host, found by its namespace or its state directory."""

    short: str
    namespace_exists: bool = False
    links: NamespaceLinks | None = None  # inside the namespace
    host_veth: bool = False
    host_veth_master: str | None = None
    haproxy_pid: int | None = None  # master alive, in this namespace
    stray_netns_inode: int | None = None  # our master alive in some *other* namespace
    applied_digest: str | None = None  # config the running haproxy loaded
    rejected_digest: str | None = None  # last config `haproxy -c` refused
    rejected_reason: str = ""
    state_dir: bool = False
    lb_id: str | None = None  # recorded in the state dir


@dataclass(frozen=True, slots=True)
class Observed:
    """What the host holds with our prefix, plus where our things live (the layout)."""

    layout: HostLayout
    bridges: frozenset[str] = frozenset()
    bridge_ports: Mapping[str, int] = field(default_factory=dict)
    lbs: Mapping[str, ObservedLB] = field(default_factory=dict)  # by short id


# --------------------------------------------------------------------------- ops (and `..ops`)


@dataclass(frozen=True, slots=True)
class KillStrayHaproxy(LbOp):
    """Our haproxy survives in a namespace that lost its name (deleted by hand): kill it so the
    anonymous namespace, its veth and the VIP die with it."""

    netns_inode: int


@dataclass(frozen=True, slots=True)
class StartHaproxy(LbOp):
    """Write (and check) the configuration, then start haproxy in the namespace. `hosted`: the
    namespace is a router's, shared with others (only this LB's leftovers are killed first)."""

    lb_id: str
    namespace: str
    dir: str
    config: str
    hosted: bool = False


@dataclass(frozen=True, slots=True)
class WriteConfigAndReload(LbOp):
    lb_id: str
    dir: str
    config: str


@dataclass(frozen=True, slots=True)
class DeleteLoadBalancer(LbOp):
    """Stop haproxy, kill what is left in the namespace, delete it, its veth and its files."""

    lb_id: str | None
    namespace: str
    host_veth: str
    dir: str


@dataclass(frozen=True, slots=True)
class RemoveOrphanNamespace(LbOp):
    """A prefixed namespace no desired LB explains and no state directory describes."""

    namespace: str
    host_veth: str


# --------------------------------------------------------------------------- planning


def plan(desired: Mapping[str, LoadBalancerSpec], observed: Observed,
         keep: Collection[str] = ()) -> list[Op]:
    """All steps for the host: bridges first, then each LB, orphans, unused bridges last
    (`keep`: bridges the host's other drivers need, never deleted here)."""
    layout = observed.layout
    accepted, clashes = split_short_id_clashes(desired, layout)
    ops: list[Op] = list(plan_bridges(accepted, observed))
    ops += [ReportError(layout.short_id(i), i, reason) for i, reason in clashes.items()]
    for lb_id in sorted(accepted):
        spec = accepted[lb_id]
        short = layout.short_id(lb_id)
        ops += plan_lb(spec, observed.lbs.get(short, ObservedLB(short)), layout)
    wanted = {layout.short_id(i) for i in desired}
    for short in sorted(set(observed.lbs) - wanted):
        ops += plan_orphan(observed.lbs[short], layout)
    ops += plan_bridge_cleanup(accepted, observed, keep)
    return ops


def split_short_id_clashes(
    desired: Mapping[str, LoadBalancerSpec], layout: HostLayout
) -> tuple[dict[str, LoadBalancerSpec], dict[str, str]]:
    """The LBs that keep their slot, and why the others are reported in ERROR
    (`ops.split_clashes`)."""
    return split_clashes(desired, layout.short_id)


def plan_bridges(desired: Mapping[str, LoadBalancerSpec], observed: Observed) -> list[Op]:
    """The bridges of the floating LBs' VIP legs (a routed LB's leg is its router's)."""
    needed = sorted({observed.layout.bridge(s.network) for s in desired.values()
                     if s.hosted_in is None})
    return [EnsureBridge(b) for b in needed if b not in observed.bridges]


def plan_bridge_cleanup(desired: Mapping[str, LoadBalancerSpec], observed: Observed,
                        keep: Collection[str] = ()) -> list[Op]:
    """Unneeded bridges of ours go once nothing else is plugged in (members, routers...):
    ports that belong to LBs being deleted in this same plan do not count. `keep`: the bridges
    the host's other drivers need (`agents.drivers.bridges`)."""
    layout = observed.layout
    needed = {layout.bridge(s.network) for s in desired.values() if s.hosted_in is None}
    wanted = {layout.short_id(i) for i in desired}
    leaving = [lb.host_veth_master for short, lb in observed.lbs.items()
               if short not in wanted and lb.host_veth]
    return [DeleteBridge(b) for b in unused_bridges(observed.bridges, needed | set(keep),
                                                      observed.bridge_ports, leaving)]


def desired_leg(spec: LoadBalancerSpec, layout: HostLayout) -> VipLeg:
    return VipLeg(
        namespace=layout.namespace(spec.id),
        host_ifname=layout.host_veth(spec.id),
        ns_ifname=layout.ns_vip_ifname,
        bridge=layout.bridge(spec.network),
        address=spec.vip_address,
        prefixlen=spec.network.prefixlen,
        gateway=spec.network.gateway,
        mac=spec.vip_mac,  # the VIP port's (None: the kernel picks one)
    )


def leg_ok(leg: VipLeg, lb: ObservedLB) -> bool:
    """The VIP leg exactly as wanted: one address, up, right gateway, MAC, bridge."""
    links = lb.links
    return (
        links is not None
        and lb.host_veth
        and lb.host_veth_master == leg.bridge
        and links.vip_if_up
        and links.addresses == frozenset({f"{leg.address}/{leg.prefixlen}"})
        and links.default_gateway == leg.gateway
        and (leg.mac is None or links.mac == leg.mac)
    )


def plan_lb(spec: LoadBalancerSpec, lb: ObservedLB, layout: HostLayout) -> list[Op]:
    """Steps for one desired LB, in dependency order."""
    short = layout.short_id(spec.id)
    namespace = spec.hosted_in or layout.namespace(spec.id)
    ops: list[Op] = []
    if lb.stray_netns_inode is not None:
        ops.append(KillStrayHaproxy(short, lb.stray_netns_inode))
    if spec.hosted_in is not None:  # the router driver makes the namespace and holds the VIP
        if not lb.namespace_exists:
            return [*ops, ReportError(short, spec.id, f"router namespace {namespace} is missing")]
    else:
        if not lb.namespace_exists:
            ops.append(EnsureNamespace(short, namespace))
        leg = desired_leg(spec, layout)
        if not lb.namespace_exists or not leg_ok(leg, lb):
            ops.append(EnsureVipLeg(short, leg))
    paths = LbPaths(layout.lb_dir(short))
    config = render(spec, paths)
    wanted = digest(config)
    if wanted == lb.rejected_digest:
        return [*ops, ReportError(short, spec.id, lb.rejected_reason or "config refused")]
    running = lb.namespace_exists and lb.haproxy_pid is not None
    if not running:
        ops.append(StartHaproxy(short, spec.id, namespace, paths.dir, config,
                                hosted=spec.hosted_in is not None))
    elif lb.applied_digest != wanted:
        ops.append(WriteConfigAndReload(short, spec.id, paths.dir, config))
    return ops


def plan_orphan(lb: ObservedLB, layout: HostLayout) -> list[Op]:
    """An LB slot nobody wants: removed whole if we know it, else just its namespace."""
    namespace = f"{layout.lb_namespace_prefix}{lb.short}"
    veth = f"{layout.veth_prefix}{lb.short}"
    if lb.state_dir or lb.stray_netns_inode is not None:
        ops: list[Op] = []
        if lb.stray_netns_inode is not None:
            ops.append(KillStrayHaproxy(lb.short, lb.stray_netns_inode))
        ops.append(DeleteLoadBalancer(lb.short, lb.lb_id, namespace, veth, layout.lb_dir(lb.short)))
        return ops
    if lb.namespace_exists or lb.host_veth:
        return [RemoveOrphanNamespace(lb.short, namespace, veth)]
    return []
