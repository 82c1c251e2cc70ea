"""Pure planning for the routers of one host: ``plan(desired, observed) -> list[Op]``.

No I/O, no clock. Desired: a `RouterSpec` per router placed here. Observed: what the host
holds with the agent's prefix (bridges, the host ends of router legs, router namespaces and,
in each, its links, addresses, default route, sysctls and nftables tables). The plan:

* nothing for a converged router;
* bridges the legs need first (the LB driver's names: whichever driver comes first makes it);
* per router: the namespace, its sysctls, each leg whose veth, bridge, state, address or
  per-leg sysctls differ (one `EnsureLeg` makes all of it exact), the default route, and the
  NAT table and routed firewalls' tables through the nftables core's own `plan` (one atomic
  replacement per table, then the conntrack cut; owned tables only);
* legs nobody wants (an interface removed), then namespaces nobody wants (a router deleted or
  moved away: its legs and tables go with it), then bridges of ours left with no port but
  those legs;
* `ReportError` for a router whose namespace name another desired router took first (two ids
  sharing their first 8 hex digits): the smaller id keeps the name.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from ..bridges import unused_bridges
from ..nftables import plan as nft
from ..ops import DeleteBridge, EnsureBridge, Op
from .model import LEG_SYSCTLS, NAMESPACE_SYSCTLS, Leg, RouterSpec


@dataclass(frozen=True, slots=True)
class LinkSeen:
    up: bool
    addresses: frozenset[str]  # "ip/prefixlen", global scope
    conf: Mapping[str, str] = field(default_factory=dict)  # LEG_SYSCTLS names -> value


@dataclass(frozen=True, slots=True)
class NamespaceSeen:
    links: Mapping[str, LinkSeen]  # by ifname (lo excluded)
    default_route: tuple[str, str] | None  # (via, ifname)
    sysctls: Mapping[str, str]  # NAMESPACE_SYSCTLS paths -> value
    tables: Mapping[nft.TableKey, nft.ObservedTable]


@dataclass(frozen=True, slots=True)
class Observed:
    bridges: frozenset[str] = frozenset()  # ours
    bridge_ports: Mapping[str, int] = field(default_factory=dict)  # any owner's ports
    legs: Mapping[str, str | None] = field(default_factory=dict)  # our host ends -> bridge
    namespaces: Mapping[str, NamespaceSeen | None] = field(default_factory=dict)  # ours


# --------------------------------------------------------------------------- ops (and `..ops`)


@dataclass(frozen=True, slots=True)
class RouterOp(Op):
    """A step in one router's namespace: when it fails, that router is what failed."""

    scope = "router"
    namespace: str


@dataclass(frozen=True, slots=True)
class EnsureNamespace(RouterOp):
    """The router's own namespace, made if missing (loopback up)."""


@dataclass(frozen=True, slots=True)
class SetSysctls(RouterOp):
    """Forwarding on, and the other sysctls a router needs, in its namespace."""

    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class EnsureLeg(RouterOp):
    """One interface of the router: a veth from its network's bridge, the gateway address."""

    leg: Leg


@dataclass(frozen=True, slots=True)
class SetDefaultRoute(RouterOp):
    """The router's default route, through its external gateway."""

    via: str
    ifname: str


@dataclass(frozen=True, slots=True)
class DeleteDefaultRoute(RouterOp):
    """No external gateway any more: no default route."""


@dataclass(frozen=True, slots=True)
class Tables(RouterOp):
    """The nftables core's steps in the router's namespace (`nftables.apply.apply`)."""

    router_id: str
    ops: tuple[nft.Op, ...]


@dataclass(frozen=True, slots=True)
class DeleteNamespace(RouterOp):
    """The namespace of a router gone from this host (its legs and tables go with it)."""


@dataclass(frozen=True, slots=True)
class DeleteLeg(Op):
    """A leg of an interface the router no longer has."""

    host_ifname: str


@dataclass(frozen=True, slots=True)
class ReportError(Op):
    """Nothing to do but to say why the router cannot be served."""

    router_id: str
    reason: str


# --------------------------------------------------------------------------- planning


def plan(desired: Mapping[str, RouterSpec], observed: Observed, *, prefix: str,
         keep: Collection[str] = ()) -> list[Op]:
    """`keep`: the bridges the host's other drivers need (never deleted here)."""
    ops: list[Op] = []
    accepted: dict[str, RouterSpec] = {}
    by_namespace: dict[str, str] = {}
    for rid in sorted(desired):
        spec = desired[rid]
        first = by_namespace.setdefault(spec.namespace, rid)
        if first != rid:
            ops.append(ReportError(rid, f"namespace {spec.namespace} already used by router {first}"))
            continue
        accepted[rid] = spec
    needed = frozenset().union(*(s.bridges for s in accepted.values()))
    ops += [EnsureBridge(b) for b in sorted(needed - observed.bridges)]
    for spec in accepted.values():
        ops += plan_router(spec, observed, prefix=prefix)
    wanted_legs = {leg.host_ifname for s in accepted.values() for leg in s.legs}
    leaving = sorted(set(observed.legs) - wanted_legs)
    ops += [DeleteLeg(name) for name in leaving]
    wanted_ns = {s.namespace for s in accepted.values()}
    ops += [DeleteNamespace(ns) for ns in sorted(set(observed.namespaces) - wanted_ns)]
    ops += [DeleteBridge(b) for b in unused_bridges(observed.bridges, needed | set(keep),
                                                      observed.bridge_ports,
                                                      [observed.legs[n] for n in leaving])]
    return ops


def plan_router(spec: RouterSpec, observed: Observed, *, prefix: str) -> list[Op]:
    """One router's steps, from its namespace to its NAT table."""
    seen = observed.namespaces.get(spec.namespace)
    ops: list[Op] = []
    if seen is None:
        ops.append(EnsureNamespace(spec.namespace))
    have = seen.sysctls if seen is not None else {}
    wrong = tuple((k, v) for k, v in NAMESPACE_SYSCTLS if have.get(k) != v)
    if wrong:
        ops.append(SetSysctls(spec.namespace, wrong))
    links = seen.links if seen is not None else {}
    for leg in spec.legs:
        if not leg_ok(leg, observed.legs, links):
            ops.append(EnsureLeg(spec.namespace, leg))
    route = seen.default_route if seen is not None else None
    if spec.default_route is not None and route != spec.default_route:
        ops.append(SetDefaultRoute(spec.namespace, *spec.default_route))
    elif spec.default_route is None and route is not None:
        ops.append(DeleteDefaultRoute(spec.namespace))
    tables = seen.tables if seen is not None else {}
    steps = nft.plan(spec.tables, tables, prefix=prefix)
    if steps:
        ops.append(Tables(spec.namespace, spec.id, tuple(steps)))
    return ops


def leg_ok(leg: Leg, host_legs: Mapping[str, str | None], links: Mapping[str, LinkSeen]) -> bool:
    """The leg exactly as wanted: host end on its bridge, namespace end up with its address
    (and the VIPs routed on it, nothing else) and the leg's sysctls."""
    seen = links.get(leg.ns_ifname)
    return (host_legs.get(leg.host_ifname, "") == leg.bridge and seen is not None and seen.up
            and seen.addresses == leg.addresses
            and all(seen.conf.get(k) == v for k, v in LEG_SYSCTLS))
