"""The LoadBalancer aggregate: Octavia's model, without Octavia's stuck states.

The whole tree lives in one aggregate; every change is the next *generation*. Provisioning
status follows from generations, not from locks:

* a change is always accepted (unless the load balancer is being deleted) and moves it to
  PENDING_UPDATE (PENDING_CREATE until it was first ACTIVE) — no 409 retry loops;
* an agent reports the generation it converged: ACTIVE when that is the newest one, otherwise
  still PENDING (the next generation is queued on the agent);
* a PENDING that outlives its deadline becomes ERROR by an event (the watchdog's command);
* delete works from any state: PENDING_DELETE, then DELETED when the agent has removed it (at
  once when it was never placed on a host).

Its state is `splice.events.lbaas_fold.LoadBalancerState`, changed only by that module's
appliers; the rules beyond types are `splice.events.lbaas_rules`, applied here as it decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from splice.events import lbaas as ev
from splice.events import lbaas_rules as rules
from splice.events.contracts import (
    EventMeta,
    InsertionState,
    ServiceChainAttached,
    ServiceChainDetached,
)
from splice.events.lbaas import (
    HealthMonitor,
    L7PolicyIn,
    L7RuleIn,
    Listener,
    ListenerIn,
    MemberIn,
    Pool,
    PoolIn,
)
from splice.events.lbaas_fold import LB_EVENT_TAGS, LoadBalancerState, apply

from .domain import InUseError, InvalidError, NotFoundError, SpliceAggregate, stamp
from .lbaas_tree import (
    build_listener,
    build_members,
    build_policy,
    build_pool,
    build_rule,
    check_pool_fits,
    refusals,
)

PENDING = ("PENDING_CREATE", "PENDING_UPDATE", "PENDING_DELETE")

# Provisioning moves that may happen (the property-based test checks every event against it).
LEGAL_MOVES: dict[str, set[str]] = {
    "PENDING_CREATE": {"PENDING_CREATE", "ACTIVE", "ERROR", "PENDING_DELETE"},
    "PENDING_UPDATE": {"PENDING_UPDATE", "ACTIVE", "ERROR", "PENDING_DELETE"},
    "ACTIVE": {"PENDING_UPDATE", "PENDING_DELETE", "ACTIVE"},
    "ERROR": {"PENDING_UPDATE", "PENDING_DELETE", "ERROR"},
    "PENDING_DELETE": {"PENDING_DELETE", "DELETED", "ERROR"},
    "DELETED": set(),
}


class ServiceMixin:
    """What every advanced service shares: the chains that use it."""

    if TYPE_CHECKING:
        chains: set[str]
        deleted: bool

    def when_ServiceChainAttached(self, e: ServiceChainAttached) -> None:
        self.chains.add(e.chain_id)

    def when_ServiceChainDetached(self, e: ServiceChainDetached) -> None:
        self.chains.discard(e.chain_id)

    def check_not_in_chain(self) -> None:
        if self.chains:
            raise InUseError(f"used by {len(self.chains)} service chain(s)", "$.id")


class LoadBalancer(ServiceMixin, SpliceAggregate):
    AGGREGATE = "loadbalancer"
    KIND: ClassVar[str] = "loadbalancer"
    port_count = 1  # the VIP port
    APPLIED_TAGS: ClassVar[frozenset[str]] = LB_EVENT_TAGS  # applied by the fold, not when_*

    # -- the state: the fold's, read through these properties ------------------------------

    def when(self, payload: EventMeta) -> None:
        state: LoadBalancerState | None = self.__dict__.get("state")
        if state is None:
            state = self.__dict__["state"] = LoadBalancerState()
        apply(state, payload)

    if TYPE_CHECKING:
        state: LoadBalancerState

    if TYPE_CHECKING:  # the state's fields, read-only (set on the class below)
        name: str
        description: str
        admin_state_up: bool
        vip_network_id: str
        vip_address: str
        vip_port_id: str
        insertion: InsertionState
        pools: dict[str, Pool]
        listeners: dict[str, Listener]
        generation: int
        converged: int
        provisioning_status: str
        operating_status: str
        statuses: dict[str, str]
        host: str | None
        waiting_for: str | None
        error: str
        chains: list[str]  # type: ignore[assignment]  # the fold keeps a list

    # -- deciding --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        agg_id: str,
        name: str,
        description: str,
        vip_network_id: str,
        vip_address: str,
        vip_port_id: str,
        insertion: InsertionState,
        admin_state_up: bool,
        pools: list[PoolIn],
        listeners: list[ListenerIn],
    ) -> LoadBalancer:
        built: dict[str, Pool] = {}
        lst: dict[str, Listener] = {}
        with refusals():
            for i, p in enumerate(pools):
                if any(x.name == p.name for x in built.values()):
                    raise InvalidError(f"two pools are named {p.name!r}", f"$.pools[{i}].name")
                pool = build_pool(p, f"$.pools[{i}]", insertion.provider)
                built[pool.id] = pool
            for i, li in enumerate(listeners):
                listener = build_listener(li, built, lst, f"$.listeners[{i}]",
                                          insertion.provider)
                lst[listener.id] = listener
        return cls.start(
            agg_id,
            stamp(
                ev.LoadBalancerCreated,
                name=name,
                description=description,
                vip_network_id=vip_network_id,
                vip_address=vip_address,
                vip_port_id=vip_port_id,
                insertion=insertion,
                admin_state_up=admin_state_up,
                pools=list(built.values()),
                listeners=list(lst.values()),
                generation=1,
            ),
        )

    def _check_changeable(self) -> int:
        if self.deleted or self.provisioning_status in ("PENDING_DELETE", "DELETED"):
            raise NotFoundError("the load balancer is being deleted", "$.id")
        return self.generation + 1

    def _pool(self, pool_id: str, field: str = "$.pool_id") -> Pool:
        if pool_id not in self.pools:
            raise NotFoundError(f"pool {pool_id} not found", field)
        return self.pools[pool_id]

    def _listener(self, listener_id: str, field: str = "$.listener_id") -> Listener:
        if listener_id not in self.listeners:
            raise NotFoundError(f"listener {listener_id} not found", field)
        return self.listeners[listener_id]

    def update(self, name: str | None, description: str | None, admin_state_up: bool | None) -> None:
        g = self._check_changeable()
        new = (self.name if name is None else name,
               self.description if description is None else description,
               self.admin_state_up if admin_state_up is None else admin_state_up)
        if new == (self.name, self.description, self.admin_state_up):
            return  # nothing changes: no event
        self.emit(stamp(ev.LoadBalancerUpdated, name=new[0], description=new[1],
                        admin_state_up=new[2], generation=g))

    @refusals()
    def add_listener(self, li: ListenerIn) -> str:
        g = self._check_changeable()
        listener = build_listener(li, self.pools, self.listeners, "$.listener",
                                  self.state.provider)
        self.emit(stamp(ev.ListenerCreated, listener=listener, generation=g))
        return listener.id

    @refusals()
    def update_listener(self, listener_id: str, changes: dict[str, Any]) -> None:
        g = self._check_changeable()
        current = self._listener(listener_id, "$.id")
        changes = {k: v for k, v in changes.items() if v is not None}
        if "default_pool_id" in changes:
            check_pool_fits(self.pools, changes["default_pool_id"], current.protocol, "$.default_pool_id")
        rules.check_connection_limit(changes.get("connection_limit"), "$.connection_limit")
        if "name" in changes and any(
            x.name == changes["name"] and x.id != listener_id for x in self.listeners.values()
        ):
            raise InvalidError(f"a listener named {changes['name']!r} exists", "$.name")
        updated = msgspec.structs.replace(current, **changes)
        rules.check_served_listener(self.state.provider, updated, "$")
        if updated != current:
            self.emit(stamp(ev.ListenerUpdated, listener=updated, generation=g))

    def delete_listener(self, listener_id: str) -> None:
        g = self._check_changeable()
        self._listener(listener_id, "$.id")
        self.emit(stamp(ev.ListenerDeleted, listener_id=listener_id, generation=g))

    @refusals()
    def add_pool(self, p: PoolIn) -> str:
        g = self._check_changeable()
        if any(x.name == p.name for x in self.pools.values()):
            raise InvalidError(f"a pool named {p.name!r} exists", "$.pool.name")
        pool = build_pool(p, "$.pool", self.state.provider)
        self.emit(stamp(ev.PoolCreated, pool=pool, generation=g))
        return pool.id

    @refusals()
    def update_pool(self, pool_id: str, changes: dict[str, Any], clear_persistence: bool) -> None:
        g = self._check_changeable()
        current = self._pool(pool_id, "$.id")
        changes = {k: v for k, v in changes.items() if v is not None}
        if clear_persistence:
            changes["session_persistence"] = None
        updated = msgspec.structs.replace(current, **changes)
        rules.check_served_pool(self.state.provider, updated, "$")
        rules.check_persistence(updated.session_persistence, updated.protocol,
                                "$.session_persistence")
        if updated != current:
            self.emit(stamp(ev.PoolUpdated, pool=updated, generation=g))

    def delete_pool(self, pool_id: str) -> None:
        g = self._check_changeable()
        self._pool(pool_id, "$.id")
        for li in self.listeners.values():
            if li.default_pool_id == pool_id or any(p.redirect_pool_id == pool_id for p in li.l7policies):
                raise InUseError(f"listener {li.name} uses this pool", "$.id")
        self.emit(stamp(ev.PoolDeleted, pool_id=pool_id, generation=g))

    @refusals()
    def add_member(self, pool_id: str, m: MemberIn) -> str:
        g = self._check_changeable()
        pool = self._pool(pool_id)
        if any((x.address, x.protocol_port) == (m.address, m.protocol_port) for x in pool.members):
            raise InvalidError(f"{m.address}:{m.protocol_port} is a member already", "$.member")
        member = build_members([m], "$.member")[0]
        self.emit(stamp(ev.MemberCreated, pool_id=pool_id, member=member, generation=g))
        return member.id

    def update_member(self, pool_id: str, member_id: str, changes: dict[str, Any]) -> None:
        g = self._check_changeable()
        pool = self._pool(pool_id)
        current = next((m for m in pool.members if m.id == member_id), None)
        if current is None:
            raise NotFoundError(f"member {member_id} not found", "$.id")
        changes = {k: v for k, v in changes.items() if v is not None}
        updated = msgspec.structs.replace(current, **changes)
        if updated != current:
            self.emit(stamp(ev.MemberUpdated, pool_id=pool_id, member=updated, generation=g))

    def delete_member(self, pool_id: str, member_id: str) -> None:
        g = self._check_changeable()
        pool = self._pool(pool_id)
        if all(m.id != member_id for m in pool.members):
            raise NotFoundError(f"member {member_id} not found", "$.id")
        self.emit(stamp(ev.MemberDeleted, pool_id=pool_id, member_id=member_id, generation=g))

    @refusals()
    def replace_members(self, pool_id: str, members: list[MemberIn]) -> None:
        g = self._check_changeable()
        pool = self._pool(pool_id)
        keep = {(m.address, m.protocol_port): m.id for m in pool.members}
        built = build_members(members, "$.members", keep)
        self.emit(stamp(ev.MembersReplaced, pool_id=pool_id, members=built, generation=g))

    @refusals()
    def set_healthmonitor(self, pool_id: str, hm: HealthMonitor) -> None:
        g = self._check_changeable()
        self._pool(pool_id)
        rules.check_monitor(hm, "$.healthmonitor")
        rules.check_served_monitor(self.state.provider, hm, "$.healthmonitor")
        if self.pools[pool_id].healthmonitor == hm:
            return
        self.emit(stamp(ev.HealthMonitorSet, pool_id=pool_id, healthmonitor=hm, generation=g))

    def delete_healthmonitor(self, pool_id: str) -> None:
        g = self._check_changeable()
        if self._pool(pool_id).healthmonitor is None:
            raise NotFoundError("the pool has no health monitor", "$.pool_id")
        self.emit(stamp(ev.HealthMonitorDeleted, pool_id=pool_id, generation=g))

    @refusals()
    def add_policy(self, listener_id: str, p: L7PolicyIn) -> str:
        g = self._check_changeable()
        listener = self._listener(listener_id)
        rules.check_served_policy(self.state.provider, "$.policy")
        policy = build_policy(p, listener.protocol, self.pools, "$.policy")
        self.emit(stamp(ev.L7PolicySet, listener_id=listener_id, policy=policy, generation=g))
        return policy.id

    def delete_policy(self, listener_id: str, policy_id: str) -> None:
        g = self._check_changeable()
        listener = self._listener(listener_id)
        if all(p.id != policy_id for p in listener.l7policies):
            raise NotFoundError(f"L7 policy {policy_id} not found", "$.id")
        self.emit(stamp(ev.L7PolicyDeleted, listener_id=listener_id, policy_id=policy_id, generation=g))

    def _policy(self, listener_id: str, policy_id: str) -> ev.L7Policy:
        listener = self._listener(listener_id)
        policy = next((p for p in listener.l7policies if p.id == policy_id), None)
        if policy is None:
            raise NotFoundError(f"L7 policy {policy_id} not found", "$.policy_id")
        return policy

    @refusals()
    def add_rule(self, listener_id: str, policy_id: str, r: L7RuleIn) -> str:
        g = self._check_changeable()
        policy = self._policy(listener_id, policy_id)
        rule = build_rule(r, "$.rule")
        updated = msgspec.structs.replace(policy, rules=[*policy.rules, rule])
        self.emit(stamp(ev.L7PolicySet, listener_id=listener_id, policy=updated, generation=g))
        return rule.id

    def delete_rule(self, listener_id: str, policy_id: str, rule_id: str) -> None:
        g = self._check_changeable()
        policy = self._policy(listener_id, policy_id)
        if all(r.id != rule_id for r in policy.rules):
            raise NotFoundError(f"L7 rule {rule_id} not found", "$.id")
        updated = msgspec.structs.replace(policy, rules=[r for r in policy.rules if r.id != rule_id])
        self.emit(stamp(ev.L7PolicySet, listener_id=listener_id, policy=updated, generation=g))

    def schedule(self, host: str | None, waiting_for: str | None = None) -> None:
        """The scheduler's choice; with no host, `waiting_for` is the provider no live host
        offers (said once when it starts waiting, cleared when it is placed)."""
        waiting = None if host else waiting_for
        if host != self.host or waiting != self.waiting_for:
            self.emit(stamp(ev.LoadBalancerScheduled, host=host or "", previous_host=self.host,
                            waiting_for=waiting))

    def request_delete(self) -> bool:
        """Start deleting; True when it is gone at once (never placed on a host)."""
        if self.deleted:
            raise NotFoundError("the load balancer is deleted", "$.id")
        self.check_not_in_chain()
        self.emit(stamp(ev.LoadBalancerDeleteRequested, generation=self.generation + 1))
        if not self.host:
            self.emit(stamp(ev.LoadBalancerDeleted))
            return True
        return False

    def report(self, host: str, generation: int, status: str, reason: str) -> bool:
        """An agent's report. True when the load balancer is now DELETED."""
        if self.deleted:
            return False
        if status == "DELETED":
            if self.provisioning_status != "PENDING_DELETE":
                raise InvalidError("the load balancer is not being deleted", "$.status")
            self.emit(stamp(ev.LoadBalancerDeleted))
            return True
        if generation > self.generation:
            raise InvalidError(f"generation {generation} does not exist yet", "$.generation")
        if status == "ACTIVE":
            self.emit(stamp(ev.LoadBalancerProvisioned, host=host, generation=generation))
        else:
            self.emit(
                stamp(ev.LoadBalancerProvisioningFailed, host=host, generation=generation, reason=reason or "unknown")
            )
        return False

    def report_status(self, loadbalancer: str | None, children: dict[str, str]) -> None:
        """Record operating statuses that changed (transitions only)."""
        if self.deleted:
            return
        lb = loadbalancer if loadbalancer not in (None, self.operating_status) else None
        known = self.state.child_ids()
        changed = {k: v for k, v in children.items() if k in known and self.statuses.get(k) != v}
        if lb is None and not changed:
            return
        listeners = {k: v for k, v in changed.items() if k in self.listeners}
        pools = {k: v for k, v in changed.items() if k in self.pools}
        members = {k: v for k, v in changed.items() if k not in listeners and k not in pools}
        self.emit(
            stamp(
                ev.LoadBalancerOperatingStatusChanged,
                loadbalancer=lb,
                listeners=listeners,
                pools=pools,
                members=members,
            )
        )

    def expire(self, generation: int, deadline_s: float) -> None:
        if self.provisioning_status in PENDING and generation == self.generation:
            self.emit(
                stamp(
                    ev.LoadBalancerProvisioningTimedOut,
                    generation=generation,
                    reason=f"{self.provisioning_status} for more than {deadline_s:g}s",
                )
            )


def _read_only(field: str) -> property:
    return property(lambda self: getattr(self.state, field))


for _field in LoadBalancerState.__struct_fields__:
    setattr(LoadBalancer, _field, _read_only(_field))

