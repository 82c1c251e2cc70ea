"""The one fold of a router: its state as Structs, and the appliers of its events.

The `Router` aggregate (command side) and the host agent (desired state of the host the router
is placed on) both hold a `RouterState` and change it with `apply`, as `lbaas_fold` and
`advanced_fold` do for load balancers, firewalls and NAT.

Only applying lives here: no decisions, no checks, no clocks. Appliers are chosen by the
event's stable wire name (its msgspec tag). They change the state's own containers and
replace the values in them, never change a value in place, so a copy of each container is a
safe copy of the state (the agent applies an event to such a copy).

A router is placed by the scheduler like a floating service, on a live host that offers
`ROUTER_PROVIDER`; the choice is the router's `ServiceScheduled` event (the very event a
floating firewall or tap gets), so the agent knows which routers are its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from . import advanced as adv
from . import network as ev
from .folding import apply_with, by_tag, deleted, fold_with, scheduled

# What an agent with the router driver advertises, and what the scheduler places routers by.
# Not a service type's provider: a router is not a service of a kind (its service type chooses
# the providers of the services routed on it), and every router needs the same host driver.
ROUTER_PROVIDER = "router"
# The load-balancer providers that serve a load balancer routed on a router (its VIP an address
# of the router's namespace, its dataplane running there). nftables-l4 is floating only: its
# DNAT and masquerade would share the router's NAT hooks with SNAT and port forwards.
ROUTED_LB_PROVIDERS = frozenset({"haproxy"})


class RouterInterface(Struct, frozen=True, kw_only=True):
    """The router's leg on one network: the port it holds, at the network's gateway address."""

    port_id: str
    ip_address: str


class RouterGateway(Struct, frozen=True, kw_only=True):
    """The router's external gateway: its port and address on the external network."""

    network_id: str
    port_id: str
    ip_address: str
    enable_snat: bool


class RouterState(Struct, kw_only=True):
    """Everything the events of one router say, as of its last applied event."""

    name: str = ""
    service_type_id: str = ""
    interfaces: dict[str, RouterInterface] = {}  # by network id (public uuid)
    gateway: RouterGateway | None = None
    services: list[str] = []  # aggregate ids of the services routed on it and of its chains
    host: str | None = None  # where the scheduler placed it (None: waiting for a host)
    waiting_for: str | None = None  # no host: the provider it waits for (no live host offers it)
    deleted: bool = False



def apply(state: RouterState, event: Any) -> bool:
    """Apply one event in place; False when it is not a router's event."""
    return apply_with(ROUTER_APPLIERS, state, event)


def fold_router(events: list[Any]) -> RouterState:
    return fold_with(ROUTER_APPLIERS, RouterState(), events)


# -- appliers ---------------------------------------------------------------------------------


def _created(s: RouterState, e: ev.RouterCreated) -> None:
    s.name, s.service_type_id = e.name, e.service_type_id
    s.interfaces, s.gateway, s.services, s.host, s.deleted = {}, None, [], None, False
    s.waiting_for = None


def _interface_added(s: RouterState, e: ev.RouterInterfaceAdded) -> None:
    s.interfaces[e.network_id] = RouterInterface(port_id=e.port_id, ip_address=e.ip_address)


def _interface_removed(s: RouterState, e: ev.RouterInterfaceRemoved) -> None:
    s.interfaces.pop(e.network_id, None)


def _gateway_set(s: RouterState, e: ev.RouterGatewaySet) -> None:
    s.gateway = RouterGateway(network_id=e.network_id, port_id=e.port_id,
                              ip_address=e.ip_address, enable_snat=e.enable_snat)


def _gateway_cleared(s: RouterState, e: ev.RouterGatewayCleared) -> None:
    s.gateway = None


def _service_attached(s: RouterState, e: ev.RouterServiceAttached) -> None:
    if e.service_id not in s.services:
        s.services = [*s.services, e.service_id]


def _service_detached(s: RouterState, e: ev.RouterServiceDetached) -> None:
    s.services = [x for x in s.services if x != e.service_id]



ROUTER_APPLIERS: dict[str, Callable[..., None]] = by_tag({
    ev.RouterCreated: _created,
    ev.RouterInterfaceAdded: _interface_added,
    ev.RouterInterfaceRemoved: _interface_removed,
    ev.RouterGatewaySet: _gateway_set,
    ev.RouterGatewayCleared: _gateway_cleared,
    ev.RouterServiceAttached: _service_attached,
    ev.RouterServiceDetached: _service_detached,
    adv.ServiceScheduled: scheduled,
    ev.RouterDeleted: deleted,
})
ROUTER_EVENT_TAGS = frozenset(ROUTER_APPLIERS)
