"""Networks with IPAM, segments, ports, quotas (the hosts' registry: `host_registry`).

IPAM: a Network aggregate holds its allocations. Allocating an address appends to the network,
so two concurrent allocations on one network conflict on the server and one of them decides
again on fresh state: an address is never handed out twice. The network address, the broadcast
address and the gateway are never handed to ports (the gateway goes to a router's interface).

Segments: every network gets a VXLAN VNI, unique across all tenants, from one `SegmentPool`
(a singleton) in the same write as its `NetworkCreated`; deleting the network gives it back.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING

from splice.events.contracts import (
    AddressAllocated,
    AddressReleased,
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
    SegmentAllocated,
    SegmentPoolCreated,
    SegmentReleased,
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
        segmentation_id: int  # its VXLAN VNI (0: created before networks had one)

    @classmethod
    def create(
        cls, agg_id: str, name: str, cidr: str, gateway: str, segmentation_id: int
    ) -> Network:
        return cls.start(
            agg_id,
            stamp(NetworkCreated, name=name, cidr=cidr, gateway=gateway,
                  segmentation_id=segmentation_id),
        )

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
        self.segmentation_id = e.segmentation_id
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


# -- segments ---------------------------------------------------------------------------------

# VXLAN network identifiers handed to tenant networks (Neutron's provider:segmentation_id):
# 24 bits; below 4096 is left for VLAN-like uses.
VNI_MIN, VNI_MAX = 4096, 2**24 - 1
# The VNIs are dealt out by SEGMENT_SHARDS pools of SEGMENT_SPAN each, shard k owning
# [VNI_MIN + k*SPAN, VNI_MIN + (k+1)*SPAN). A tenant's networks take theirs from its home
# shard (a hash of its name), so one tenant creating networks as fast as it can never holds
# the pool the other tenants' creates need (a single pool made every network create of every
# tenant queue behind the flood's). Shard 0 is the pool from before the shards (its id and
# its first VNIs): a stream written then folds the same.
SEGMENT_SHARDS = 64
SEGMENT_SPAN = (VNI_MAX + 1 - VNI_MIN) // SEGMENT_SHARDS


def home_shard(tenant: str) -> int:
    """The shard a tenant's networks take their VNIs from first (stable across processes)."""
    return int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:4], "big") % SEGMENT_SHARDS


def shard_of(vni: int) -> int:
    """The shard that dealt `vni` (and takes it back)."""
    return (vni - VNI_MIN) // SEGMENT_SPAN


def shard_range(shard: int) -> tuple[int, int]:
    """The first and last VNI of a shard."""
    first = VNI_MIN + shard * SEGMENT_SPAN
    return first, first + SEGMENT_SPAN - 1


class SegmentPool(SpliceAggregate):
    """One shard of the VNIs, shared by the tenants whose home it is: a network takes the
    lowest free one with its `NetworkCreated`, in the same write, and gives it back with its
    `NetworkDeleted`. Two concurrent creates on one shard both append to it, so the server's
    concurrency check lets one through and the other decides again on fresh state: a VNI is
    never handed out twice (and shards never overlap). The shard is the last 12 hex digits of
    the pool's id (`shard_pool_id`).
    """

    AGGREGATE = "segments"

    if TYPE_CHECKING:
        allocated: dict[int, str]  # VNI -> the network's aggregate id
        high: int  # the lowest VNI never allocated
        last: int  # the shard's last VNI
        free: set[int]  # released VNIs below `high`

    @classmethod
    def create(cls, agg_id: str) -> SegmentPool:
        return cls.start(agg_id, stamp(SegmentPoolCreated))

    def allocate(self, network_id: str) -> int:
        """Decide the lowest free VNI of this shard for the network (its aggregate id)."""
        if self.free and (vni := min(self.free)) <= self.last:
            pass  # (a VNI past `last` only in the pool from before the shards: not this shard's)
        elif self.high <= self.last:
            vni = self.high
        else:
            first, last = shard_range(self.shard)
            raise ExhaustedError(f"every VNI in {first}..{last} is in use", None)
        self.emit(stamp(SegmentAllocated, segmentation_id=vni, network_id=network_id))
        return vni

    @property
    def full(self) -> bool:
        return self.high > self.last and (not self.free or min(self.free) > self.last)

    @property
    def shard(self) -> int:
        return int(self.id.rsplit("-", 1)[-1], 16)

    def release(self, vni: int, network_id: str) -> None:
        if self.allocated.get(vni) == network_id:
            self.emit(stamp(SegmentReleased, segmentation_id=vni, network_id=network_id))

    def when_SegmentPoolCreated(self, e: SegmentPoolCreated) -> None:
        self.high, self.last = shard_range(self.shard)
        self.allocated, self.free = {}, set()

    def when_SegmentAllocated(self, e: SegmentAllocated) -> None:
        vni = e.segmentation_id
        self.allocated[vni] = e.network_id
        if vni >= self.high:
            self.free.update(range(self.high, vni))
            self.high = vni + 1
        else:
            self.free.discard(vni)

    def when_SegmentReleased(self, e: SegmentReleased) -> None:
        if self.allocated.pop(e.segmentation_id, None) is not None:
            self.free.add(e.segmentation_id)


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
    "VNI_MAX",
    "VNI_MIN",
    "Network",
    "Port",
    "Quota",
    "SegmentPool",
    "check_network",
    "mac_for",
    "public_id",
]
