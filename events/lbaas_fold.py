"""The one fold of a load balancer: its state as a Struct, and the appliers of its events.

The aggregate (command side), the host agent (desired state, and its snapshot) and the read
model all hold a `LoadBalancerState` and change it with `apply`, so none of them keeps a
parallel copy of the state or of the rules that build it.

Only applying lives here: no decisions, no checks, no clocks. Appliers are chosen by the
event's stable wire name (its msgspec tag), never by its Python class name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from msgspec import Struct

from . import lbaas as ev
from .advanced import ServiceChainAttached, ServiceChainDetached
from .folding import apply_with, by_tag, chain_attached, chain_detached
from .lbaas import Listener, Member, Pool
from .wire import InsertionState


class LoadBalancerState(Struct, kw_only=True):
    """Everything the events of one load balancer say, as of its last applied event."""

    name: str = ""
    description: str = ""
    vip_network_id: str = ""
    vip_address: str = ""
    vip_port_id: str = ""
    insertion: InsertionState | None = None
    admin_state_up: bool = True
    listeners: dict[str, Listener] = {}
    pools: dict[str, Pool] = {}
    generation: int = 0
    converged: int = 0  # the newest generation an agent reported converged
    provisioning_status: str = "PENDING_CREATE"
    operating_status: str = "OFFLINE"
    statuses: dict[str, str] = {}  # operating status of each listener, pool, member
    host: str | None = None
    waiting_for: str | None = None  # no host: the provider it waits for (no live host offers it)
    error: str = ""
    chains: list[str] = []
    deleted: bool = False

    def child_ids(self) -> set[str]:
        ids = set(self.listeners) | set(self.pools)
        for p in self.pools.values():
            ids.update(m.id for m in p.members)
        return ids

    @property
    def provider(self) -> str:
        return self.insertion.provider if self.insertion else ""


def apply(state: LoadBalancerState, event: Any) -> bool:
    """Apply one event in place; False when it is not a load balancer's event."""
    return apply_with(APPLIERS, state, event)


# -- appliers -------------------------------------------------------------------------------


def _changed(s: LoadBalancerState, generation: int) -> None:
    s.generation = generation
    if s.provisioning_status != "PENDING_CREATE":
        s.provisioning_status = "PENDING_UPDATE"


def _set_pool(s: LoadBalancerState, pool_id: str, **changes: Any) -> None:
    s.pools[pool_id] = msgspec.structs.replace(s.pools[pool_id], **changes)


def _forget(s: LoadBalancerState, ids: Any) -> None:
    for i in ids:
        s.statuses.pop(i, None)


def _created(s: LoadBalancerState, e: ev.LoadBalancerCreated) -> None:
    s.name, s.description = e.name, e.description
    s.vip_network_id, s.vip_address, s.vip_port_id = e.vip_network_id, e.vip_address, e.vip_port_id
    s.insertion, s.admin_state_up = e.insertion, e.admin_state_up
    s.pools = {p.id: p for p in e.pools}
    s.listeners = {li.id: li for li in e.listeners}
    s.generation, s.converged = e.generation, 0
    s.provisioning_status, s.operating_status = "PENDING_CREATE", "OFFLINE"
    s.statuses, s.host, s.waiting_for, s.error, s.chains = {}, None, None, "", []


def _updated(s: LoadBalancerState, e: ev.LoadBalancerUpdated) -> None:
    s.name, s.description, s.admin_state_up = e.name, e.description, e.admin_state_up
    _changed(s, e.generation)


def _scheduled(s: LoadBalancerState, e: ev.LoadBalancerScheduled) -> None:
    s.host = e.host or None
    s.waiting_for = None if e.host else e.waiting_for


def _listener_set(s: LoadBalancerState, e: ev.ListenerCreated | ev.ListenerUpdated) -> None:
    s.listeners[e.listener.id] = e.listener
    _changed(s, e.generation)


def _listener_deleted(s: LoadBalancerState, e: ev.ListenerDeleted) -> None:
    s.listeners.pop(e.listener_id, None)
    _forget(s, [e.listener_id])
    _changed(s, e.generation)


def _pool_set(s: LoadBalancerState, e: ev.PoolCreated | ev.PoolUpdated) -> None:
    s.pools[e.pool.id] = e.pool
    _changed(s, e.generation)


def _pool_deleted(s: LoadBalancerState, e: ev.PoolDeleted) -> None:
    pool = s.pools.pop(e.pool_id, None)
    _forget(s, [e.pool_id, *(m.id for m in (pool.members if pool else []))])
    _changed(s, e.generation)


def _members(s: LoadBalancerState, pool_id: str, members: list[Member], generation: int) -> None:
    _set_pool(s, pool_id, members=members)
    _changed(s, generation)


def _member_created(s: LoadBalancerState, e: ev.MemberCreated) -> None:
    _members(s, e.pool_id, [*s.pools[e.pool_id].members, e.member], e.generation)


def _member_updated(s: LoadBalancerState, e: ev.MemberUpdated) -> None:
    members = [e.member if m.id == e.member.id else m for m in s.pools[e.pool_id].members]
    _members(s, e.pool_id, members, e.generation)


def _member_deleted(s: LoadBalancerState, e: ev.MemberDeleted) -> None:
    _forget(s, [e.member_id])
    _members(s, e.pool_id, [m for m in s.pools[e.pool_id].members if m.id != e.member_id],
             e.generation)


def _members_replaced(s: LoadBalancerState, e: ev.MembersReplaced) -> None:
    kept = {m.id for m in e.members}
    _forget(s, [m.id for m in s.pools[e.pool_id].members if m.id not in kept])
    _members(s, e.pool_id, list(e.members), e.generation)


def _monitor_set(s: LoadBalancerState, e: ev.HealthMonitorSet) -> None:
    _set_pool(s, e.pool_id, healthmonitor=e.healthmonitor)
    _changed(s, e.generation)


def _monitor_deleted(s: LoadBalancerState, e: ev.HealthMonitorDeleted) -> None:
    _set_pool(s, e.pool_id, healthmonitor=None)
    _changed(s, e.generation)


def _policy_set(s: LoadBalancerState, e: ev.L7PolicySet) -> None:
    li = s.listeners[e.listener_id]
    policies = [p for p in li.l7policies if p.id != e.policy.id] + [e.policy]
    s.listeners[e.listener_id] = msgspec.structs.replace(
        li, l7policies=sorted(policies, key=lambda p: p.position)
    )
    _changed(s, e.generation)


def _policy_deleted(s: LoadBalancerState, e: ev.L7PolicyDeleted) -> None:
    li = s.listeners[e.listener_id]
    s.listeners[e.listener_id] = msgspec.structs.replace(
        li, l7policies=[p for p in li.l7policies if p.id != e.policy_id]
    )
    _changed(s, e.generation)


def _delete_requested(s: LoadBalancerState, e: ev.LoadBalancerDeleteRequested) -> None:
    s.generation = e.generation
    s.provisioning_status = "PENDING_DELETE"


def _provisioned(s: LoadBalancerState, e: ev.LoadBalancerProvisioned) -> None:
    s.converged = max(s.converged, e.generation)
    if e.generation == s.generation and s.provisioning_status != "PENDING_DELETE":
        s.provisioning_status, s.error = "ACTIVE", ""


def _failed(s: LoadBalancerState, e: ev.LoadBalancerProvisioningFailed) -> None:
    if e.generation == s.generation:
        s.provisioning_status, s.error = "ERROR", e.reason


def _timed_out(s: LoadBalancerState, e: ev.LoadBalancerProvisioningTimedOut) -> None:
    s.provisioning_status, s.error = "ERROR", e.reason


def _deleted(s: LoadBalancerState, e: ev.LoadBalancerDeleted) -> None:
    s.provisioning_status, s.operating_status = "DELETED", "OFFLINE"
    s.deleted = True


def _operating(s: LoadBalancerState, e: ev.LoadBalancerOperatingStatusChanged) -> None:
    if e.loadbalancer is not None:
        s.operating_status = e.loadbalancer
    for part in (e.listeners, e.pools, e.members):
        s.statuses.update(part)


APPLIERS: dict[str, Callable[..., None]] = by_tag({
    ev.LoadBalancerCreated: _created,
    ev.LoadBalancerUpdated: _updated,
    ev.LoadBalancerScheduled: _scheduled,
    ev.ListenerCreated: _listener_set,
    ev.ListenerUpdated: _listener_set,
    ev.ListenerDeleted: _listener_deleted,
    ev.PoolCreated: _pool_set,
    ev.PoolUpdated: _pool_set,
    ev.PoolDeleted: _pool_deleted,
    ev.MemberCreated: _member_created,
    ev.MemberUpdated: _member_updated,
    ev.MemberDeleted: _member_deleted,
    ev.MembersReplaced: _members_replaced,
    ev.HealthMonitorSet: _monitor_set,
    ev.HealthMonitorDeleted: _monitor_deleted,
    ev.L7PolicySet: _policy_set,
    ev.L7PolicyDeleted: _policy_deleted,
    ev.LoadBalancerDeleteRequested: _delete_requested,
    ev.LoadBalancerProvisioned: _provisioned,
    ev.LoadBalancerProvisioningFailed: _failed,
    ev.LoadBalancerProvisioningTimedOut: _timed_out,
    ev.LoadBalancerDeleted: _deleted,
    ev.LoadBalancerOperatingStatusChanged: _operating,
    ServiceChainAttached: chain_attached,
    ServiceChainDetached: chain_detached,
})
LB_EVENT_TAGS = frozenset(APPLIERS)
