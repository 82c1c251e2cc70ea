"""The router driver: observe the host, ``plan(desired, observed)``, apply; again on a timer.

`converge(desired)` takes the routers placed on this host (`RouterSpec`s built by
`model.router_spec` from the fold) and returns, per router, the reason it is not converged
("" when it is). `run_resync(interval)` converges the last desired set again, which repairs
drift: a namespace, leg, address, route, sysctl or table removed or changed by hand. Converges
are serialised (one at a time per host); the blocking work runs in one worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from splice.agents.drivers import resync_every
from splice.events.router_fold import ROUTER_PROVIDER

from ..steps import Outcome
from . import host
from .model import RouterLayout, RouterSpec
from .plan import EnsureLeg, Op, ReportError, RouterOp, Tables, plan

log = structlog.get_logger("splice.agent.router")
T = TypeVar("T")
REANNOUNCE_S = (1.2, 2.0)  # gaps between the repeated gratuitous ARPs of a new or changed leg


class RouterDriver:
    provider = ROUTER_PROVIDER
    keep_bridges: frozenset[str] = frozenset()  # the other drivers' (set by the agent)

    def __init__(self, host_name: str, *, prefix: str) -> None:
        self.host_name, self.prefix = host_name, prefix
        self.layout = RouterLayout(prefix)
        self._desired: dict[str, RouterSpec] = {}
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router")
        self.converges = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def plan(self, desired: Mapping[str, RouterSpec], observed: host.Observed) -> list[Op]:
        return plan(desired, observed, prefix=self.prefix, keep=self.keep_bridges)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def converge(self, desired: Mapping[str, RouterSpec]) -> dict[str, str]:
        async with self._lock:
            self._desired = dict(desired)
            observed = await self._off_loop(host.observe, self.prefix)
            ops = self.plan(self._desired, observed)
            outcomes: list[Outcome] = await self._off_loop(host.apply, ops) if ops else []
            self.converges += 1
        legs = [o.op for o in outcomes if o.ok and isinstance(o.op, EnsureLeg)]
        if legs:
            task = asyncio.create_task(self._announce_again(legs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        results = {rid: "" for rid in desired}
        by_namespace = {s.namespace: rid for rid, s in desired.items()}
        for o in outcomes:
            if o.ok:
                continue
            rid = _router_of(o.op, by_namespace)
            log.warning("router step failed", router=rid, step=type(o.op).__name__,
                        reason=o.reason)
            if rid in results and not results[rid]:
                results[rid] = o.reason
        return results

    async def _announce_again(self, legs: list[EnsureLeg]) -> None:
        """Repeat the legs' gratuitous ARPs past the neighbours' locktime (`host.announce_again`)."""
        for delay in REANNOUNCE_S:
            await asyncio.sleep(delay)
            for op in legs:
                await self._off_loop(host.announce_again, op.namespace, op.leg)

    async def resync(self) -> dict[str, str]:
        return await self.converge(self._desired)

    async def run_resync(self, interval_s: float, stop: asyncio.Event) -> None:
        """Resync every ``interval_s`` until ``stop`` is set; errors are logged, never fatal."""
        await resync_every(interval_s, stop, self.resync, "router")

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _router_of(op: Op, by_namespace: Mapping[str, str]) -> str | None:
    if isinstance(op, ReportError | Tables):
        return op.router_id
    if isinstance(op, RouterOp):
        return by_namespace.get(op.namespace)
    return None
