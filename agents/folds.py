"""The agent's folds of the stream: which aggregates it follows, the fold of each, and its
snapshot. Pure: applying events to states, no I/O (`runtime.Agent` feeds them).

Every fold is the command side's own (`splice.events.*_fold`); an event is applied to a copy
of the aggregate's state (`copy_for_apply`), which replaces the state only once the whole
event applied, so a bad event (it raises, and the follower sets it aside) changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from splice.events.advanced_fold import FirewallState, NatState, TapState
from splice.events.advanced_fold import apply as apply_service
from splice.events.chain_fold import ChainState
from splice.events.chain_fold import apply as apply_chain
from splice.events.lbaas_fold import LoadBalancerState
from splice.events.port_fold import PortState
from splice.events.port_fold import apply as apply_port
from splice.events.router_fold import RouterState
from splice.events.router_fold import apply as apply_router


class HostInfo(msgspec.Struct, kw_only=True):
    """A registered host, as the agents see it: where its underlay is, whether it is live."""

    underlay_ip: str | None = None
    alive: bool = True


def fold_host(hosts: dict[str, HostInfo], topic: str, payload: Any) -> None:
    """`HostRegistered` (again: live, with its underlay address) and `HostLost`."""
    name = getattr(payload, "host", "")
    if topic == "HostRegistered" and name:
        hosts[name] = HostInfo(underlay_ip=getattr(payload, "underlay_ip", None))
    elif topic == "HostLost" and name in hosts:
        hosts[name] = HostInfo(underlay_ip=hosts[name].underlay_ip, alive=False)


class Snapshot(msgspec.Struct, kw_only=True):
    """The agent's folds and position, so that a restart need not replay the history."""

    seq: int = 0
    followed: list[str] = []  # the subjects folded up to `seq` (fewer than SUBJECTS: replay)
    lbs: dict[str, LoadBalancerState] = {}  # by aggregate id <tenant>.loadbalancer.<uuid>
    networks: dict[str, tuple[str, str]] = {}  # network aggregate id -> (cidr, gateway)
    routers: dict[str, RouterState] = {}  # by aggregate id <tenant>.router.<uuid>
    firewalls: dict[str, FirewallState] = {}  # by aggregate id <tenant>.firewall.<uuid>
    nats: dict[str, NatState] = {}  # by aggregate id <tenant>.nat.<uuid>
    taps: dict[str, TapState] = {}  # by aggregate id <tenant>.tap.<uuid>
    ports: dict[str, PortState] = {}  # by aggregate id <tenant>.port.<uuid>
    chains: dict[str, ChainState] = {}  # by aggregate id <tenant>.chain.<uuid>
    segments: dict[str, int] = {}  # network aggregate id -> its VNI
    hosts: dict[str, HostInfo] = {}  # by host name


S = TypeVar("S", LoadBalancerState, RouterState, FirewallState, NatState, TapState, PortState,
            ChainState)


def copy_for_apply(state: S) -> S:
    """A copy of `state` that an applier may change without touching `state`.

    The fold's appliers change the state's own containers in place (add to, pop from, update
    its dicts) and replace the values in them, never change a value in place: a copy of each
    container is enough (a microsecond, where a deep copy of a large load balancer costs a
    millisecond per event).
    """
    containers = {
        name: copy.copy(value)
        for name in state.__struct_fields__
        if isinstance(value := getattr(state, name), (dict, list, set))
    }
    return msgspec.structs.replace(state, **containers)


# aggregate -> (the agent's attribute holding its states, a fresh state, its applier)
FOLDS: dict[str, tuple[str, Callable[[], Any], Callable[[Any, Any], bool]]] = {
    "router": ("routers", RouterState, apply_router),
    "firewall": ("firewalls", FirewallState, apply_service),
    "nat": ("nats", NatState, apply_service),
    "tap": ("taps", TapState, apply_service),
    "port": ("ports", PortState, apply_port),
    "chain": ("chains", ChainState, apply_chain),
}


def fold_into(states: dict[str, Any], aggregate: str, agg_id: str, payload: Any) -> None:
    """Apply one event of `aggregate` (a key of `FOLDS`) to its state in `states`; a deleted
    aggregate leaves `states`. Raises on a bad event, and `states` is untouched then."""
    _, fresh, applier = FOLDS[aggregate]
    had = states.get(agg_id)
    state = fresh() if had is None else copy_for_apply(had)
    applier(state, payload)
    if state.deleted:
        states.pop(agg_id, None)
    else:
        states[agg_id] = state
