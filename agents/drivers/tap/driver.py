"""The tap driver: observe the host's port interfaces, ``plan(desired, observed)``, apply;
again on a timer.

`converge(desired)` takes the taps placed on this host (`TapSpec`s from `agents.desired`) and
returns, per tap, the reason it is not served ("" when it is): a missing port or monitor
interface (not plugged yet, or gone), or a tc step that failed. There is no tap status on the
wire, so reasons are logged (once per new reason) and the tap is tried again on every resync.
Converges are serialised; the blocking work runs in one worker thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from splice.agents.drivers import resync_every

from . import host
from .model import PrefBand, TapSpec
from .plan import AddFilter, Missing, Observed, Op, plan

log = structlog.get_logger("splice.agent.tap")
T = TypeVar("T")
PROVIDER = "tc-mirror"


class TapDriver:
    """Provider ``tc-mirror``: tc mirred from a port's host-side interface to its monitor's."""

    provider = PROVIDER
    keep_bridges: frozenset[str] = frozenset()  # it makes no bridges

    def __init__(self, host_name: str, state_dir: str | os.PathLike[str], *, prefix: str,
                 on_report: Callable[[Any], Any] | None = None) -> None:
        self.host_name, self.prefix = host_name, prefix
        self.band = PrefBand.of(prefix)
        self._desired: dict[str, TapSpec] = {}
        self._refused: dict[str, str] = {}
        self.reasons: dict[str, str] = {}  # by tap: why it was not served last time ("": it was)
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tap")
        self.converges = 0

    def plan(self, desired: Mapping[str, TapSpec], observed: Observed) -> list[Op]:
        return plan(desired, observed, self.band)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def observe(self, desired: Mapping[str, TapSpec]) -> Observed:
        return await self._off_loop(host.observe, self.band, {t.monitor_if for t in desired.values()})

    async def converge(self, desired: Mapping[str, TapSpec],
                       refused: Mapping[str, str] | None = None) -> dict[str, str]:
        """`refused`: the taps placed here that the agent cannot hand over, with the reason
        (logged with the others')."""
        async with self._lock:
            self._desired = dict(desired)
            self._refused = dict(refused or {})
            ops = self.plan(self._desired, await self.observe(self._desired))
            outcomes = await self._off_loop(host.apply, ops) if ops else []
            self.converges += 1
        results = {tap_id: "" for tap_id in desired}
        results.update(self._refused)
        for o in outcomes:
            tap_id = o.op.tap_id if isinstance(o.op, Missing | AddFilter) else None
            if not o.ok and tap_id in results and not results[tap_id]:
                results[tap_id] = o.reason
            elif not o.ok:
                log.warning("tap step failed", host=self.host_name, reason=o.reason)
        for tap_id, reason in results.items():
            if reason and self.reasons.get(tap_id) != reason:
                log.warning("tap not served: retried on resync", host=self.host_name,
                            tap=tap_id, reason=reason)
            elif not reason and self.reasons.get(tap_id):
                log.info("tap served", host=self.host_name, tap=tap_id)
        self.reasons = dict(results)
        return results

    async def resync(self) -> dict[str, str]:
        return await self.converge(self._desired, self._refused)

    async def run_resync(self, interval_s: float, stop: asyncio.Event) -> None:
        await resync_every(interval_s, stop, self.resync, "tap")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
