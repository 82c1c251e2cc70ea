"""The chain driver's plan, pure: what the host must do so that it holds exactly the desired
chains (`RouterChains` by router) given what it holds (`Observed`).

Order: per hop, its namespace (veths, addresses, sysctls, route back or bridge, a tap's copy
leg), its firewall table, a tap's redirect to its monitor port, the neighbour entries and
routing tables of its legs; then the ``ip rule``s; then the classifier table (marking starts once
everything it marks for is there); stale things in the reverse order (stop
marking, then rules, routes, hop namespaces). Only what the agent owns is ever touched: hop
namespaces with its prefix, rules and tables in `model`'s ranges, its classifier table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..nftables import plan as nft
from ..nftables.render import Ruleset
from ..ops import Op
from .model import BRIDGE, HOP_IFNAME, MIRROR_IFNAME, OUT_IFNAME, RULE_PREF, ChainSpec, HopSpec


@dataclass(frozen=True, slots=True)
class RouterChains:
    """The chains steered in one router's namespace, and its classifier table."""

    router_id: str
    namespace: str
    chains: tuple[ChainSpec, ...]
    classifier: Ruleset


@dataclass(frozen=True, slots=True)
class HopSeen:
    address: str | None = None  # "ip/plen" on the hop's in-leg, if it is up with just that
    route: tuple[str | None, str] | None = None  # its default route: (gateway, dev)
    sysctls: Mapping[str, str] = field(default_factory=dict)  # of `hop_sysctls`' paths
    tables: Mapping[nft.TableKey, nft.ObservedTable] = field(default_factory=dict)
    bridge: tuple[tuple[str, bool], ...] = ()  # br0 up: its ports that are up, with learning
    mirror: str | None = None  # where its in-leg's ingress is copied to (mon0, up)


@dataclass(frozen=True, slots=True)
class VethSeen:
    up: bool = False
    addresses: tuple[str, ...] = ()  # IPv4 "ip/plen"
    mac: str = ""


@dataclass(frozen=True, slots=True)
class RouterSeen:
    veths: Mapping[str, VethSeen] = field(default_factory=dict)  # ours
    rules: frozenset[tuple[int, int]] = frozenset()  # (fwmark, table), in our ranges
    routes: Mapping[int, tuple[str, str]] = field(default_factory=dict)  # table -> (via, dev)
    classifier: nft.ObservedTable | None = None
    neighbours: frozenset[tuple[str, str, str]] = frozenset()  # permanent, on our veths


@dataclass(frozen=True, slots=True)
class Observed:
    hops: Mapping[str, HopSeen] = field(default_factory=dict)  # every hop namespace of ours
    routers: Mapping[str, RouterSeen] = field(default_factory=dict)  # by router namespace
    mirrors: Mapping[str, str | None] = field(default_factory=dict)  # root ends: redirect target


@dataclass(frozen=True, slots=True)
class ChainOp(Op):
    """A step for one chain: when it fails, the chain is what failed."""

    chain_id: str


@dataclass(frozen=True, slots=True)
class EnsureHop(ChainOp):
    """A hop's namespace and its legs to the router, as its insertion type wants them."""

    router_namespace: str
    hop: HopSpec


@dataclass(frozen=True, slots=True)
class HopTables(ChainOp):
    """The nftables steps of one hop's namespace (its marks, filters, bridge rules)."""

    namespace: str
    ops: tuple[nft.Op, ...]


@dataclass(frozen=True, slots=True)
class SetRoute(ChainOp):
    """One route of a chain's policy table in the router: its traffic on to the next hop."""

    namespace: str
    table: int
    via: str
    dev: str


@dataclass(frozen=True, slots=True)
class SetNeighbour(ChainOp):
    """A permanent neighbour entry: the fake next hop of a bridged hop, by its MAC."""

    namespace: str
    dev: str
    address: str
    mac: str


@dataclass(frozen=True, slots=True)
class DeleteNeighbour(Op):
    """A neighbour entry of ours no chain needs any more."""

    namespace: str
    dev: str
    address: str


@dataclass(frozen=True, slots=True)
class SetRedirect(ChainOp):
    """In the agent's root namespace: what arrives on `mirror_if` goes to `monitor_if`."""

    mirror_if: str
    monitor_if: str


@dataclass(frozen=True, slots=True)
class FlushTable(Op):
    """Empty a chain's policy routing table (the chain or its hop went)."""

    namespace: str
    table: int


@dataclass(frozen=True, slots=True)
class AddRule(ChainOp):
    """An `ip rule` in the router: packets with `mark` (a hop's) look up `table` (its route)."""

    namespace: str
    mark: int
    table: int
    pref: int = RULE_PREF


@dataclass(frozen=True, slots=True)
class DeleteRule(Op):
    """An `ip rule` of ours for a mark no chain uses any more."""

    namespace: str
    mark: int
    table: int
    pref: int = RULE_PREF


@dataclass(frozen=True, slots=True)
class ReplaceClassifier(Op):
    """The router's classifier table, whole, in one transaction (`stale`: tables it replaces)."""

    router_id: str
    namespace: str
    ruleset: Ruleset
    stale: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteClassifier(Op):
    """The classifier table of a router that no longer carries any chain."""

    namespace: str
    family: str
    name: str


@dataclass(frozen=True, slots=True)
class DeleteHop(Op):
    """The namespace of a hop no chain has any more (its legs go with it)."""

    namespace: str


@dataclass(frozen=True, slots=True)
class ReportError(ChainOp):
    """Nothing to do for the chain but to say why it cannot be steered yet."""

    reason: str


ONE_ARMED_SYSCTLS = (("net/ipv4/ip_forward", "1"), ("net/ipv4/conf/all/rp_filter", "0"),
                     ("net/ipv4/conf/all/send_redirects", "0"),
                     ("net/ipv4/conf/default/rp_filter", "0"),
                     (f"net/ipv4/conf/{HOP_IFNAME}/rp_filter", "0"))
BRIDGED_SYSCTLS = (("net/bridge/bridge-nf-call-iptables", "1"),)  # its firewall sees bridged flows
SYSCTL_PATHS = tuple(p for p, _ in ONE_ARMED_SYSCTLS + BRIDGED_SYSCTLS)


def hop_sysctls(hop: HopSpec) -> tuple[tuple[str, str], ...]:
    """The hop namespace's sysctls (paths under /proc/sys)."""
    return BRIDGED_SYSCTLS if hop.bridged else ONE_ARMED_SYSCTLS


def hop_ready(hop: HopSpec, seen: HopSeen | None, router: RouterSeen) -> bool:
    """The hop's namespace, its legs (both ends, addresses, MACs), sysctls, bridge or route
    back, and a tap's copy leg."""
    if seen is None or any(seen.sysctls.get(p) != v for p, v in hop_sysctls(hop)):
        return False
    if hop.bridged:
        learning = hop.insertion == "l2"
        return (seen.bridge == ((HOP_IFNAME, learning), (OUT_IFNAME, learning))
                and seen.route == (None, BRIDGE)
                and router.veths.get(hop.router_if) == VethSeen(True, (hop.router_address,),
                                                                hop.router_mac)
                and router.veths.get(hop.out_if) == VethSeen(True, (hop.out_address,), hop.out_mac))
    veth = router.veths.get(hop.router_if)
    return (seen.address == hop.hop_address
            and seen.route == (hop.router_address.split("/")[0], HOP_IFNAME)
            and veth is not None and veth.up and veth.addresses == (hop.router_address,)
            and (hop.insertion != "tap" or seen.mirror == MIRROR_IFNAME))


def plan(desired: Mapping[str, RouterChains], observed: Observed, *, prefix: str) -> list[Op]:
    """`desired`: by router id, the routers of this host with chains; `observed`: every hop
    namespace of the agent's and every router namespace of its (a router with no chain left
    loses its classifier table, rules and routes). A hop that is not as it must be is built
    again from nothing (`EnsureHop`), so its routes, neighbour entries and tables are planned
    as missing."""
    ops: list[Op] = []
    later: list[Op] = []
    wanted_hops: set[str] = set()
    for rid, rc in sorted(desired.items()):
        router = observed.routers.get(rc.namespace)
        if router is None:
            ops += [ReportError(c.id, f"router {rid}'s namespace {rc.namespace} is not there yet")
                    for c in rc.chains]
            continue
        rules: dict[tuple[int, int], str] = {}
        routes: set[int] = set()
        neighbours: set[tuple[str, str, str]] = set()
        for chain in rc.chains:
            for hop in chain.hops:
                wanted_hops.add(hop.namespace)
                seen = observed.hops.get(hop.namespace)
                ready = hop_ready(hop, seen, router)
                if not ready:
                    ops.append(EnsureHop(chain.id, rc.namespace, hop))
                tables = [] if hop.firewall is None else [nft.Desired(hop.service_id, hop.firewall)]
                have = seen.tables if seen is not None and ready else {}
                table_ops = nft.plan(tables, have, prefix=prefix)
                if table_ops:
                    ops.append(HopTables(chain.id, hop.namespace, tuple(table_ops)))
                if hop.insertion == "tap" and (
                        not ready or observed.mirrors.get(hop.mirror_if) != hop.monitor_if):
                    ops.append(SetRedirect(chain.id, hop.mirror_if, hop.monitor_if))
                for entry in sorted(hop.neighbours):
                    neighbours.add(entry)
                    if not ready or entry not in router.neighbours:
                        ops.append(SetNeighbour(chain.id, rc.namespace, *entry))
                for t, (via, dev) in sorted(hop.routes.items()):
                    routes.add(t)
                    if not ready or router.routes.get(t) != (via, dev):
                        ops.append(SetRoute(chain.id, rc.namespace, t, via, dev))
                rules.update(dict.fromkeys(sorted(hop.rules), chain.id))
        ops += [AddRule(cid, rc.namespace, *r) for r, cid in sorted(rules.items())
                if r not in router.rules]
        later += [DeleteRule(rc.namespace, *r) for r in sorted(router.rules - set(rules))]
        later += [FlushTable(rc.namespace, t) for t in sorted(set(router.routes) - routes)]
        later += [DeleteNeighbour(rc.namespace, dev, addr)
                  for dev, addr, _ in sorted(router.neighbours - neighbours)]
        want = rc.classifier.canonical()
        have_c = router.classifier
        if have_c is None or have_c.content != want:
            stale = () if have_c is None else nft.stale_objects(want, have_c.content)
            ops.append(ReplaceClassifier(rid, rc.namespace, rc.classifier, stale))
    served = {rc.namespace for rc in desired.values()}
    for ns, router in sorted(observed.routers.items()):
        if ns in served:
            continue
        if router.classifier is not None:
            ops.append(DeleteClassifier(ns, *router.classifier.key))
        later += [DeleteRule(ns, *r) for r in sorted(router.rules)]
        later += [FlushTable(ns, t) for t in sorted(router.routes)]
    later += [DeleteHop(ns) for ns in sorted(set(observed.hops) - wanted_hops)]
    return ops + later
