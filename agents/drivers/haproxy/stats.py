"""A haproxy load balancer's counters from its stats socket's ``show stat`` (pure, but for
`collect`).

Per listener its frontend's row (``l-<listener id>``, ``FRONTEND``): ``bin``/``bout`` (bytes
from and to the clients), ``scur`` (sessions open), ``stot`` (sessions since the worker
started: a reload's new worker counts from 0, which Prometheus reads as a counter reset). Per
member its server's row (``m-<member id>`` in
``p-<pool id>``): the same counters and ``check_status`` (L4OK, L4CON, L7STS…). Operating
statuses are `status.rollup`'s, so they agree with what the agent reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from splice.agents.drivers.haproxy import process as haproxy
from splice.agents.drivers.haproxy.render import LbPaths, backend_name, frontend_name, server_name
from splice.agents.drivers.haproxy.status import rollup
from splice.agents.model import LoadBalancerSpec
from splice.agents.stats import LbStats, ListenerStats, MemberStats, as_int, now, pool_stats

if TYPE_CHECKING:
    from splice.agents.drivers.haproxy.driver import HaproxyDriver


def lb_stats(spec: LoadBalancerSpec, rows: Iterable[Mapping[str, str]] | None,
             at: float) -> LbStats:
    """``rows`` is None when haproxy does not answer (no counters, everything in ERROR)."""
    rows = None if rows is None else list(rows)
    index = {(r.get("pxname", ""), r.get("svname", "")): r for r in rows or ()}
    op = rollup(spec, rows)
    listeners = {}
    for li in spec.listeners:
        row = index.get((frontend_name(li.id), "FRONTEND"))
        listeners[li.id] = ListenerStats(
            port=li.protocol_port, status=str(op.listeners[li.id]),
            bytes_in=as_int(row, "bin"), bytes_out=as_int(row, "bout"),
            active=as_int(row, "scur"), total=as_int(row, "stot"))
    members = {}
    for pool in spec.pools:
        for m in pool.members:
            row = index.get((backend_name(pool.id), server_name(m.id)))
            members[m.id] = MemberStats(
                pool_id=pool.id, address=m.address, port=m.protocol_port,
                status=str(op.members[m.id]),
                check=(row or {}).get("check_status", "").strip("* ") or
                (row or {}).get("status", ""),
                active=as_int(row, "scur"), total=as_int(row, "stot"),
                bytes_in=as_int(row, "bin"), bytes_out=as_int(row, "bout"))
    pools = {p.id: pool_stats(str(op.pools[p.id]), members, p.id,
                              sum(1 for m in p.members if m.admin_state_up))
             for p in spec.pools}
    return LbStats(loadbalancer_id=spec.id, provider="haproxy", status=str(op.loadbalancer),
                   at=at, listeners=listeners, pools=pools, members=members)


async def collect(driver: HaproxyDriver) -> dict[str, LbStats]:
    """The counters of every load balancer the driver serves (its last desired set)."""
    specs = list(driver._desired.values())
    loop = asyncio.get_running_loop()

    async def one(spec: LoadBalancerSpec) -> LbStats:
        paths = LbPaths(driver.layout.lb_dir(driver.layout.short_id(spec.id)))
        rows = await loop.run_in_executor(driver._pool, haproxy.show_stat, paths)
        return lb_stats(spec, rows, now())

    return {r.loadbalancer_id: r for r in await asyncio.gather(*(one(s) for s in specs))}
