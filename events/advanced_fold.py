"""The one fold of a firewall, of a NAT and of a tap: their state as Structs, and the appliers
of their events.

The aggregates (command side) and the host agent (desired state) both hold a `FirewallState`,
a `NatState` or a `TapState` and change it with `apply`, so neither keeps a parallel copy of the state or
of the rules that build it (as `lbaas_fold` does for load balancers).

Only applying lives here: no decisions, no checks, no clocks. Appliers are chosen by the
event's stable wire name (its msgspec tag), never by its Python class name. They change the
state's own containers (insert into, filter, append to its lists) and replace the values in
them, never change a value in place, and never keep an event's list as the state's own: an
event stays as it was stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from msgspec import Struct

from . import advanced as ev
from .advanced import FirewallRule, PortForward
from .folding import (
    apply_with,
    by_tag,
    chain_attached,
    chain_detached,
    deleted,
    fold_with,
    scheduled,
)
from .wire import InsertionState


class FirewallState(Struct, kw_only=True):
    """Everything the events of one firewall say, as of its last applied event."""

    name: str = ""
    rules: list[FirewallRule] = []  # in the order they are evaluated: first match wins
    default_action: str = "deny"  # allow | deny: what happens to a flow no rule matches
    insertion: InsertionState | None = None
    network_id: str | None = None  # floating (bump-in-the-wire): the network of its two ports
    port_ids: list[str] = []
    host: str | None = None  # floating: where the scheduler placed it
    waiting_for: str | None = None  # no host: the provider it waits for (no live host offers it)
    chains: list[str] = []
    deleted: bool = False

    @property
    def router_id(self) -> str | None:
        return self.insertion.router_id if self.insertion else None


class NatState(Struct, kw_only=True):
    """Everything the events of one NAT (port forwarding on a router) say."""

    name: str = ""
    insertion: InsertionState | None = None
    forwards: list[PortForward] = []  # in the order they were added
    chains: list[str] = []
    deleted: bool = False

    @property
    def router_id(self) -> str | None:
        return self.insertion.router_id if self.insertion else None


class TapState(Struct, kw_only=True):
    """Everything the events of one tap say: which port's traffic goes to which monitor port.

    `direction` is the port's (Neutron's) point of view: ``ingress`` is the traffic into the
    port's machine, ``egress`` the traffic out of it. A standalone tap (no router) is placed on
    the host both ports are bound to (`host`)."""

    name: str = ""
    port_id: str = ""
    monitor_port_id: str = ""
    direction: str = "both"  # ingress | egress | both
    insertion: InsertionState | None = None
    host: str | None = None
    waiting_for: str | None = None  # no host: the provider it waits for (no live host offers it)
    chains: list[str] = []
    deleted: bool = False

    @property
    def router_id(self) -> str | None:
        return self.insertion.router_id if self.insertion else None


S = TypeVar("S", FirewallState, NatState, TapState)


def apply(state: FirewallState | NatState | TapState, event: Any) -> bool:
    """Apply one event in place; False when it is not an event of the state's kind."""
    return apply_with(APPLIERS[type(state)], state, event)


def fold(events: list[Any], state: S) -> S:
    """`state` (a fresh `FirewallState()` or `NatState()`) after `events`."""
    return fold_with(APPLIERS[type(state)], state, events)


def fold_firewall(events: list[Any]) -> FirewallState:
    return fold(events, FirewallState())


def fold_nat(events: list[Any]) -> NatState:
    return fold(events, NatState())


def fold_tap(events: list[Any]) -> TapState:
    return fold(events, TapState())


# -- appliers: firewall -----------------------------------------------------------------------


def _fw_created(s: FirewallState, e: ev.FirewallCreated) -> None:
    s.name, s.rules, s.default_action = e.name, list(e.rules), e.default_action
    s.insertion, s.network_id, s.port_ids = e.insertion, e.network_id, list(e.port_ids)
    s.host, s.waiting_for, s.chains, s.deleted = None, None, [], False


def _fw_updated(s: FirewallState, e: ev.FirewallUpdated) -> None:
    s.name, s.default_action = e.name, e.default_action


def _rule_inserted(s: FirewallState, e: ev.FirewallRuleInserted) -> None:
    s.rules.insert(e.index, e.rule)


def _rule_moved(s: FirewallState, e: ev.FirewallRuleMoved) -> None:
    rule = next(r for r in s.rules if r.id == e.rule_id)
    s.rules = [r for r in s.rules if r.id != e.rule_id]
    s.rules.insert(e.index, rule)


def _rule_removed(s: FirewallState, e: ev.FirewallRuleRemoved) -> None:
    s.rules = [r for r in s.rules if r.id != e.rule_id]


# -- appliers: NAT ----------------------------------------------------------------------------


def _nat_created(s: NatState, e: ev.NatCreated) -> None:
    s.name, s.insertion, s.forwards = e.name, e.insertion, list(e.port_forwards)
    s.chains, s.deleted = [], False


def _forward_added(s: NatState, e: ev.PortForwardAdded) -> None:
    s.forwards.append(e.forward)


def _forward_removed(s: NatState, e: ev.PortForwardRemoved) -> None:
    s.forwards = [f for f in s.forwards if f.id != e.forward_id]


# -- appliers: tap ----------------------------------------------------------------------------


def _tap_created(s: TapState, e: ev.TapCreated) -> None:
    s.name, s.port_id, s.monitor_port_id = e.name, e.port_id, e.monitor_port_id
    s.direction, s.insertion = e.direction, e.insertion
    s.host, s.waiting_for, s.chains, s.deleted = None, None, [], False


FIREWALL_APPLIERS: dict[str, Callable[..., None]] = by_tag({
    ev.FirewallCreated: _fw_created,
    ev.FirewallUpdated: _fw_updated,
    ev.FirewallRuleInserted: _rule_inserted,
    ev.FirewallRuleMoved: _rule_moved,
    ev.FirewallRuleRemoved: _rule_removed,
    ev.ServiceScheduled: scheduled,
    ev.FirewallDeleted: deleted,
    ev.ServiceChainAttached: chain_attached,
    ev.ServiceChainDetached: chain_detached,
})
NAT_APPLIERS: dict[str, Callable[..., None]] = by_tag({
    ev.NatCreated: _nat_created,
    ev.PortForwardAdded: _forward_added,
    ev.PortForwardRemoved: _forward_removed,
    ev.NatDeleted: deleted,
    ev.ServiceChainAttached: chain_attached,
    ev.ServiceChainDetached: chain_detached,
})
TAP_APPLIERS: dict[str, Callable[..., None]] = by_tag({
    ev.TapCreated: _tap_created,
    ev.ServiceScheduled: scheduled,
    ev.TapDeleted: deleted,
    ev.ServiceChainAttached: chain_attached,
    ev.ServiceChainDetached: chain_detached,
})
APPLIERS: dict[type[Any], dict[str, Callable[..., None]]] = {
    FirewallState: FIREWALL_APPLIERS,
    NatState: NAT_APPLIERS,
    TapState: TAP_APPLIERS,
}
FIREWALL_EVENT_TAGS = frozenset(FIREWALL_APPLIERS)
NAT_EVENT_TAGS = frozenset(NAT_APPLIERS)
TAP_EVENT_TAGS = frozenset(TAP_APPLIERS)
