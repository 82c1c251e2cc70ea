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
    pass


class ServiceTypeUpdated(ServiceTypeDescribed, tag="ServiceTypeUpdated"):
    pass


class ServiceTypeDefaultSet(EventMeta, tag="ServiceTypeDefaultSet"):
    pass


class ServiceTypeDefaultCleared(EventMeta, tag="ServiceTypeDefaultCleared"):
    pass


class ServiceTypeUsed(EventMeta, tag="ServiceTypeUsed"):
    user_id: str


class ServiceTypeReleased(EventMeta, tag="ServiceTypeReleased"):
    user_id: str


class ServiceTypeDeleted(EventMeta, tag="ServiceTypeDeleted"):
    pass


class ServiceTypeNameChange(EventMeta):
    """A service type's name, kept unique by an aggregate of its own (no event of its own: it
    has no tag)."""

    name: str


class ServiceTypeNameCreated(ServiceTypeNameChange, tag="ServiceTypeNameCreated"):
    pass


class ServiceTypeNameClaimed(ServiceTypeNameChange, tag="ServiceTypeNameClaimed"):
    service_type_id: str


class ServiceTypeNameReleased(ServiceTypeNameChange, tag="ServiceTypeNameReleased"):
    pass


class DefaultServiceTypeCreated(EventMeta, tag="DefaultServiceTypeCreated"):
    pass


class DefaultServiceTypeChanged(EventMeta, tag="DefaultServiceTypeChanged"):
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
    pass


class HostRegistered(EventMeta, tag="HostRegistered"):
    host: str
    providers: list[str]
    underlay_ip: str | None = None  # None: not given (or registered before hosts had one)


class HostLost(EventMeta, tag="HostLost"):
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
    service_id: str
    host: str | None = None


# -- quotas -------------------------------------------------------------------------------------

Limit = Annotated[int, Meta(ge=0, le=1_000_000)]


class SetQuota(Command, tag="quota.set"):
    """Admin scope: a tenant's limits per resource kind (others keep the defaults)."""

    tenant: TenantName
    limits: dict[Annotated[str, Meta(pattern=r"^[a-z]{1,32}$(?!\n)")], Limit]


class QuotaCreated(EventMeta, tag="QuotaCreated"):
    tenant: str


class QuotaLimitsSet(EventMeta, tag="QuotaLimitsSet"):
    limits: dict[str, int]


class QuotaUse(EventMeta):
    """How many of a resource kind the tenant uses now (no event of its own: it has no tag)."""

    resource: str
    used: int


class QuotaConsumed(QuotaUse, tag="QuotaConsumed"):
    limit: int


class QuotaReleased(QuotaUse, tag="QuotaReleased"):
    pass


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
    name: str
    cidr: str
    gateway: str
    segmentation_id: int = 0  # its VXLAN VNI, unique across tenants; 0: created before VNIs


class NetworkDeleted(EventMeta, tag="NetworkDeleted"):
    pass


class NetworkExternalSet(EventMeta, tag="NetworkExternalSet"):
    external: bool


# -- segments: the one pool of VXLAN VNIs (admin, a singleton) --------------------------------


class SegmentPoolCreated(EventMeta, tag="SegmentPoolCreated"):
    pass


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
    pass


class AddressReleased(AddressChange, tag="AddressReleased"):
    pass


class PortCreated(EventMeta, tag="PortCreated"):
    network_id: str
    ip_address: str
    mac_address: Mac
    name: str | None
    device_owner: str
    host: str | None


class PortUpdated(EventMeta, tag="PortUpdated"):
    name: str | None
    host: str | None


class PortDeleted(EventMeta, tag="PortDeleted"):
    pass


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
    name: str
    service_type_id: str


class RouterLegChange(EventMeta):
    """A router's leg on a network: the network and the port (no event of its own: no tag)."""

    network_id: str
    port_id: str


class RouterInterfaceAdded(RouterLegChange, tag="RouterInterfaceAdded"):
    ip_address: str


class RouterInterfaceRemoved(RouterLegChange, tag="RouterInterfaceRemoved"):
    pass


class RouterGatewaySet(RouterLegChange, tag="RouterGatewaySet"):
    ip_address: str
    enable_snat: bool


class RouterGatewayCleared(EventMeta, tag="RouterGatewayCleared"):
    port_id: str


class RouterServiceChange(EventMeta):
    """A service in the router's namespace (no event of its own: it has no tag)."""

    service_id: str


class RouterServiceAttached(RouterServiceChange, tag="RouterServiceAttached"):
    pass


class RouterServiceDetached(RouterServiceChange, tag="RouterServiceDetached"):
    pass


class RouterDeleted(EventMeta, tag="RouterDeleted"):
    pass
