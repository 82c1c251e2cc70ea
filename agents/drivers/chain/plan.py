"""The chain driver's plan, pure: what the host must do so that it holds exactly the desired
chains (`RouterChains` by router) given what it holds (`Observed`).

Order: per hop, its namespace (veth, addresses, sysctls, route back), its firewall table and
its routing table; then the ``ip rule``s; then the classifier table (marking starts once
everything it marks for is there); stale things in the reverse order (stop
marking, then rules, routes, hop namespaces). Only what the agent owns is ever touched: hop
namespaces with its prefix, rules and tables in `model`'s ranges, its classifier table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..nftables import plan as nft
from ..nftables.render import Ruleset
from .model import RULE_PREF, ChainSpec, HopSpec


@dataclass(frozen=True, slots=True)
class RouterChains:
    """The chains steered in one router's namespace, and its classifier table."""

    router_id: str
    namespace: str
    chains: tuple[ChainSpec, ...]
    classifier: Ruleset


@dataclass(frozen=True, slots=True)
class HopSeen:
    address: str | None = None  # "ip/plen" on the hop's interface, if it is up
    via: str | None = None  # its default route's gateway
    forwarding: bool = False  # ip_forward=1 and rp_filter=0 (all, and on its interface)
    tables: Mapping[nft.TableKey, nft.ObservedTable] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouterSeen:
    veths: Mapping[str, str | None] = field(default_factory=dict)  # ours, up: its "ip/plen"
    rules: frozenset[tuple[int, int]] = frozenset()  # (fwmark, table), in our ranges
    routes: Mapping[int, tuple[str, str]] = field(default_factory=dict)  # table -> (via, dev)
    classifier: nft.ObservedTable | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    hops: Mapping[str, HopSeen] = field(default_factory=dict)  # every hop namespace of ours
    routers: Mapping[str, RouterSeen] = field(default_factory=dict)  # by router namespace


class Op:
    pass


@dataclass(frozen=True, slots=True)
class EnsureHop(Op):
    chain_id: str
    router_namespace: str
    hop: HopSpec


@dataclass(frozen=True, slots=True)
class HopTables(Op):
    chain_id: str
    namespace: str
    ops: tuple[nft.Op, ...]


@dataclass(frozen=True, slots=True)
class SetRoute(Op):
    chain_id: str
    namespace: str
    table: int
    via: str
    dev: str


@dataclass(frozen=True, slots=True)
class FlushTable(Op):
    namespace: str
    table: int


@dataclass(frozen=True, slots=True)
class AddRule(Op):
    chain_id: str
    namespace: str
    mark: int
    table: int
    pref: int = RULE_PREF


@dataclass(frozen=True, slots=True)
class DeleteRule(Op):
    namespace: str
    mark: int
    table: int
    pref: int = RULE_PREF


@dataclass(frozen=True, slots=True)
class ReplaceClassifier(Op):
    router_id: str
    namespace: str
    ruleset: Ruleset
    stale: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteClassifier(Op):
    namespace: str
    family: str
    name: str


@dataclass(frozen=True, slots=True)
class DeleteHop(Op):
    namespace: str


@dataclass(frozen=True, slots=True)
class ReportError(Op):
    chain_id: str
    reason: str


def hop_ready(hop: HopSpec, seen: HopSeen | None, router: RouterSeen) -> bool:
    """The hop's namespace, both ends of its veth, its addresses, sysctls and route back."""
    return (seen is not None and seen.address == hop.hop_address and seen.forwarding
            and seen.via == hop.router_address.split("/")[0]
            and router.veths.get(hop.router_if) == hop.router_address)


def plan(desired: Mapping[str, RouterChains], observed: Observed, *, prefix: str) -> list[Op]:
    """`desired`: by router id, the routers of this host with chains; `observed`: every hop
    namespace of the agent's and every router namespace of its (a router with no chain left
    loses its classifier table, rules and routes)."""
    ops: list[Op] = []
    later: list[Op] = []
    wanted_hops: set[str] = set()
    for rid, rc in sorted(desired.items()):
        router = observed.routers.get(rc.namespace)
        if router is None:
            ops += [ReportError(c.id, f"router {rid}'s namespace {rc.namespace} is not there yet")
                    for c in rc.chains]
            continue
        rules: set[tuple[int, int]] = set()
        routes: dict[int, tuple[str, str]] = {}
        for chain in rc.chains:
            for hop in chain.hops:
                wanted_hops.add(hop.namespace)
                seen = observed.hops.get(hop.namespace)
                if not hop_ready(hop, seen, router):
                    ops.append(EnsureHop(chain.id, rc.namespace, hop))
                tables = [] if hop.firewall is None else [nft.Desired(hop.service_id, hop.firewall)]
                table_ops = nft.plan(tables, {} if seen is None else seen.tables, prefix=prefix)
                if table_ops:
                    ops.append(HopTables(chain.id, hop.namespace, tuple(table_ops)))
                rules.add((hop.mark, hop.table))
                routes[hop.table] = (hop.via, hop.router_if)
                if router.routes.get(hop.table) != routes[hop.table]:
                    ops.append(SetRoute(chain.id, rc.namespace, hop.table, hop.via, hop.router_if))
        owner = {(h.mark, h.table): c.id for c in rc.chains for h in c.hops}
        ops += [AddRule(owner[r], rc.namespace, *r) for r in sorted(rules - router.rules)]
        later += [DeleteRule(rc.namespace, *r) for r in sorted(router.rules - rules)]
        later += [FlushTable(rc.namespace, t) for t in sorted(set(router.routes) - set(routes))]
        want = rc.classifier.canonical()
        have = router.classifier
        if have is None or have.content != want:
            stale = () if have is None else nft.stale_objects(want, have.content)
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
