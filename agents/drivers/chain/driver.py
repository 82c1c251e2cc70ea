"""The chain driver: observe, ``plan(desired, observed)``, apply; again on a timer.

`converge(desired, refused)` takes, by router id, the chains to steer in the routers of this
host (`RouterChains`, from `desired.desired_chains`) and the chains it will not steer, with
the reason (logged once per change of reason). It runs after the router driver's converge (it
needs the router's namespace). `run_resync` converges the last desired set again: drift (a hop
namespace, veth, rule, route or table removed or changed by hand) is repaired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import structlog

from splice.agents.drivers import resync_every

from . import host
from .plan import ChainOp, Op, ReplaceClassifier, RouterChains, plan

log = structlog.get_logger("splice.agent.chain")


class ChainDriver:
    def __init__(self, host_name: str, *, prefix: str) -> None:
        self.host_name, self.prefix = host_name, prefix
        self._desired: dict[str, RouterChains] = {}
        self._refused: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain")
        self.converges = 0
        self.reasons: dict[str, str] = {}  # by chain id: why it is not steered ("" when it is)

    async def converge(self, desired: Mapping[str, RouterChains],
                       refused: Mapping[str, str] | None = None) -> dict[str, str]:
        async with self._lock:
            self._desired, self._refused = dict(desired), dict(refused or {})
            loop = asyncio.get_running_loop()
            observed = await loop.run_in_executor(self._pool, host.observe, self.prefix)
            ops = plan(self._desired, observed, prefix=self.prefix)
            outcomes = await loop.run_in_executor(self._pool, host.apply, ops) if ops else []
            self.converges += 1
        reasons = {c.id: "" for rc in desired.values() for c in rc.chains}
        by_router = {rc.router_id: [c.id for c in rc.chains] for rc in desired.values()}
        for o in outcomes:
            if o.ok:
                continue
            for cid in _chains_of(o.op, by_router):
                log.warning("chain step failed", chain=cid, step=type(o.op).__name__,
                            reason=o.reason)
                if cid in reasons and not reasons[cid]:
                    reasons[cid] = o.reason
        for cid, reason in self._refused.items():
            if self.reasons.get(cid) != reason:
                log.warning("chain not steered", chain=cid, reason=reason)
            reasons[cid] = reason
        self.reasons = reasons
        return reasons

    async def resync(self) -> dict[str, str]:
        return await self.converge(self._desired, self._refused)

    async def run_resync(self, interval_s: float, stop: asyncio.Event) -> None:
        await resync_every(interval_s, stop, self.resync, "chain")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _chains_of(op: Op, by_router: Mapping[str, list[str]]) -> list[str]:
    if isinstance(op, ChainOp):
        return [op.chain_id]
    if isinstance(op, ReplaceClassifier):
        return by_router.get(op.router_id, [])
    return []
