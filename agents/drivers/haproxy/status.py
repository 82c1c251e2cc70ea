"""Operating status from haproxy's ``show stat`` rows, rolled up like Octavia does (pure).

member: UP → ONLINE, DOWN → ERROR, MAINT → OFFLINE, DRAIN/NOLB or weight 0 → DRAINING,
"no check" → NO_MONITOR. pool: OFFLINE if disabled or empty, ERROR if every enabled member is in
ERROR, DEGRADED if some are, else ONLINE. listener: OPEN → ONLINE, FULL → DEGRADED, disabled →
OFFLINE. LB: OFFLINE if disabled, ERROR if haproxy does not answer, DEGRADED if any enabled
listener or pool is not ONLINE, else ONLINE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from splice.agents.drivers.haproxy.render import backend_name, frontend_name, server_name
from splice.agents.drivers.reports import Operating, OperatingStatus, lb_status, pool_status
from splice.agents.model import LoadBalancerSpec
from splice.events.lbaas import Member


def member_status(member: Member, row: Mapping[str, str] | None) -> Operating:
    if not member.admin_state_up:
        return Operating.OFFLINE
    if row is None:
        return Operating.ERROR
    state = row.get("status", "").split(" ")[0]
    if state == "no":  # "no check"
        return Operating.DRAINING if member.weight == 0 else Operating.NO_MONITOR
    if state == "UP":
        return Operating.DRAINING if member.weight == 0 else Operating.ONLINE
    if state in ("DRAIN", "NOLB"):
        return Operating.DRAINING
    if state.startswith("MAINT"):
        return Operating.OFFLINE
    return Operating.ERROR


def listener_status(enabled: bool, row: Mapping[str, str] | None) -> Operating:
    if not enabled:
        return Operating.OFFLINE
    if row is None:
        return Operating.ERROR
    return {"OPEN": Operating.ONLINE, "FULL": Operating.DEGRADED}.get(
        row.get("status", ""), Operating.OFFLINE
    )


def rollup(spec: LoadBalancerSpec, rows: Iterable[Mapping[str, str]] | None) -> OperatingStatus:
    """``rows`` is None when haproxy does not answer: everything enabled is then in ERROR."""
    index = {(r.get("pxname", ""), r.get("svname", "")): r for r in rows or ()}
    members: dict[str, Operating] = {}
    pools: dict[str, Operating] = {}
    for pool in spec.pools:
        for m in pool.members:
            members[m.id] = member_status(m, index.get((backend_name(pool.id), server_name(m.id))))
        pools[pool.id] = pool_status(pool, members)
    listeners = {
        lst.id: listener_status(
            lst.admin_state_up and spec.admin_state_up,
            index.get((frontend_name(lst.id), "FRONTEND")),
        )
        for lst in spec.listeners
    }
    return OperatingStatus(lb_status(spec, rows is not None, listeners, pools),
                           listeners, pools, members)


