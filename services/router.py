"""The Router aggregate: interfaces on networks, an optional external gateway, placement.

Its state is `splice.events.router_fold`'s `RouterState`, changed only by that module's
appliers (as the host agent changes its own copy); the aggregate decides and reads the state
through read-only properties. A router is placed by the scheduler on a live host offering
`ROUTER_PROVIDER` (`hosts_handlers.place`), and moved like a floating service when its host
is lost; the choice is its `ServiceScheduled` event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splice.events.contracts import (
    EventMeta,
    RouterCreated,
    RouterDeleted,
    RouterGatewayCleared,
    RouterGatewaySet,
    RouterInterfaceAdded,
    RouterInterfaceRemoved,
    RouterServiceAttached,
    RouterServiceDetached,
    ServiceScheduled,
)
from splice.events.router_fold import (
    ROUTER_EVENT_TAGS,
    RouterGateway,
    RouterInterface,
    RouterState,
    apply,
)

from .domain import AddressInUseError, InUseError, InvalidError, SpliceAggregate, stamp


class Router(SpliceAggregate):
    AGGREGATE = "router"
    APPLIED_TAGS = ROUTER_EVENT_TAGS  # applied by the fold, not by when_* methods

    if TYPE_CHECKING:
        state: RouterState

    # -- reading the fold's state ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def service_type_id(self) -> str:
        return self.state.service_type_id

    @property
    def interfaces(self) -> dict[str, RouterInterface]:
        return self.state.interfaces

    @property
    def gateway(self) -> RouterGateway | None:
        return self.state.gateway

    @property
    def services(self) -> list[str]:
        return self.state.services

    @property
    def host(self) -> str | None:
        return self.state.host

    # -- deciding ----------------------------------------------------------------------------

    @classmethod
    def create(cls, agg_id: str, name: str, service_type_id: str) -> Router:
        return cls.start(agg_id, stamp(RouterCreated, name=name, service_type_id=service_type_id))

    def add_interface(self, network_id: str, port_id: str, ip: str) -> None:
        if network_id in self.interfaces:
            raise AddressInUseError("the router already has an interface on this network", "$.network_id")
        if self.gateway and self.gateway.network_id == network_id:
            raise InvalidError("this network is the router's external gateway", "$.network_id")
        self.emit(stamp(RouterInterfaceAdded, network_id=network_id, port_id=port_id, ip_address=ip))

    def remove_interface(self, network_id: str) -> str:
        if network_id not in self.interfaces:
            raise InvalidError("the router has no interface on this network", "$.network_id")
        port_id = self.interfaces[network_id].port_id
        self.emit(stamp(RouterInterfaceRemoved, network_id=network_id, port_id=port_id))
        return port_id

    def set_gateway(self, network_id: str, port_id: str, ip: str, enable_snat: bool) -> None:
        if network_id in self.interfaces:
            raise InvalidError("the router has an interface on this network", "$.network_id")
        self.emit(stamp(RouterGatewaySet, network_id=network_id, port_id=port_id,
                        ip_address=ip, enable_snat=enable_snat))

    def clear_gateway(self) -> str | None:
        if not self.gateway:
            return None
        port_id = self.gateway.port_id
        self.emit(stamp(RouterGatewayCleared, port_id=port_id))
        return port_id

    def attach_service(self, service_id: str) -> None:
        self.emit(stamp(RouterServiceAttached, service_id=service_id))

    def detach_service(self, service_id: str) -> None:
        if service_id in self.services:
            self.emit(stamp(RouterServiceDetached, service_id=service_id))

    @property
    def waiting_for(self) -> str | None:
        return self.state.waiting_for

    def schedule(self, host: str | None, waiting_for: str | None = None) -> None:
        """The scheduler's choice (None: no live host offers routing, `waiting_for`; the
        router waits, and says so once)."""
        waiting = None if host else waiting_for
        if host != self.host or waiting != self.waiting_for:
            self.emit(stamp(ServiceScheduled, host=host or "", previous_host=self.host,
                            waiting_for=waiting))

    def delete(self) -> None:
        if self.interfaces:
            raise InUseError("remove the router's interfaces first", "$.id")
        if self.services:
            raise InUseError(f"{len(self.services)} service(s) or chain(s) use this router", "$.id")
        self.emit(stamp(RouterDeleted))

    # -- applying: the fold's appliers only ----------------------------------------------------

    def when(self, payload: EventMeta) -> None:
        state = self.__dict__.get("state")
        if state is None:
            state = self.__dict__["state"] = RouterState()
        apply(state, payload)
        if state.deleted:
            self.deleted = True


__all__ = ["Router"]
