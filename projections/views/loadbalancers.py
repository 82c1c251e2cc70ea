"""Load balancers, Octavia's status tree: LB → listeners → pools → members (+ health monitors).

The state of a load balancer is folded with `splice.events.lbaas_fold` — the very appliers the
command side and the agents use — so the read model can never drift from what the domain
decided. The fold's state is kept in the load balancer's row (``state``, JSON) so a restarted
projector continues from the database exactly as a rebuild would; the flat tables
(`lb_listeners`, `lb_pools`, `lb_members`) and the ``status_tree`` column are derived from it
after every event.

Statuses: provisioning is the load balancer's own (its generations; children follow it, as in
Octavia); operating statuses are the agents' reports (``statuses``), defaulting to OFFLINE, and
NO_MONITOR for members of a pool without a health monitor. ``status_reason`` says why a load
balancer is not served yet ("waiting for a host that offers nftables-l4": the fold's
`waiting_for`, from its scheduling event), None once it is placed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from splice.events.contracts import EVENT_TYPES
from splice.events.folding import status_reason
from splice.events.lbaas import Pool
from splice.events.lbaas_fold import LB_EVENT_TAGS, LoadBalancerState, apply

from ..envelope import Event
from ..schema import Table, cols
from .base import Filter, Tx, View

LOADBALANCERS = Table(
    "loadbalancers",
    cols(
        "id, tenant, name, description, vip_network_id, vip_address, vip_port_id, "
        "insertion:json, admin_state_up:bool, provisioning_status, operating_status, "
        "generation:int, converged:int, host, status_reason, error, deleted:bool, version:int, "
        "created_time:time, updated_time:time, status_tree:json, state:json"
    ),
    key=("id",),
    indexes=(("tenant", "name"),),
    prefetch=lambda ev: (ev.aggregate_id,),
)
LISTENERS = Table(
    "lb_listeners",
    cols(
        "id, loadbalancer_id, tenant, name, protocol, protocol_port:int, connection_limit:int, "
        "default_pool_id, l7policies:json, admin_state_up:bool, provisioning_status, "
        "operating_status"
    ),
    key=("id",),
    indexes=(("loadbalancer_id",),),
)
POOLS = Table(
    "lb_pools",
    cols(
        "id, loadbalancer_id, tenant, name, protocol, lb_algorithm, session_persistence:json, "
        "healthmonitor:json, admin_state_up:bool, provisioning_status, operating_status"
    ),
    key=("id",),
    indexes=(("loadbalancer_id",),),
)
MEMBERS = Table(
    "lb_members",
    cols(
        "id, pool_id, loadbalancer_id, tenant, name, address, protocol_port:int, weight:int, "
        "backup:bool, admin_state_up:bool, provisioning_status, operating_status"
    ),
    key=("id",),
    indexes=(("pool_id",), ("loadbalancer_id",)),
)


def _load(row: dict[str, Any] | None) -> LoadBalancerState:
    """The fold as of the row (kept in memory between events of a batch), or a new one."""
    if row is not None and "_fold" in row:
        fold: LoadBalancerState = row["_fold"]
        return fold
    if row is not None and row.get("state"):
        return msgspec.convert(row["state"], LoadBalancerState)
    return LoadBalancerState()


def _children(fold: LoadBalancerState) -> tuple[set[str], set[str], set[str]]:
    members = {m.id for p in fold.pools.values() for m in p.members}
    return set(fold.listeners), set(fold.pools), members


def _operating(fold: LoadBalancerState, child_id: str, default: str = "OFFLINE") -> str:
    return fold.statuses.get(child_id, default)


def _member_default(pool: Pool) -> str:
    return "OFFLINE" if pool.healthmonitor is not None else "NO_MONITOR"


def status_tree(fold: LoadBalancerState, lb_id: str) -> dict[str, Any]:
    """Octavia's GET /loadbalancers/{id}/status: every part with both statuses."""
    prov = fold.provisioning_status

    def pool_node(pool: Pool) -> dict[str, Any]:
        node: dict[str, Any] = {
            "id": pool.id,
            "name": pool.name,
            "provisioning_status": prov,
            "operating_status": _operating(fold, pool.id),
            "members": [
                {
                    "id": m.id,
                    "name": m.name,
                    "address": m.address,
                    "protocol_port": m.protocol_port,
                    "provisioning_status": prov,
                    "operating_status": _operating(fold, m.id, _member_default(pool)),
                }
                for m in pool.members
            ],
        }
        if pool.healthmonitor is not None:
            node["healthmonitor"] = {"type": pool.healthmonitor.type, "provisioning_status": prov}
        return node

    listeners = []
    for li in fold.listeners.values():
        used = [li.default_pool_id] if li.default_pool_id else []
        used += [p.redirect_pool_id for p in li.l7policies if p.redirect_pool_id]
        listeners.append(
            {
                "id": li.id,
                "name": li.name,
                "provisioning_status": prov,
                "operating_status": _operating(fold, li.id),
                "pools": [pool_node(fold.pools[p]) for p in dict.fromkeys(used) if p in fold.pools],
            }
        )
    return {
        "loadbalancer": {
            "id": lb_id,
            "name": fold.name,
            "provisioning_status": prov,
            "operating_status": fold.operating_status,
            "listeners": listeners,
            "pools": [pool_node(p) for p in fold.pools.values()],
        }
    }


def on_event(ev: Event, tx: Tx) -> None:
    """Any load-balancer event: fold it, then rewrite the LB's row and its children's rows."""
    lbs = tx["loadbalancers"]
    row = lbs.get(ev.aggregate_id)
    fold = _load(row)
    before = _children(fold)
    apply(fold, msgspec.convert(ev.payload, EVENT_TYPES[ev.type]))
    after = _children(fold) if not fold.deleted else (set(), set(), set())
    created = row["created_time"] if row is not None else ev.time_ns
    lbs.put(_lb_row(fold, ev, created))
    for table, old, new in zip(
        ("lb_listeners", "lb_pools", "lb_members"), before, after, strict=True
    ):
        for gone in old - new:
            tx[table].delete(gone)
    if after != (set(), set(), set()):
        _write_children(fold, ev, tx)


def _lb_row(fold: LoadBalancerState, ev: Event, created: int) -> dict[str, Any]:
    return {
        "id": ev.aggregate_id,
        "tenant": ev.tenant,
        "name": fold.name,
        "description": fold.description,
        "vip_network_id": fold.vip_network_id,
        "vip_address": fold.vip_address,
        "vip_port_id": fold.vip_port_id,
        "insertion": msgspec.to_builtins(fold.insertion),
        "admin_state_up": fold.admin_state_up,
        "provisioning_status": fold.provisioning_status,
        "operating_status": fold.operating_status,
        "generation": fold.generation,
        "converged": fold.converged,
        "host": fold.host,
        "status_reason": None if fold.deleted else status_reason(fold.waiting_for),
        "error": fold.error,
        "deleted": fold.deleted,
        "version": ev.version,
        "created_time": created,
        "updated_time": ev.time_ns,
        "status_tree": status_tree(fold, ev.aggregate_id),
        "state": msgspec.to_builtins(fold),
        "_fold": fold,  # not a column: the live fold for the next event of this batch
    }


def _write_children(fold: LoadBalancerState, ev: Event, tx: Tx) -> None:
    prov = fold.provisioning_status
    common = {"loadbalancer_id": ev.aggregate_id, "tenant": ev.tenant, "provisioning_status": prov}
    for li in fold.listeners.values():
        tx["lb_listeners"].put(
            {
                **common,
                "id": li.id,
                "name": li.name,
                "protocol": li.protocol,
                "protocol_port": li.protocol_port,
                "connection_limit": li.connection_limit,
                "default_pool_id": li.default_pool_id,
                "l7policies": msgspec.to_builtins(li.l7policies),
                "admin_state_up": li.admin_state_up,
                "operating_status": _operating(fold, li.id),
            }
        )
    for pool in fold.pools.values():
        tx["lb_pools"].put(
            {
                **common,
                "id": pool.id,
                "name": pool.name,
                "protocol": pool.protocol,
                "lb_algorithm": pool.lb_algorithm,
                "session_persistence": msgspec.to_builtins(pool.session_persistence),
                "healthmonitor": msgspec.to_builtins(pool.healthmonitor),
                "admin_state_up": pool.admin_state_up,
                "operating_status": _operating(fold, pool.id),
            }
        )
        for m in pool.members:
            tx["lb_members"].put(
                {
                    **common,
                    "id": m.id,
                    "pool_id": pool.id,
                    "name": m.name,
                    "address": m.address,
                    "protocol_port": m.protocol_port,
                    "weight": m.weight,
                    "backup": m.backup,
                    "admin_state_up": m.admin_state_up,
                    "operating_status": _operating(fold, m.id, _member_default(pool)),
                }
            )


LB_EVENTS = tuple(name for name in EVENT_TYPES if name in LB_EVENT_TAGS)

VIEW = View(
    name="loadbalancers",
    tables=(LOADBALANCERS, LISTENERS, POOLS, MEMBERS),
    handlers=dict.fromkeys(LB_EVENTS, on_event),
    version=2,  # 2: status_reason
    scope="tenant",
    query_table="loadbalancers",
    order_by=("name", "id"),
    filters={
        "id": Filter("id"),
        "name": Filter("name"),
        "provisioning_status": Filter("provisioning_status"),
        "operating_status": Filter("operating_status"),
        "host": Filter("host"),
        "deleted": Filter("deleted", "=", bool),
    },
    defaults={"deleted": False},
    hidden=("state",),
)


def _child_view(name: str, table: Table, extra: dict[str, Filter]) -> View:
    """A query face on one of the tree's flat tables (projected by the loadbalancers view)."""
    return View(
        name=name,
        tables=(table,),
        handlers={},
        scope="tenant",
        projected_by="loadbalancers",
        query_table=table.name,
        order_by=("id",),
        filters={
            "id": Filter("id"),
            "loadbalancer_id": Filter("loadbalancer_id"),
            "operating_status": Filter("operating_status"),
            "provisioning_status": Filter("provisioning_status"),
            **extra,
        },
    )


LISTENERS_VIEW = _child_view("listeners", LISTENERS, {"name": Filter("name")})
POOLS_VIEW = _child_view("pools", POOLS, {"name": Filter("name")})
MEMBERS_VIEW = _child_view(
    "members", MEMBERS, {"pool_id": Filter("pool_id"), "address": Filter("address")}
)
