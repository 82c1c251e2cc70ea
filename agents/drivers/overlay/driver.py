"""The overlay driver: observe, ``plan(desired, observed)``, apply; again on a timer.

`converge(segments, make_bridges)` runs before the service drivers: it makes the bridges the
drivers plug their legs into, and their VXLAN devices. Without an underlay address (`splice agent` without
``--underlay-ip``, as `splice up` runs it) it holds nothing: one host needs no tunnel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor

import structlog

from splice.agents.drivers import resync_every

from . import host
from .plan import Segment, Underlay, plan

log = structlog.get_logger("splice.agent.overlay")


class OverlayDriver:
    def __init__(self, *, prefix: str, underlay_ip: str | None) -> None:
        self.prefix, self.underlay_ip = prefix, underlay_ip
        self._desired: dict[str, Segment] = {}
        self._bridges: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlay")
        self.converges = 0
        self.fenced = False  # by `fence` until the agent converges it again (no resync meanwhile)

    async def converge(self, desired: Mapping[str, Segment], make_bridges: Collection[str] = ()) -> None:
        async with self._lock:
            self.fenced = False
            self._desired, self._bridges = dict(desired), frozenset(make_bridges)
            loop = asyncio.get_running_loop()
            underlay: Underlay | None = None
            if self.underlay_ip:
                underlay = await loop.run_in_executor(self._pool, host.underlay_of, self.underlay_ip)
                if underlay is None:
                    log.warning("no interface holds the underlay address", address=self.underlay_ip)
            observed = await loop.run_in_executor(self._pool, host.observe, self.prefix)
            ops = plan(self._desired, observed, underlay, make_bridges=self._bridges)
            outcomes = await loop.run_in_executor(self._pool, host.apply, ops) if ops else []
            self.converges += 1
        for o in outcomes:
            if not o.ok:
                log.warning("overlay step failed", step=type(o.op).__name__, reason=o.reason)

    async def fence(self) -> None:
        """Every VXLAN device of ours down: this host's networks cut from the other hosts."""
        async with self._lock:
            self.fenced = True
            await asyncio.get_running_loop().run_in_executor(self._pool, host.fence, self.prefix)

    async def resync(self) -> None:
        if not self.fenced:
            await self.converge(self._desired, self._bridges)

    async def run_resync(self, interval_s: float, stop: asyncio.Event) -> None:
        await resync_every(interval_s, stop, self.resync, "overlay")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
