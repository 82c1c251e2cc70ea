"""Networks with IPAM, ports, hosts and the scheduler's registry, quotas.

IPAM: a Network aggregate holds its allocations. Allocating an address appends to the network,
so two concurrent allocations on one network conflict on the server and one of them decides
again on fresh state: an address is never handed out twice. The network address, the broadcast
address and the gateway are never handed to ports (the gateway goes to a router's interface).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING

from splice.events.contracts import (
    AddressAllocated,
    AddressReleased,
    HostLost,
    HostRegistered,
    HostRegistryCreated,
    NetworkCreated,
    NetworkDeleted,
    NetworkExternalSet,
    PortCreated,
    PortDeleted,
    PortTapAttached,
    PortTapDetached,
    PortUpdated,
    QuotaConsumed,
    QuotaCreated,
    QuotaLimitsSet,
    QuotaReleased,
    ServicePlaced,
    ServiceUnplaced,
    ServiceWaiting,
)

from .domain import (
    AddressInUseError,
    ExhaustedError,
    InUseError,
    InvalidError,
    QuotaExceededError,
    SpliceAggregate,
    public_id,
    stamp,
)

# -- networks ---------------------------------------------------------------------------------


def check_network(cidr: str, gateway: str | None) -> tuple[str, str]:
    """The normalised CIDR and gateway, or InvalidError naming the field."""
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as e:
        raise InvalidError(f"{cidr} is not a network address: {e}", field="$.cidr") from e
    if net.prefixlen > 30:
        raise InvalidError("a network needs room for hosts: /30 at most", field="$.cidr")
    if gateway is None:
        gw = net.network_address + 1
    else:
        gw = ipaddress.IPv4Address(gateway)
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise InvalidError(f"gateway {gateway} is not a host address of {cidr}", "$.gateway")
    return str(net), str(gw)


class Network(SpliceAggregate):
    AGGREGATE = "network"

    if TYPE_CHECKING:
        name: str
        cidr: str
        gateway: str
        allocations: dict[str, str]  # ip -> port id
        external: bool  # flagged by an admin: a router's gateway may be on it

    @classmethod
    def create(cls, agg_id: str, name: str, cidr: str, gateway: str) -> Network:
        return cls.start(agg_id, stamp(NetworkCreated, name=name, cidr=cidr, gateway=gateway))

    def allocate(self, port_id: str, ip: str | None = None, *, gateway: bool = False) -> str:
        """Decide an address for `port_id`: the one asked for, the gateway, or the next free."""
        net = ipaddress.IPv4Network(self.cidr)
        if gateway:
            ip = self.gateway
        if ip is not None:
            addr = ipaddress.IPv4Address(ip)
            if addr not in net or addr in (net.network_address, net.broadcast_address):
                raise InvalidError(f"{ip} is not a host address of {self.cidr}", "$.ip_address")
            if ip == self.gateway and not gateway:
                raise AddressInUseError(f"{ip} is the network's gateway", "$.ip_address")
            if ip in self.allocations:
                raise AddressInUseError(f"{ip} is already allocated", "$.ip_address")
            chosen = ip
        else:
            chosen = ""
            for host in net.hosts():
                s = str(host)
                if s != self.gateway and s not in self.allocations:
                    chosen = s
                    break
            if not chosen:
                raise ExhaustedError(f"no free address left in {self.cidr}", "$.network_id")
        self.emit(stamp(AddressAllocated, ip_address=chosen, port_id=port_id))
        return chosen

    def release(self, ip: str, port_id: str) -> None:
        if self.allocations.get(ip) == port_id:
            self.emit(stamp(AddressReleased, ip_address=ip, port_id=port_id))

    def delete(self) -> None:
        if self.allocations:
            raise InUseError(f"{len(self.allocations)} port(s) still use this network", "$.id")
        self.emit(stamp(NetworkDeleted))

    def set_external(self, external: bool, gateways: int) -> None:
        """`gateways`: how many routers have their gateway here (no un-flagging under them)."""
        if not external and gateways:
            raise InUseError(f"{gateways} router gateway(s) still use this network", "$.external")
        if external != self.external:
            self.emit(stamp(NetworkExternalSet, external=external))

    def when_NetworkCreated(self, e: NetworkCreated) -> None:
        self.name, self.cidr, self.gateway = e.name, e.cidr, e.gateway
        self.allocations = {}
        self.external = False

    def when_NetworkExternalSet(self, e: NetworkExternalSet) -> None:
        self.external = e.external

    def when_AddressAllocated(self, e: AddressAllocated) -> None:
        self.allocations[e.ip_address] = e.port_id

    def when_AddressReleased(self, e: AddressReleased) -> None:
        self.allocations.pop(e.ip_address, None)

    def when_NetworkDeleted(self, e: NetworkDeleted) -> None:
        self.deleted = True


def mac_for(port_id: str) -> str:
    """A stable MAC for a port, in the locally administered range Neutron uses (fa:16:3e)."""
    digest = hashlib.sha256(port_id.encode()).digest()
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])


class Port(SpliceAggregate):
    AGGREGATE = "port"

    if TYPE_CHECKING:
        network_id: str
        ip_address: str
        mac_address: str
        name: str | None
        device_owner: str
        host: str | None
        taps: list[str]  # the standalone taps that use it (they run on its host)

    @classmethod
    def create(
        cls,
        agg_id: str,
        network_id: str,
        ip_address: str,
        device_owner: str,
        name: str | None = None,
        host: str | None = None,
    ) -> Port:
        return cls.start(
            agg_id,
            stamp(
                PortCreated,
                network_id=network_id,
                ip_address=ip_address,
                mac_address=mac_for(agg_id),
                name=name,
                device_owner=device_owner,
                host=host,
            ),
        )

    def update(self, name: str | None, host: str | None) -> None:
        if host != self.host and self.taps:
            raise InUseError(f"{len(self.taps)} tap(s) mirror on this port's host "
                             f"({', '.join(self.taps)}): delete them first", "$.host")
        if (name, host) != (self.name, self.host):
            self.emit(stamp(PortUpdated, name=name, host=host))

    def delete(self) -> None:
        self.emit(stamp(PortDeleted))

    def when_PortCreated(self, e: PortCreated) -> None:
        self.network_id, self.ip_address, self.mac_address = e.network_id, e.ip_address, e.mac_address
        self.name, self.device_owner, self.host = e.name, e.device_owner, e.host
        self.taps = []

    def when_PortTapAttached(self, e: PortTapAttached) -> None:
        self.taps = [*self.taps, e.tap_id]

    def when_PortTapDetached(self, e: PortTapDetached) -> None:
        self.taps = [t for t in self.taps if t != e.tap_id]

    def when_PortUpdated(self, e: PortUpdated) -> None:
        self.name, self.host = e.name, e.host

    def when_PortDeleted(self, e: PortDeleted) -> None:
        self.deleted = True


# -- hosts and placement ----------------------------------------------------------------------


class HostRegistry(SpliceAggregate):
    """Every host, its providers and liveness, and what is placed where (the scheduler's view).

    One aggregate, so placements are decided on a consistent view and serialised by the
    server's concurrency check; placements are rare next to other commands.
    """

    AGGREGATE = "hosts"

    if TYPE_CHECKING:
        hosts: dict[str, dict[str, object]]  # name -> {"providers": [...], "alive": bool}
        placements: dict[str, tuple[str, str]]  # service id -> (host, provider)
        waiting: dict[str, str]  # service id -> provider

    @classmethod
    def create(cls, agg_id: str) -> HostRegistry:
        return cls.start(agg_id, stamp(HostRegistryCreated))

    def load(self, host: str) -> int:
        return sum(1 for h, _ in self.placements.values() if h == host)

    def pick(self, provider: str, exclude: str | None = None) -> str | None:
        """The least loaded live host that offers `provider` (ties: by name)."""
        candidates = [
            name
            for name, h in self.hosts.items()
            if h["alive"] and provider in h["providers"] and name != exclude  # type: ignore[operator]
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda n: (self.load(n), n))

    def place(self, service_id: str, provider: str) -> str | None:
        host = self.pick(provider)
        if host is None:
            self.emit(stamp(ServiceWaiting, service_id=service_id, provider=provider))
        else:
            self.emit(stamp(ServicePlaced, service_id=service_id, provider=provider, host=host))
        return host

    def unplace(self, service_id: str) -> None:
        if service_id in self.placements or service_id in self.waiting:
            host = self.placements.get(service_id, (None, ""))[0]
            self.emit(stamp(ServiceUnplaced, service_id=service_id, host=host))

    def register(self, host: str, providers: list[str]) -> list[tuple[str, str]]:
        """Record the host; place the services waiting for what it offers. Returns them."""
        self.emit(stamp(HostRegistered, host=host, providers=sorted(set(providers))))
        placed = []
        for service_id, provider in sorted(self.waiting.items()):
            if provider in providers:
                self.emit(
                    stamp(ServicePlaced, service_id=service_id, provider=provider, host=host)
                )
                placed.append((service_id, host))
        return placed

    def lose(self, host: str) -> list[tuple[str, str | None]]:
        """Declare the host lost; move its services to other live hosts. Returns the moves."""
        if host not in self.hosts or not self.hosts[host]["alive"]:
            return []
        self.emit(stamp(HostLost, host=host))
        moves: list[tuple[str, str | None]] = []
        for service_id, (h, provider) in sorted(self.placements.items()):
            if h == host:
                moves.append((service_id, self.place(service_id, provider)))
        return moves

    def when_HostRegistryCreated(self, e: HostRegistryCreated) -> None:
        self.hosts, self.placements, self.waiting = {}, {}, {}

    def when_HostRegistered(self, e: HostRegistered) -> None:
        self.hosts[e.host] = {"providers": list(e.providers), "alive": True}

    def when_HostLost(self, e: HostLost) -> None:
        self.hosts[e.host]["alive"] = False

    def when_ServicePlaced(self, e: ServicePlaced) -> None:
        self.placements[e.service_id] = (e.host, e.provider)
        self.waiting.pop(e.service_id, None)

    def when_ServiceWaiting(self, e: ServiceWaiting) -> None:
        self.placements.pop(e.service_id, None)
        self.waiting[e.service_id] = e.provider

    def when_ServiceUnplaced(self, e: ServiceUnplaced) -> None:
        self.placements.pop(e.service_id, None)
        self.waiting.pop(e.service_id, None)


# -- quotas -----------------------------------------------------------------------------------

DEFAULT_QUOTAS: dict[str, int] = {
    "network": 100,
    "port": 1000,
    "router": 50,
    "loadbalancer": 50,
    "firewall": 50,
    "nat": 50,
    "tap": 50,
    "chain": 50,
}


class Quota(SpliceAggregate):
    """A tenant's usage per resource kind, and its limits where they differ from the defaults."""

    AGGREGATE = "quota"

    if TYPE_CHECKING:
        tenant: str
        limits: dict[str, int]
        used: dict[str, int]

    @classmethod
    def create(cls, agg_id: str, tenant: str) -> Quota:
        return cls.start(agg_id, stamp(QuotaCreated, tenant=tenant))

    def set_limits(self, limits: dict[str, int]) -> None:
        unknown = sorted(set(limits) - set(DEFAULT_QUOTAS))
        if unknown:
            raise InvalidError(f"no quota for {', '.join(unknown)}", "$.limits")
        self.emit(stamp(QuotaLimitsSet, limits={**self.limits, **limits}))

    def consume(self, resource: str, defaults: dict[str, int]) -> None:
        limit = self.limits.get(resource, defaults.get(resource, DEFAULT_QUOTAS[resource]))
        used = self.used.get(resource, 0)
        if used + 1 > limit:
            raise QuotaExceededError(
                f"tenant {self.tenant} has used its quota of {limit} {resource}(s)", "subject"
            )
        self.emit(stamp(QuotaConsumed, resource=resource, used=used + 1, limit=limit))

    def release(self, resource: str) -> None:
        used = self.used.get(resource, 0)
        if used > 0:
            self.emit(stamp(QuotaReleased, resource=resource, used=used - 1))

    def when_QuotaCreated(self, e: QuotaCreated) -> None:
        self.tenant, self.limits, self.used = e.tenant, {}, {}

    def when_QuotaLimitsSet(self, e: QuotaLimitsSet) -> None:
        self.limits = dict(e.limits)

    def when_QuotaConsumed(self, e: QuotaConsumed) -> None:
        self.used[e.resource] = e.used

    def when_QuotaReleased(self, e: QuotaReleased) -> None:
        self.used[e.resource] = e.used


__all__ = [
    "DEFAULT_QUOTAS",
    "HostRegistry",
    "Network",
    "Port",
    "Quota",
    "check_network",
    "mac_for",
    "public_id",
]
