"""The nftables-l4 driver: observe the host, ``plan(desired, observed)``, apply — level-triggered.

``converge(desired)`` takes every nftables-l4 load balancer placed on this host (LB id →
spec), observes what the host holds with this driver's prefixes, asks the pure `plan.plan`
for the steps, and applies them: bridges first, then each LB's steps in order (one LB's
serialised, different LBs in parallel), then the bridges nothing uses any more. One converge
runs at a time; the blocking work runs in a thread pool. ``run_resync(interval, stop)``
converges the last desired set again on a timer (drift repair) and runs the health checks:
a member that goes down or comes back makes the driver converge at once (the table is
rendered again without it, or with it, and its flows are cut).

Each converge returns one `LbResult` per desired (or just deleted) LB and calls ``on_report``
for the results that changed since the last report, as the haproxy driver does.

The driver keeps no files: the kernel holds its state (namespaces, legs, tables), and the
health state lives in memory (members start up again after a restart, as haproxy's do).
The state directory the agent shares between drivers is left alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from splice.agents.drivers import resync_every
from splice.agents.drivers.reports import (
    ACTIVE,
    ERROR,
    LbResult,
    Ledger,
    Report,
)
from splice.agents.model import LoadBalancerSpec, check_prefix
from splice.agents.stats import LbStats

from ..steps import Outcome
from . import host
from .health import Checks, Target, targets
from .model import PROVIDER, L4Layout, operating, short
from .plan import (
    DeleteBridge,
    EnsureBridge,
    LbOp,
    Observed,
    Op,
    ReportError,
    plan,
    split_clashes,
)
from .stats import collect as collect_stats

log = structlog.get_logger("splice.agent.l4")
T = TypeVar("T")
HEALTH_IDLE_S = 1.0  # the health loop looks again at least this often


class L4Driver:
    """Converges one host's nftables-l4 load balancers; ``on_report`` gets transitions only."""

    provider = PROVIDER
    keep_bridges: frozenset[str] = frozenset()  # the other drivers' (set by the agent)

    def __init__(
        self,
        host_name: str,
        state_dir: str | os.PathLike[str],
        *,
        prefix: str = "spl-",
        on_report: Callable[[Report], Any] | None = None,
        workers: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host_name = host_name
        self.state_dir = str(state_dir)  # shared with other drivers: nothing of ours in it
        self.layout = L4Layout(check_prefix(prefix))
        self.on_report = on_report
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splice-l4")
        self._probes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="splice-l4-probe")
        self._converging = asyncio.Lock()
        self._desired: dict[str, LoadBalancerSpec] = {}
        self._ledger = Ledger(host_name)
        self.checks = Checks()
        self._wake = asyncio.Event()
        self._again = False
        self._reconverging: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ public

    async def observe(self, desired: Mapping[str, LoadBalancerSpec]) -> Observed:
        """Our bridges, and every slot that is wanted or carries our prefixes."""
        links, shorts = await self._run(host.observe_host, self.layout)
        shorts |= {short(i) for i in desired}
        found = await asyncio.gather(*(self._run(host.observe_slot, self.layout, links, s)
                                       for s in sorted(shorts)))
        return Observed(links.bridges, links.bridge_ports, {s.short: s for s in found})

    def plan(self, desired: Mapping[str, LoadBalancerSpec], observed: Observed) -> list[Op]:
        return plan(desired, observed, self.layout, self.checks.down(), self.keep_bridges)

    async def converge(self, desired: Mapping[str, LoadBalancerSpec]) -> dict[str, LbResult]:
        """Make the host match ``desired`` (the complete set for this host)."""
        async with self._converging:
            self._desired = dict(desired)
            accepted, clashes = split_clashes(self._desired)
            self.checks.sync(targets(accepted), self._clock())
            self._wake.set()
            observed = await self.observe(self._desired)
            failures = await self._apply_all(self.plan(self._desired, observed), accepted)
            results = self._results(failures, accepted, clashes)
            for report in self._ledger.close(results, self._desired):
                if self.on_report is not None:
                    self.on_report(report)
            return results

    async def resync(self) -> dict[str, LbResult]:
        return await self.converge(self._desired)

    async def run_resync(self, interval_s: float, stop: asyncio.Event) -> None:
        """Resync every ``interval_s`` and run the health checks, until ``stop`` is set."""
        health = asyncio.create_task(self._health_loop(stop))
        try:
            await resync_every(interval_s, stop, self.resync, PROVIDER)
        finally:
            probes = [health, *self._tasks]
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)

    async def stats(self) -> dict[str, LbStats]:
        """The counters of every load balancer it serves (`stats`: the table's counters,
        conntrack, the health checks)."""
        return await collect_stats(self)

    def close(self) -> None:
        for task in [*self._tasks, *([self._reconverging] if self._reconverging else [])]:
            task.cancel()
        self._probes.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ apply

    async def _apply_all(self, ops: list[Op],
                         accepted: Mapping[str, LoadBalancerSpec]) -> dict[str, str]:
        """Apply the plan; returns, by LB id, why its steps stopped (absent: all done)."""
        owner = {short(i): i for i in accepted}
        per_lb: dict[str, list[Op]] = {}
        for op in ops:
            if isinstance(op, ReportError):
                per_lb.setdefault(op.lb_id, []).append(op)
            elif isinstance(op, LbOp):
                per_lb.setdefault(owner.get(op.short, f"slot:{op.short}"), []).append(op)
        for op in ops:
            if isinstance(op, EnsureBridge):
                await self._step(op)
        outcomes = await asyncio.gather(*(self._apply_lb(steps) for steps in per_lb.values()))
        for op in ops:
            if isinstance(op, DeleteBridge):
                await self._step(op)
        return {lb: why for lb, why in zip(per_lb, outcomes, strict=True) if why}

    async def _apply_lb(self, steps: list[Op]) -> str:
        """One LB's steps in order; the first that fails stops them, and says why."""
        for op in steps:
            why = await self._step(op)
            if why:
                return why
        return ""

    async def _step(self, op: Op) -> str:
        outcome: Outcome = await self._run(host.apply_op, op)
        if not outcome.ok and not isinstance(op, ReportError):
            log.warning("l4 step failed", step=type(op).__name__,
                        slot=getattr(op, "short", None), reason=outcome.reason)
        return "" if outcome.ok else (op.reason if isinstance(op, ReportError) else outcome.reason)

    def _results(self, failures: Mapping[str, str], accepted: Mapping[str, LoadBalancerSpec],
                 clashes: Mapping[str, str]) -> dict[str, LbResult]:
        """One result per desired LB (ACTIVE, or ERROR with the reason), DELETED for the gone."""
        down = self.checks.down()
        results: dict[str, LbResult] = {}
        for lb_id, spec in accepted.items():
            why = failures.get(lb_id, "")
            results[lb_id] = LbResult(lb_id, spec.generation, ERROR if why else ACTIVE,
                                      operating(spec, down.get(lb_id, ()), not why), why)
        for lb_id, reason in clashes.items():
            spec = self._desired[lb_id]
            results[lb_id] = LbResult(lb_id, spec.generation, ERROR,
                                      operating(spec, (), False), reason)
        return results

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------------ reports

    # ------------------------------------------------------------------ health checks

    async def _health_loop(self, stop: asyncio.Event) -> None:
        """Start the probes that are due; sleep until the next one is (or a converge changed
        what is monitored)."""
        while not stop.is_set():
            self._wake.clear()
            for target in self.checks.due(self._clock()):
                task = asyncio.create_task(self._check(target))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            nxt = self.checks.next_due()
            wait = HEALTH_IDLE_S if nxt is None else min(HEALTH_IDLE_S, nxt - self._clock())
            if wait > 0:
                waits = [asyncio.ensure_future(e.wait()) for e in (stop, self._wake)]
                await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
            else:
                await asyncio.sleep(0)

    async def _check(self, target: Target) -> None:
        served = self._ledger.reported.get(target.lb_id)
        if served is None or served.provisioning_status != ACTIVE:
            return  # its namespace is not built (yet): a failure would say nothing of the member
        try:
            ok = await host.probe(self.layout.namespace(target.lb_id), target.address,
                                  target.port, self.checks.timeout(target), self._probes)
        except RuntimeError:  # the driver is closing (its probe pool shut down)
            return
        if ok is None or not self.checks.record(target, ok):
            return
        log.info("member " + ("up" if ok else "down"), lb=target.lb_id, member=target.member_id,
                 address=target.address, port=target.port)
        self._again = True
        if self._reconverging is None or self._reconverging.done():
            self._reconverging = asyncio.create_task(self._reconverge())

    async def _reconverge(self) -> None:
        """Converge again until no member changed meanwhile (changes coalesce)."""
        while self._again:
            self._again = False
            try:
                await self.converge(self._desired)
            except Exception:
                log.exception("converge after a health change failed")
