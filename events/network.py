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


class ServiceTypeCreated(EventMeta, tag="ServiceTypeCreated"):
    name: str
    description: str
    providers: dict[str, str]


class ServiceTypeUpdated(EventMeta, tag="ServiceTypeUpdated"):
    name: str
    description: str
    providers: dict[str, str]


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


class ServiceTypeNameCreated(EventMeta, tag="ServiceTypeNameCreated"):
    name: str


class ServiceTypeNameClaimed(EventMeta, tag="ServiceTypeNameClaimed"):
    name: str
    service_type_id: str


class ServiceTypeNameReleased(EventMeta, tag="ServiceTypeNameReleased"):
    name: str


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


class DeclareHostLost(Command, tag="host.lost"):
    """From the host monitor (admin scope): the host missed its heartbeats."""

    host: HostName


class HostRegistryCreated(EventMeta, tag="HostRegistryCreated"):
    pass


class HostRegistered(EventMeta, tag="HostRegistered"):
    host: str
    providers: list[str]


class HostLost(EventMeta, tag="HostLost"):
    host: str


class ServicePlaced(EventMeta, tag="ServicePlaced"):
    """The scheduler put a service on a host (least loaded live host offering its provider)."""

    service_id: str
    provider: str
    host: str


class ServiceWaiting(EventMeta, tag="ServiceWaiting"):
    """No live host offers the provider yet: the service waits for one."""

    service_id: str
    provider: str


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


class QuotaConsumed(EventMeta, tag="QuotaConsumed"):
    resource: str
    used: int
    limit: int


class QuotaReleased(EventMeta, tag="QuotaReleased"):
    resource: str
    used: int


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


class NetworkDeleted(EventMeta, tag="NetworkDeleted"):
    pass


class NetworkExternalSet(EventMeta, tag="NetworkExternalSet"):
    external: bool


class AddressAllocated(EventMeta, tag="AddressAllocated"):
    ip_address: str
    port_id: str


class AddressReleased(EventMeta, tag="AddressReleased"):
    ip_address: str
    port_id: str


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


class AddRouterInterface(Command, tag="router.add_interface"):
    """Plug the router into a network at the network's gateway address."""

    id: Uuid
    network_id: Uuid


class RemoveRouterInterface(Command, tag="router.remove_interface"):
    id: Uuid
    network_id: Uuid


class SetRouterGateway(Command, tag="router.set_gateway"):
    id: Uuid
    network_id: Uuid
    enable_snat: bool = True


class ClearRouterGateway(Command, tag="router.clear_gateway"):
    id: Uuid


class DeleteRouter(Command, tag="router.delete"):
    id: Uuid


class RouterCreated(EventMeta, tag="RouterCreated"):
    name: str
    service_type_id: str


class RouterInterfaceAdded(EventMeta, tag="RouterInterfaceAdded"):
    network_id: str
    port_id: str
    ip_address: str


class RouterInterfaceRemoved(EventMeta, tag="RouterInterfaceRemoved"):
    network_id: str
    port_id: str


class RouterGatewaySet(EventMeta, tag="RouterGatewaySet"):
    network_id: str
    port_id: str
    ip_address: str
    enable_snat: bool


class RouterGatewayCleared(EventMeta, tag="RouterGatewayCleared"):
    port_id: str


class RouterServiceAttached(EventMeta, tag="RouterServiceAttached"):
    service_id: str


class RouterServiceDetached(EventMeta, tag="RouterServiceDetached"):
    service_id: str


class RouterDeleted(EventMeta, tag="RouterDeleted"):
    pass
