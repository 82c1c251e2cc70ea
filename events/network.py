"""Service types, hosts, quotas, networks and ports (IPAM), routers: commands and events."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .wire import (
    Cidr,
    Command,
    Description,
    EventMeta,
    HostName,
    IPv4,
    Mac,
    Name,
    Provider,
    Providers,
    TenantName,
    Uuid,
)

# -- service types (admin scope) ------------------------------------------------------------


class CreateServiceType(Command, tag="servicetype.create"):
    name: Name
    providers: Providers
    description: Description = ""
    default: bool = False


class UpdateServiceType(Command, tag="servicetype.update"):
    id: Uuid
    name: Name | None = None
    description: Description | None = None
    providers: Providers | None = None


class SetDefaultServiceType(Command, tag="servicetype.set_default"):
    id: Uuid


class DeleteServiceType(Command, tag="servicetype.delete"):
    """Refused for the default type and for a type any service or router uses."""

    id: Uuid


class ServiceTypeDescribed(EventMeta):
    """A service type whole, as created or updated (no event of its own: it has no tag)."""

    name: str
    description: str
    providers: dict[str, str]


class ServiceTypeCreated(ServiceTypeDescribed, tag="ServiceTypeCreated"):
    """A service type was created, with its providers."""


class ServiceTypeUpdated(ServiceTypeDescribed, tag="ServiceTypeUpdated"):
    """A service type was changed; it is carried as the update leaves it."""


class ServiceTypeDefaultSet(EventMeta, tag="ServiceTypeDefaultSet"):
    """The service type became the default."""


class ServiceTypeDefaultCleared(EventMeta, tag="ServiceTypeDefaultCleared"):
    """The service type is no longer the default."""


class ServiceTypeUsed(EventMeta, tag="ServiceTypeUsed"):
    """A router or service (its aggregate id `user_id`) uses the service type."""

    user_id: str


class ServiceTypeReleased(EventMeta, tag="ServiceTypeReleased"):
    """That router or service no longer uses the service type."""

    user_id: str


class ServiceTypeDeleted(EventMeta, tag="ServiceTypeDeleted"):
    """The service type was deleted."""


class ServiceTypeNameChange(EventMeta):
    """A service type's name, kept unique by an aggregate of its own (no event of its own: it
    has no tag)."""

    name: str


class ServiceTypeNameCreated(ServiceTypeNameChange, tag="ServiceTypeNameCreated"):
    """The name's claim was first made (held by no one yet)."""


class ServiceTypeNameClaimed(ServiceTypeNameChange, tag="ServiceTypeNameClaimed"):
    """The name is now held by that service type."""

    service_type_id: str


class ServiceTypeNameReleased(ServiceTypeNameChange, tag="ServiceTypeNameReleased"):
    """The name is free again."""


class DefaultServiceTypeCreated(EventMeta, tag="DefaultServiceTypeCreated"):
    """The singleton that names the default service type was created (none yet)."""


class DefaultServiceTypeChanged(EventMeta, tag="DefaultServiceTypeChanged"):
    """Another service type became the default (`previous_id`: "" for none)."""

    service_type_id: str
    previous_id: str


# -- hosts (agents, tenant `_host`) and the scheduler ------------------------------------------


class RegisterHost(Command, tag="host.register"):
    """From an agent: this host runs and offers these providers (liveness: heartbeats)."""

    host: HostName
    providers: Annotated[list[Provider], Meta(max_length=32)]
    underlay_ip: IPv4 | None = None  # where other hosts reach its VXLAN tunnels


class DeclareHostLost(Command, tag="host.lost"):
    """From the host monitor (admin scope): the host missed its heartbeats."""

    host: HostName


class HostRegistryCreated(EventMeta, tag="HostRegistryCreated"):
    """The registry of hosts and placements was created (empty)."""


class HostRegistered(EventMeta, tag="HostRegistered"):
    """A host (re)registered with the providers it offers: it is alive."""

    host: str
    providers: list[str]
    underlay_ip: str | None = None  # None: not given (or registered before hosts had one)


class HostLost(EventMeta, tag="HostLost"):
    """The host missed its heartbeats: it is lost, and its services are placed elsewhere."""

    host: str


class ServiceOfProvider(EventMeta):
    """The scheduler's word on a service of a provider (no event of its own: it has no tag)."""

    service_id: str
    provider: str


class ServicePlaced(ServiceOfProvider, tag="ServicePlaced"):
    """The scheduler put a service on a host (least loaded live host offering its provider)."""

    host: str


class ServiceWaiting(ServiceOfProvider, tag="ServiceWaiting"):
    """No live host offers the provider yet: the service waits for one."""


class ServiceUnplaced(EventMeta, tag="ServiceUnplaced"):
    """The service left the scheduler (deleted): no host holds a place for it."""

    service_id: str
    host: str | None = None


# -- quotas -------------------------------------------------------------------------------------

Limit = Annotated[int, Meta(ge=0, le=1_000_000)]


class SetQuota(Command, tag="quota.set"):
    """Admin scope: a tenant's limits per resource kind (others keep the defaults)."""

    tenant: TenantName
    limits: dict[Annotated[str, Meta(pattern=r"^[a-z]{1,32}$(?!\n)")], Limit]


class QuotaCreated(EventMeta, tag="QuotaCreated"):
    """The tenant's quota was first used or set (default limits)."""

    tenant: str


class QuotaLimitsSet(EventMeta, tag="QuotaLimitsSet"):
    """The tenant's limits for these resource kinds were set."""

    limits: dict[str, int]


class QuotaUse(EventMeta):
    """How many of a resource kind the tenant uses now (no event of its own: it has no tag)."""

    resource: str
    used: int


class QuotaConsumed(QuotaUse, tag="QuotaConsumed"):
    """The tenant took one more of `resource`, within `limit`."""

    limit: int


class QuotaReleased(QuotaUse, tag="QuotaReleased"):
    """The tenant gave one back."""


# -- networks and ports ---------------------------------------------------------------------


class CreateNetwork(Command, tag="network.create"):
    name: Name
    cidr: Cidr
    gateway: IPv4 | None = None  # default: the first host address


class DeleteNetwork(Command, tag="network.delete"):
    id: Uuid


class SetNetworkExternal(Command, tag="network.set_external"):
    """Admin scope: flag a tenant's network external (or no longer). A router's gateway
    (`router.set_gateway`) must be on an external network: the admin decides which networks
    lead out of the tenant, and where SNAT and port forwards face."""

    tenant: TenantName
    id: Uuid
    external: bool = True


class CreatePort(Command, tag="port.create"):
    """A port on a network: the given address, or the next free one."""

    network_id: Uuid
    ip_address: IPv4 | None = None
    name: Name | None = None
    host: HostName | None = None


class UpdatePort(Command, tag="port.update"):
    id: Uuid
    name: Name | None = None
    host: HostName | None = None


class DeletePort(Command, tag="port.delete"):
    id: Uuid


class NetworkCreated(EventMeta, tag="NetworkCreated"):
    """A network was created with its CIDR, gateway and VXLAN VNI."""

    name: str
    cidr: str
    gateway: str
    segmentation_id: int = 0  # its VXLAN VNI, unique across tenants; 0: created before VNIs


class NetworkDeleted(EventMeta, tag="NetworkDeleted"):
    """The network was deleted."""


class NetworkExternalSet(EventMeta, tag="NetworkExternalSet"):
    """The admin flagged the network external (or no longer)."""

    external: bool


# -- segments: the one pool of VXLAN VNIs (admin, a singleton) --------------------------------


class SegmentPoolCreated(EventMeta, tag="SegmentPoolCreated"):
    """The pool of VXLAN VNIs was created (all free)."""


class SegmentChange(EventMeta):
    """A VNI of the pool and the network it is (was) for (no event of its own: no tag)."""

    segmentation_id: int
    network_id: str  # the network's aggregate id <tenant>.network.<uuid>


class SegmentAllocated(SegmentChange, tag="SegmentAllocated"):
    """A network's VNI, taken from the pool with its `NetworkCreated` (one write)."""


class SegmentReleased(SegmentChange, tag="SegmentReleased"):
    """Back to the pool with the network's `NetworkDeleted`: the next network may get it."""


class AddressChange(EventMeta):
    """An address of the network and the port it is (was) for (no event of its own: no tag)."""

    ip_address: str
    port_id: str


class AddressAllocated(AddressChange, tag="AddressAllocated"):
    """An address of the network was given to the port."""


class AddressReleased(AddressChange, tag="AddressReleased"):
    """The port's address is free again."""


class PortCreated(EventMeta, tag="PortCreated"):
    """A port was created on a network, with its address and MAC."""

    network_id: str
    ip_address: str
    mac_address: Mac
    name: str | None
    device_owner: str
    host: str | None


class PortUpdated(EventMeta, tag="PortUpdated"):
    """A port was changed; it is carried as the update leaves it."""

    name: str | None
    host: str | None


class PortDeleted(EventMeta, tag="PortDeleted"):
    """The port was deleted."""


# -- routers ----------------------------------------------------------------------------------


class CreateRouter(Command, tag="router.create"):
    name: Name
    service_type_id: Uuid | None = None  # default: the default service type


class RouterNetworkCommand(Command, tag=False):
    """A command to a router about one network (no command of its own: it has no tag)."""

    id: Uuid
    network_id: Uuid


class AddRouterInterface(RouterNetworkCommand, tag="router.add_interface"):
    """Plug the router into a network at the network's gateway address."""


class RemoveRouterInterface(RouterNetworkCommand, tag="router.remove_interface"):
    pass


class SetRouterGateway(RouterNetworkCommand, tag="router.set_gateway"):
    enable_snat: bool = True


class ClearRouterGateway(Command, tag="router.clear_gateway"):
    id: Uuid


class DeleteRouter(Command, tag="router.delete"):
    id: Uuid


class RouterCreated(EventMeta, tag="RouterCreated"):
    """A router was created, with the service type that serves it."""

    name: str
    service_type_id: str


class RouterLegChange(EventMeta):
    """A router's leg on a network: the network and the port (no event of its own: no tag)."""

    network_id: str
    port_id: str


class RouterInterfaceAdded(RouterLegChange, tag="RouterInterfaceAdded"):
    """The router was plugged into a network at that address."""

    ip_address: str


class RouterInterfaceRemoved(RouterLegChange, tag="RouterInterfaceRemoved"):
    """The router was unplugged from that network."""


class RouterGatewaySet(RouterLegChange, tag="RouterGatewaySet"):
    """The router's gateway leg is on that external network (with or without SNAT)."""

    ip_address: str
    enable_snat: bool


class RouterGatewayCleared(EventMeta, tag="RouterGatewayCleared"):
    """The router no longer has a gateway; that port was released."""

    port_id: str


class RouterServiceChange(EventMeta):
    """A service in the router's namespace (no event of its own: it has no tag)."""

    service_id: str


class RouterServiceAttached(RouterServiceChange, tag="RouterServiceAttached"):
    """A service (firewall, NAT, chain) now runs in the router's namespace."""


class RouterServiceDetached(RouterServiceChange, tag="RouterServiceDetached"):
    """That service no longer runs in the router's namespace."""


class RouterDeleted(EventMeta, tag="RouterDeleted"):
    """The router was deleted."""
