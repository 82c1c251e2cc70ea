"""Service chains: the aggregate and its rules (which hops can sit on a chain's path).

A chain is steered in its router's namespace: its classifier selects traffic there, and its
hops are floating services of the chain's tenant (routed or out-of-path services are not on a
path the router can steer through), each a hop of one chain at most. Two live chains on one
router whose classifiers overlap (`splice.events.chain_rules.classifiers_overlap`) need
different priorities.

What a chain accepts its router's host can serve:

- a `tap` hop copies the chain's traffic where the router steers it, so the tap (a standalone
  tap runs on its ports' host) must be on the router's host, and the router must be placed
  (`check_tap_on_router_host`, `$.hops[i].service_id`);
- a `classifier.logical_source_port` is matched (its MAC and address) where its traffic enters
  the router: the leg on the port's network, so that network must be one of the router's
  interfaces (`check_source_network`, `$.classifier.logical_source_port`); the port itself is
  a live port of the chain's tenant (read by the handler, `not_found` otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from splice.events.chain_rules import classifiers_overlap
from splice.events.contracts import (
    Classifier,
    Hop,
    ServiceChainAttached,
    ServiceChainCreated,
    ServiceChainDeleted,
    ServiceChainDetached,
    ServiceChainUpdated,
)

from .advanced import check_cidr, check_range
from .domain import InUseError, InvalidError, SpliceAggregate, public_id, stamp
from .lbaas import ServiceMixin

# Which hop insertion suits which kind of service, and how many ports of its own it needs.
HOP_RULES: dict[str, dict[str, int]] = {
    "loadbalancer": {"l3": 1},
    "firewall": {"l3": 0, "l2": 2, "bump_in_the_wire": 2},
    "nat": {"l3": 0},
    "tap": {"tap": 1},
}


def check_hop(kind: str, insertion: str, port_count: int, where: str) -> None:
    allowed = HOP_RULES[kind]
    if insertion not in allowed:
        raise InvalidError(
            f"a {kind} can be a hop as {', '.join(sorted(allowed))}, not {insertion}",
            f"{where}.insertion",
        )
    if port_count < allowed[insertion]:
        raise InvalidError(
            f"{insertion} insertion needs a {kind} with {allowed[insertion]} port(s) of its own; "
            f"this one has {port_count}",
            f"{where}.insertion",
        )


def check_on_path(kind: str, mode: str, where: str) -> None:
    """A hop is a floating service: the chain's router steers traffic through it. A routed
    service is part of its router's own forwarding, an out-of-path one is a detour target."""
    if mode != "floating":
        raise InvalidError(f"a hop must be a floating {kind}, not a {mode} one", f"{where}.service_id")


def check_one_chain(chains: Iterable[str], chain_id: str, where: str) -> None:
    """A service is a hop of one chain at most (`chain_id`'s own hops may stay)."""
    others = [c for c in chains if c != chain_id]
    if others:
        raise InUseError(f"already a hop of chain {public_id(others[0])}", f"{where}.service_id")


def check_tap_on_router_host(tap_host: str | None, router_host: str | None, where: str) -> None:
    """A tap hop's copy is made on the host of the chain's router: the tap must run there."""
    if router_host is None:
        raise InvalidError(f"the router is not placed on a host yet: a tap hop's copy is made on "
                           f"the router's host, and this tap is on host {tap_host}", f"{where}.service_id")
    if tap_host != router_host:
        raise InvalidError(f"the tap is on host {tap_host}, the chain's router on host {router_host}: "
                           "a tap hop's copy is made on the router's host (use a tap whose ports are "
                           "bound there)", f"{where}.service_id")


def check_source_network(network_id: str, router_networks: Iterable[str], field: str) -> None:
    """A logical source port is matched on the router's leg on its network: the router has one."""
    if network_id not in set(router_networks):
        raise InvalidError(f"the port is on network {network_id}, where the chain's router has no "
                           "interface: its traffic does not enter the router", field)


def check_classifier(classifier: Classifier) -> None:
    check_cidr(classifier.source_cidr, "$.classifier.source_cidr")
    check_cidr(classifier.destination_cidr, "$.classifier.destination_cidr")
    check_range(classifier.source_port, "$.classifier.source_port")
    check_range(classifier.destination_port, "$.classifier.destination_port")


def check_distinct(hops: list[Hop]) -> None:
    seen: set[str] = set()
    for i, h in enumerate(hops):
        if h.service_id in seen:
            raise InvalidError("a service appears twice in the chain", f"$.hops[{i}].service_id")
        seen.add(h.service_id)


def check_no_tie(classifier: Classifier, priority: int, others: Iterable[ServiceChain]) -> None:
    """No other live chain of the router selects common traffic at the same priority."""
    for other in others:
        if other.priority == priority and classifiers_overlap(classifier, other.classifier):
            raise InvalidError(
                f"chain {public_id(other.id)} on this router has priority {priority} and an "
                "overlapping classifier: give another priority",
                "$.priority",
            )


class ServiceChain(SpliceAggregate):
    AGGREGATE = "chain"

    if TYPE_CHECKING:
        name: str
        classifier: Classifier
        hops: list[Hop]
        router_id: str | None
        priority: int
        symmetric: bool

    @classmethod
    def create(
        cls, agg_id: str, name: str, classifier: Classifier, hops: list[Hop], router_id: str,
        priority: int, symmetric: bool, others: Iterable[ServiceChain],
    ) -> ServiceChain:
        """`others`: the router's live chains."""
        check_classifier(classifier)
        check_distinct(hops)
        check_no_tie(classifier, priority, others)
        return cls.start(agg_id, stamp(
            ServiceChainCreated, name=name, classifier=classifier, hops=hops, router_id=router_id,
            priority=priority, symmetric=symmetric))

    def values(self) -> tuple[str, Classifier, list[Hop], int, bool]:
        return (self.name, self.classifier, self.hops, self.priority, self.symmetric)

    def update(
        self, name: str | None, classifier: Classifier | None, hops: list[Hop] | None,
        priority: int | None, symmetric: bool | None, others: Iterable[ServiceChain],
    ) -> bool:
        """Replace what is given (None: keep); whether anything changed. `others`: the
        router's live chains (this one is left out)."""
        new = (self.name if name is None else name,
               self.classifier if classifier is None else classifier,
               self.hops if hops is None else hops,
               self.priority if priority is None else priority,
               self.symmetric if symmetric is None else symmetric)
        if new == self.values():
            return False
        check_classifier(new[1])
        check_distinct(new[2])
        check_no_tie(new[1], new[3], (o for o in others if o.id != self.id))
        self.emit(stamp(ServiceChainUpdated, name=new[0], classifier=new[1], hops=list(new[2]),
                        priority=new[3], symmetric=new[4]))
        return True

    def delete(self) -> None:
        self.emit(stamp(ServiceChainDeleted))

    def when_ServiceChainCreated(self, e: ServiceChainCreated) -> None:
        self.name, self.classifier, self.hops = e.name, e.classifier, list(e.hops)
        self.router_id, self.priority, self.symmetric = e.router_id, e.priority, e.symmetric

    def when_ServiceChainUpdated(self, e: ServiceChainUpdated) -> None:
        self.name, self.classifier, self.hops = e.name, e.classifier, list(e.hops)
        self.priority, self.symmetric = e.priority, e.symmetric

    def when_ServiceChainDeleted(self, e: ServiceChainDeleted) -> None:
        self.deleted = True


def attach(service: ServiceMixin | SpliceAggregate, chain_id: str) -> None:
    if chain_id not in service.chains:  # type: ignore[union-attr]
        service.emit(stamp(ServiceChainAttached, chain_id=chain_id))  # type: ignore[union-attr]


def detach(service: ServiceMixin | SpliceAggregate, chain_id: str) -> None:
    if chain_id in service.chains:  # type: ignore[union-attr]
        service.emit(stamp(ServiceChainDetached, chain_id=chain_id))  # type: ignore[union-attr]


__all__ = [
    "HOP_RULES", "ServiceChain", "attach", "check_hop", "check_on_path", "check_one_chain",
    "check_source_network", "check_tap_on_router_host", "detach",
]
