"""The reconciler: observe, plan, apply — per LB, in parallel, level-triggered.

``converge(desired)`` takes the *whole* desired state of the host (a dict of LB id → spec; the
caller rebuilds it from the event stream) and makes the host match it. Work on one LB is
serialised by a per-LB lock; different LBs proceed in parallel; blocking netlink, file and
process calls run in a thread pool so the event loop stays free. ``resync()`` repeats the last
converge (drift repair: a killed haproxy, a deleted namespace) and re-reads haproxy's health
states; ``run_resync(interval)`` does so on a timer.

Each converge returns one :class:`LbResult` per desired (or just deleted) LB, and calls
``on_report`` only for results that changed since the last report: provisioning status,
generation, reason, or any listener/pool/member operating status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from splice.agents import haproxy, netns
from splice.agents.haproxy_render import LbPaths, digest
from splice.agents.model import HostLayout, LoadBalancerSpec
from splice.agents.plan import (
    DeleteBridge,
    DeleteLoadBalancer,
    EnsureBridge,
    EnsureNamespace,
    EnsureVipLeg,
    KillStrayHaproxy,
    Observed,
    ObservedLB,
    Op,
    RemoveOrphanNamespace,
    ReportError,
    StartHaproxy,
    WriteConfigAndReload,
    plan_bridge_cleanup,
    plan_bridges,
    plan_lb,
    plan_orphan,
    split_short_id_clashes,
)
from splice.agents.status import Operating, OperatingStatus, rollup

log = structlog.get_logger(__name__)

ACTIVE = "ACTIVE"
ERROR = "ERROR"
DELETED = "DELETED"
LB_ID_FILE = "lb-id"


@dataclass(frozen=True, slots=True)
class StatusChange:
    kind: str  # loadbalancer | listener | pool | member
    id: str
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class LbResult:
    """Where one LB stands after a converge: ``generation`` is the one this result is for."""

    lb_id: str
    generation: int | None
    provisioning_status: str  # ACTIVE | ERROR | DELETED
    operating: OperatingStatus
    reason: str = ""

    def flat(self) -> dict[tuple[str, str], str]:
        out = {("loadbalancer", self.lb_id): str(self.operating.loadbalancer)}
        out.update(self.operating.flat())
        return out


@dataclass(frozen=True, slots=True)
class Report:
    """A transition, for the host's report command: the new result and what changed in it."""

    host: str
    result: LbResult
    changes: tuple[StatusChange, ...] = field(default=())


class Reconciler:
    """Converges one host's load balancers; ``on_report`` receives transitions only."""

    def __init__(
        self,
        host_name: str,
        state_dir: str | os.PathLike[str],
        *,
        prefix: str = "spl-",
        on_report: Callable[[Report], Any] | None = None,
        workers: int = 16,
    ) -> None:
        self.host_name = host_name
        self.layout = HostLayout(state_dir=str(state_dir), prefix=prefix)
        self.on_report = on_report
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splice-agent")
        self._locks: dict[str, asyncio.Lock] = {}
        self._desired: dict[str, LoadBalancerSpec] = {}
        self._reported: dict[str, LbResult] = {}
        self._known: set[str] = set()  # LB ids converged at least once (for DELETED)
        Path(self.layout.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)

    # ------------------------------------------------------------------ public

    async def converge(self, desired: Mapping[str, LoadBalancerSpec]) -> dict[str, LbResult]:
        """Make the host match ``desired`` (the complete set for this host)."""
        self._desired = dict(desired)
        accepted, clashes = split_short_id_clashes(self._desired, self.layout)
        host = await self._run(netns.observe_host, self.layout.prefix)
        observed = Observed(self.layout, host.bridges, host.bridge_ports)
        await asyncio.gather(*(self._apply(op) for op in plan_bridges(accepted, observed)))
        shorts = {self.layout.short_id(i): i for i in self._desired}
        orphans = (self._lb_shorts(host) | self._state_shorts()) - set(shorts)
        tasks: list[Coroutine[Any, Any, LbResult | None]]
        tasks = [self._converge_lb(spec) for spec in accepted.values()]
        tasks += [self._remove_orphan(short) for short in sorted(orphans)]
        outcomes = await asyncio.gather(*tasks)
        results = {r.lb_id: r for r in outcomes if r is not None}
        for lb_id, reason in clashes.items():
            spec = self._desired[lb_id]
            results[lb_id] = LbResult(lb_id, spec.generation, ERROR, rollup(spec, None), reason)
        for lb_id in sorted(self._known - set(self._desired) - set(results)):
            results[lb_id] = _deleted(lb_id)
        self._known = (self._known | set(results)) - {
            i for i, r in results.items() if r.provisioning_status == DELETED
        }
        await self._cleanup_bridges(accepted)
        self._report(results)
        return results

    async def resync(self) -> dict[str, LbResult]:
        """Re-converge the last desired state: repairs drift and refreshes health states."""
        return await self.converge(self._desired)

    async def run_resync(self, interval_s: float, stop: asyncio.Event) -> None:
        """Resync every ``interval_s`` until ``stop`` is set; errors are logged, never fatal."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set():
                break
            try:
                await self.resync()
            except Exception:
                log.exception("resync failed")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ per LB

    def _lock(self, short: str) -> asyncio.Lock:
        return self._locks.setdefault(short, asyncio.Lock())

    async def _converge_lb(self, spec: LoadBalancerSpec) -> LbResult:
        short = self.layout.short_id(spec.id)
        async with self._lock(short):
            observed = await self._run(observe_lb, self.layout, short)
            ops = plan_lb(spec, observed, self.layout)
            try:
                for op in ops:
                    await self._apply(op)
            except Exception as exc:  # any step: the LB is in ERROR with the reason
                log.warning("converge failed", lb=spec.id, op=type(op).__name__, error=str(exc))
                stats = await self._run(haproxy.show_stat, LbPaths(self.layout.lb_dir(short)))
                return LbResult(spec.id, spec.generation, ERROR, rollup(spec, stats),
                                f"{type(op).__name__}: {exc}")
            stats = await self._run(haproxy.show_stat, LbPaths(self.layout.lb_dir(short)))
            return LbResult(spec.id, spec.generation, ACTIVE, rollup(spec, stats))

    async def _remove_orphan(self, short: str) -> LbResult | None:
        async with self._lock(short):
            observed = await self._run(observe_lb, self.layout, short)
            for op in plan_orphan(observed, self.layout):
                await self._apply(op)
        return _deleted(observed.lb_id) if observed.lb_id else None

    async def _cleanup_bridges(self, accepted: Mapping[str, LoadBalancerSpec]) -> None:
        host = await self._run(netns.observe_host, self.layout.prefix)
        observed = Observed(self.layout, host.bridges, host.bridge_ports)
        for op in plan_bridge_cleanup(accepted, observed):
            await self._apply(op)

    # ------------------------------------------------------------------ apply

    async def _apply(self, op: Op) -> None:
        if isinstance(op, EnsureBridge | DeleteBridge):
            async with self._lock(op.key):
                await self._run(apply_op, op, self.layout)
        else:
            await self._run(apply_op, op, self.layout)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------------ reports

    def _report(self, results: Mapping[str, LbResult]) -> None:
        for lb_id, result in sorted(results.items()):
            before = self._reported.get(lb_id)
            changes = _changes(before, result)
            if result.provisioning_status == DELETED:
                self._reported.pop(lb_id, None)
            else:
                self._reported[lb_id] = result
            if changes and self.on_report is not None:
                self.on_report(Report(self.host_name, result, changes))

    # ------------------------------------------------------------------ observation helpers

    def _lb_shorts(self, host: netns.HostLinks) -> set[str]:
        ns_prefix = self.layout.lb_namespace_prefix
        veth_prefix = self.layout.veth_prefix
        shorts = {n[len(ns_prefix):] for n in host.namespaces if n.startswith(ns_prefix)}
        shorts |= {v[len(veth_prefix):] for v in host.veth_master if v.startswith(veth_prefix)}
        return shorts

    def _state_shorts(self) -> set[str]:
        try:
            return {e.name for e in os.scandir(self.layout.state_dir) if e.is_dir()}
        except FileNotFoundError:
            return set()


def _deleted(lb_id: str) -> LbResult:
    return LbResult(lb_id, None, DELETED, OperatingStatus(Operating.OFFLINE))


def _changes(before: LbResult | None, after: LbResult) -> tuple[StatusChange, ...]:
    changes = []
    old_flat = before.flat() if before else {}
    new_flat = after.flat() if after.provisioning_status != DELETED else {}
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) != new_flat.get(key):
            changes.append(StatusChange(key[0], key[1], old_flat.get(key), new_flat.get(key)))
    same_head = before is not None and (before.provisioning_status, before.generation,
                                        before.reason) == (after.provisioning_status,
                                                           after.generation, after.reason)
    if not same_head:
        changes.insert(0, StatusChange("provisioning", after.lb_id,
                                       before.provisioning_status if before else None,
                                       after.provisioning_status))
    return tuple(changes)


# --------------------------------------------------------------------------- observe (blocking)


def observe_lb(layout: HostLayout, short: str) -> ObservedLB:
    """Everything ``plan_lb`` needs to know about one LB slot."""
    namespace = f"{layout.lb_namespace_prefix}{short}"
    paths = LbPaths(layout.lb_dir(short))
    inode = netns.namespace_inode(namespace)
    links = netns.observe_namespace(namespace, layout.ns_vip_ifname) if inode else None
    master = _host_veth_master(f"{layout.veth_prefix}{short}")
    pid = haproxy.running_master(paths, inode)
    rejected = _read(f"{paths.config}.rejected")
    return ObservedLB(
        short=short,
        namespace_exists=inode is not None,
        links=links,
        host_veth=master is not False,
        host_veth_master=master if isinstance(master, str) else None,
        haproxy_pid=pid,
        stray_netns_inode=_stray_inode(paths, inode) if pid is None else None,
        applied_digest=haproxy.applied_digest(paths) if pid else None,
        rejected_digest=digest(rejected) if rejected is not None else None,
        rejected_reason=_read(f"{paths.config}.rejected.reason") or "",
        state_dir=Path(paths.dir).is_dir(),
        lb_id=_read(f"{paths.dir}/{LB_ID_FILE}"),
    )


def _host_veth_master(name: str) -> str | bool | None:
    """The bridge a host-side veth is plugged into; ``None`` if loose, ``False`` if absent."""
    try:
        master = Path(f"/sys/class/net/{name}/master").resolve(strict=True)
        return master.name
    except FileNotFoundError:
        return None if Path(f"/sys/class/net/{name}").exists() else False


def _stray_inode(paths: LbPaths, inode: int | None) -> int | None:
    """Our recorded master is alive but in another namespace than the named one."""
    pid = haproxy.master_pid(paths)
    if pid is None:
        return None
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "haproxy":
            return None
        other = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
    return other if other != inode else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


# --------------------------------------------------------------------------- apply (blocking)


def apply_op(op: Op, layout: HostLayout) -> None:
    """Carry out one step; every step is idempotent."""
    match op:
        case EnsureBridge(name=name):
            netns.ensure_bridge(name)
        case DeleteBridge(name=name):
            netns.delete_link(name)
        case KillStrayHaproxy(netns_inode=inode):
            netns.kill_pids_with_inode(inode)
        case EnsureNamespace(namespace=namespace):
            netns.ensure_namespace(namespace)
        case EnsureVipLeg(leg=leg):
            netns.ensure_vip_leg(leg)
        case StartHaproxy():
            _start(op)
        case WriteConfigAndReload():
            _write_and_reload(op)
        case DeleteLoadBalancer():
            _delete(op)
        case RemoveOrphanNamespace(namespace=namespace, host_veth=veth):
            netns.kill_namespace_processes(namespace)
            netns.delete_namespace(namespace)
            netns.delete_link(veth)
        case ReportError(reason=reason):
            raise haproxy.ConfigRejectedError(reason)
        case _:
            raise TypeError(f"unknown op {op!r}")


def _write_config(lb_id: str, paths: LbPaths, config: str) -> None:
    Path(paths.dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    Path(f"{paths.dir}/{LB_ID_FILE}").write_text(lb_id)
    try:
        haproxy.write_checked(paths, config)
    except haproxy.ConfigRejectedError as exc:
        Path(f"{paths.config}.rejected.reason").write_text(f"haproxy -c refused: {exc}")
        raise


def _start(op: StartHaproxy) -> None:
    paths = LbPaths(op.dir)
    _write_config(op.lb_id, paths, op.config)
    netns.kill_namespace_processes(op.namespace)  # a worker whose master died holds the port
    haproxy.start(op.namespace, paths)
    haproxy.mark_applied(paths, op.config)


def _write_and_reload(op: WriteConfigAndReload) -> None:
    paths = LbPaths(op.dir)
    _write_config(op.lb_id, paths, op.config)
    haproxy.reload(paths)
    haproxy.mark_applied(paths, op.config)


def _delete(op: DeleteLoadBalancer) -> None:
    haproxy.stop(LbPaths(op.dir))
    netns.kill_namespace_processes(op.namespace)
    netns.delete_namespace(op.namespace)
    netns.delete_link(op.host_veth)
    shutil.rmtree(op.dir, ignore_errors=True)
