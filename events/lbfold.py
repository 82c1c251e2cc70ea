"""The state of a load balancer, folded from its events: shared by the command side (the
aggregate applies with it), agents (desired state of their host) and read models.

Only applying lives here: no decisions, no checks, no clocks. Each `when_<Event>` method takes
the wire Struct and updates plain attributes; `fold(payloads)` builds a view from scratch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from .lbaas import (
    HealthMonitorDeleted,
    HealthMonitorSet,
    L7PolicyDeleted,
    L7PolicySet,
    Listener,
    ListenerCreated,
    ListenerDeleted,
    ListenerUpdated,
    LoadBalancerCreated,
    LoadBalancerDeleted,
    LoadBalancerDeleteRequested,
    LoadBalancerOperatingStatusChanged,
    LoadBalancerProvisioned,
    LoadBalancerProvisioningFailed,
    LoadBalancerProvisioningTimedOut,
    LoadBalancerScheduled,
    LoadBalancerUpdated,
    Member,
    MemberCreated,
    MemberDeleted,
    MembersReplaced,
    MemberUpdated,
    Pool,
    PoolCreated,
    PoolDeleted,
    PoolUpdated,
)
from .wire import InsertionState


class LoadBalancerFold:
    """Appliers of the load-balancer events (a mixin: attributes live on the object)."""

    deleted: bool = False
    if TYPE_CHECKING:
        name: str
        description: str
        vip_network_id: str
        vip_address: str
        vip_port_id: str
        insertion: InsertionState
        admin_state_up: bool
        listeners: dict[str, Listener]
        pools: dict[str, Pool]
        generation: int
        converged: int
        provisioning_status: str
        operating_status: str
        statuses: dict[str, str]
        host: str | None
        error: str
        chains: set[str]

    def _child_ids(self) -> set[str]:
        ids = set(self.listeners) | set(self.pools)
        for p in self.pools.values():
            ids.update(m.id for m in p.members)
        return ids

    def _changed(self, generation: int) -> None:
        self.generation = generation
        if self.provisioning_status != "PENDING_CREATE":
            self.provisioning_status = "PENDING_UPDATE"

    def when_LoadBalancerCreated(self, e: LoadBalancerCreated) -> None:
        self.name, self.description = e.name, e.description
        self.vip_network_id, self.vip_address, self.vip_port_id = e.vip_network_id, e.vip_address, e.vip_port_id
        self.insertion, self.admin_state_up = e.insertion, e.admin_state_up
        self.pools = {p.id: p for p in e.pools}
        self.listeners = {li.id: li for li in e.listeners}
        self.generation, self.converged = e.generation, 0
        self.provisioning_status, self.operating_status = "PENDING_CREATE", "OFFLINE"
        self.statuses, self.host, self.error, self.chains = {}, None, "", set()

    def when_LoadBalancerUpdated(self, e: LoadBalancerUpdated) -> None:
        self.name, self.description, self.admin_state_up = e.name, e.description, e.admin_state_up
        self._changed(e.generation)

    def when_LoadBalancerScheduled(self, e: LoadBalancerScheduled) -> None:
        self.host = e.host or None

    def when_ListenerCreated(self, e: ListenerCreated) -> None:
        self.listeners[e.listener.id] = e.listener
        self._changed(e.generation)

    def when_ListenerUpdated(self, e: ListenerUpdated) -> None:
        self.listeners[e.listener.id] = e.listener
        self._changed(e.generation)

    def when_ListenerDeleted(self, e: ListenerDeleted) -> None:
        self.listeners.pop(e.listener_id, None)
        self.statuses.pop(e.listener_id, None)
        self._changed(e.generation)

    def when_PoolCreated(self, e: PoolCreated) -> None:
        self.pools[e.pool.id] = e.pool
        self._changed(e.generation)

    def when_PoolUpdated(self, e: PoolUpdated) -> None:
        self.pools[e.pool.id] = e.pool
        self._changed(e.generation)

    def when_PoolDeleted(self, e: PoolDeleted) -> None:
        pool = self.pools.pop(e.pool_id, None)
        self.statuses.pop(e.pool_id, None)
        for m in pool.members if pool else []:
            self.statuses.pop(m.id, None)
        self._changed(e.generation)

    def _set_members(self, pool_id: str, members: list[Member]) -> None:
        self.pools[pool_id] = msgspec.structs.replace(self.pools[pool_id], members=members)

    def when_MemberCreated(self, e: MemberCreated) -> None:
        self._set_members(e.pool_id, [*self.pools[e.pool_id].members, e.member])
        self._changed(e.generation)

    def when_MemberUpdated(self, e: MemberUpdated) -> None:
        self._set_members(e.pool_id, [e.member if m.id == e.member.id else m for m in self.pools[e.pool_id].members])
        self._changed(e.generation)

    def when_MemberDeleted(self, e: MemberDeleted) -> None:
        self._set_members(e.pool_id, [m for m in self.pools[e.pool_id].members if m.id != e.member_id])
        self.statuses.pop(e.member_id, None)
        self._changed(e.generation)

    def when_MembersReplaced(self, e: MembersReplaced) -> None:
        kept = {m.id for m in e.members}
        for m in self.pools[e.pool_id].members:
            if m.id not in kept:
                self.statuses.pop(m.id, None)
        self._set_members(e.pool_id, list(e.members))
        self._changed(e.generation)

    def when_HealthMonitorSet(self, e: HealthMonitorSet) -> None:
        self.pools[e.pool_id] = msgspec.structs.replace(self.pools[e.pool_id], healthmonitor=e.healthmonitor)
        self._changed(e.generation)

    def when_HealthMonitorDeleted(self, e: HealthMonitorDeleted) -> None:
        self.pools[e.pool_id] = msgspec.structs.replace(self.pools[e.pool_id], healthmonitor=None)
        self._changed(e.generation)

    def when_L7PolicySet(self, e: L7PolicySet) -> None:
        li = self.listeners[e.listener_id]
        policies = [p for p in li.l7policies if p.id != e.policy.id] + [e.policy]
        self.listeners[e.listener_id] = msgspec.structs.replace(
            li, l7policies=sorted(policies, key=lambda p: p.position)
        )
        self._changed(e.generation)

    def when_L7PolicyDeleted(self, e: L7PolicyDeleted) -> None:
        li = self.listeners[e.listener_id]
        self.listeners[e.listener_id] = msgspec.structs.replace(
            li, l7policies=[p for p in li.l7policies if p.id != e.policy_id]
        )
        self._changed(e.generation)

    def when_LoadBalancerDeleteRequested(self, e: LoadBalancerDeleteRequested) -> None:
        self.generation = e.generation
        self.provisioning_status = "PENDING_DELETE"

    def when_LoadBalancerProvisioned(self, e: LoadBalancerProvisioned) -> None:
        self.converged = max(self.converged, e.generation)
        if e.generation == self.generation and self.provisioning_status != "PENDING_DELETE":
            self.provisioning_status, self.error = "ACTIVE", ""

    def when_LoadBalancerProvisioningFailed(self, e: LoadBalancerProvisioningFailed) -> None:
        if e.generation == self.generation:
            self.provisioning_status, self.error = "ERROR", e.reason

    def when_LoadBalancerProvisioningTimedOut(self, e: LoadBalancerProvisioningTimedOut) -> None:
        self.provisioning_status, self.error = "ERROR", e.reason

    def when_LoadBalancerDeleted(self, e: LoadBalancerDeleted) -> None:
        self.provisioning_status, self.operating_status = "DELETED", "OFFLINE"
        self.deleted = True

    def when_LoadBalancerOperatingStatusChanged(self, e: LoadBalancerOperatingStatusChanged) -> None:
        if e.loadbalancer is not None:
            self.operating_status = e.loadbalancer
        for part in (e.listeners, e.pools, e.members):
            self.statuses.update(part)


class LoadBalancerView(LoadBalancerFold):
    """A load balancer as a reader sees it, built from its events alone."""

    def __init__(self, lb_id: str, tenant: str) -> None:
        self.id, self.tenant = lb_id, tenant

    def when(self, payload: Any) -> None:
        method = getattr(self, f"when_{type(payload).__name__}", None)
        if method is not None:  # events of other concerns (chains) are not a view's business
            method(payload)
