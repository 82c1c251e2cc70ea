"""The one table of Splice's aggregates, by their stable names (no self-registration)."""

from __future__ import annotations

from .advanced import Firewall, Nat, Tap
from .chains import ServiceChain
from .domain import SpliceAggregate
from .host_registry import HostRegistry
from .lbaas import LoadBalancer
from .network import Network, Port, Quota, SegmentPool
from .router import Router
from .servicetype import ServiceType, ServiceTypeDefault, ServiceTypeName

AGGREGATES: dict[str, type[SpliceAggregate]] = {
    cls.AGGREGATE: cls
    for cls in (
        ServiceType,
        ServiceTypeName,
        ServiceTypeDefault,
        HostRegistry,
        Quota,
        SegmentPool,
        Network,
        Port,
        Router,
        LoadBalancer,
        Firewall,
        Nat,
        Tap,
        ServiceChain,
    )
}

# Advanced services by kind: what a chain hop or a placement names.
SERVICES: dict[str, type[SpliceAggregate]] = {
    "loadbalancer": LoadBalancer,
    "firewall": Firewall,
    "nat": Nat,
    "tap": Tap,
}
