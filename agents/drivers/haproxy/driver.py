"""The haproxy driver: observe the host, ``plan(desired, observed)``, apply — level-triggered.

``converge(desired)`` takes the *whole* desired state of the host's haproxy load balancers (LB
id → spec; the agent rebuilds it from the event stream), observes what the host holds, asks the
pure `plan.plan` for the steps (the very function the table tests pin), and applies them: bridges
first, then each LB's steps in order — one LB's steps serialised, different LBs in parallel —
then the bridges nothing uses any more. One converge runs at a time. Blocking netlink, file and
process calls run in a thread pool so the event loop stays free. ``resync()`` repeats the last
converge (drift repair: a killed haproxy, a deleted namespace) and re-reads haproxy's health
states; ``run_resync(interval)`` does so on a timer.

Each converge returns one :class:`LbResult` per desired (or just deleted) LB, and calls
``on_report`` only for results that changed since the last report: provisioning status,
generation, reason, or any listener/pool/member operating status.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from pyroute2 import IPRoute

from splice.agents import netns
from splice.agents.drivers import resync_every
from splice.agents.drivers.haproxy import process as haproxy
from splice.agents.drivers.haproxy.plan import (
    DeleteBridge,
    DeleteLoadBalancer,
    EnsureBridge,
    EnsureNamespace,
    EnsureVipLeg,
    KillStrayHaproxy,
    LbOp,
    Observed,
    ObservedLB,
    Op,
    RemoveOrphanNamespace,
    ReportError,
    StartHaproxy,
    WriteConfigAndReload,
    plan,
    split_short_id_clashes,
)
from splice.agents.drivers.haproxy.render import LbPaths, digest
from splice.agents.drivers.haproxy.stats import collect as collect_stats
from splice.agents.drivers.haproxy.status import rollup
from splice.agents.drivers.reports import (
    ACTIVE,
    ERROR,
    LbResult,
    Ledger,
    Report,
)
from splice.agents.model import HostLayout, LoadBalancerSpec
from splice.agents.stats import LbStats

log = structlog.get_logger(__name__)

MAX_SOCKET_PATH = 97  # haproxy's limit on a unix socket's path (sun_path, less its own margin)
LB_ID_FILE = "lb-id"


class HaproxyDriver:
    """Converges one host's haproxy load balancers; ``on_report`` receives transitions only."""

    provider = "haproxy"
    keep_bridges: frozenset[str] = frozenset()  # the other drivers' (set by the agent)

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
        longest = LbPaths(self.layout.lb_dir("0" * 8)).master_socket
        if len(longest.encode()) > MAX_SOCKET_PATH:  # haproxy will refuse to start: say why now
            log.warning("state directory too long for haproxy's sockets: use a shorter one",
                        state_dir=str(state_dir), socket=longest, limit=MAX_SOCKET_PATH)
        self.on_report = on_report
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splice-agent")
        self._converging = asyncio.Lock()
        self._desired: dict[str, LoadBalancerSpec] = {}
        self._ledger = Ledger(host_name)
        Path(self.layout.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)

    # ------------------------------------------------------------------ public

    async def observe(self, desired: Mapping[str, LoadBalancerSpec]) -> Observed:
        """Bridges, and every LB slot that is wanted or carries our prefix (namespace, veth or
        state directory)."""
        host = await self._run(netns.observe_host, self.layout.prefix)
        hosts = {self.layout.short_id(i): s.hosted_in for i, s in desired.items()}
        shorts = set(hosts) | self._lb_shorts(host) | self._state_shorts()
        found = await asyncio.gather(*(self._run(observe_lb, self.layout, s, hosts.get(s))
                                       for s in sorted(shorts)))
        return Observed(self.layout, host.bridges, host.bridge_ports,
                        {lb.short: lb for lb in found})

    def plan(self, desired: Mapping[str, LoadBalancerSpec], observed: Observed) -> list[Op]:
        return plan(desired, observed, self.keep_bridges)

    async def converge(self, desired: Mapping[str, LoadBalancerSpec]) -> dict[str, LbResult]:
        """Make the host match ``desired`` (the complete set for this host)."""
        async with self._converging:
            self._desired = dict(desired)
            observed = await self.observe(self._desired)
            accepted, clashes = split_short_id_clashes(self._desired, self.layout)
            failures = await self._apply_all(self.plan(self._desired, observed), accepted)
            results = await self._results(failures, accepted, clashes)
            for report in self._ledger.close(results, self._desired):
                if self.on_report is not None:
                    self.on_report(report)
            return results

    async def resync(self) -> dict[str, LbResult]:
        """Re-converge the last desired state: repairs drift and refreshes health states."""
        return await self.converge(self._desired)

    async def run_resync(self, interval_s: float, stop: asyncio.Event) -> None:
        """Resync every ``interval_s`` until ``stop`` is set; errors are logged, never fatal."""
        await resync_every(interval_s, stop, self.resync, "haproxy")

    async def stats(self) -> dict[str, LbStats]:
        """The counters of every load balancer it serves (`stats`: from ``show stat``)."""
        return await collect_stats(self)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ apply

    async def _apply_all(self, ops: list[Op],
                         accepted: Mapping[str, LoadBalancerSpec]) -> dict[str, str]:
        """Apply the plan; returns, by LB id, why its steps stopped (absent: all done)."""
        owner = {self.layout.short_id(i): i for i in accepted}
        per_lb: dict[str, list[Op]] = {}
        for op in ops:
            if isinstance(op, ReportError):  # said of one LB (a clash names the loser)
                per_lb.setdefault(op.lb_id, []).append(op)
            elif isinstance(op, LbOp):
                per_lb.setdefault(owner.get(op.short, op.key), []).append(op)
        bridges = [op for op in ops if isinstance(op, EnsureBridge)]
        await asyncio.gather(*(self._run(apply_op, op, self.layout) for op in bridges))
        outcomes = await asyncio.gather(*(self._apply_lb(steps) for steps in per_lb.values()))
        for op in ops:
            if isinstance(op, DeleteBridge):
                await self._run(apply_op, op, self.layout)
        return {lb: why for lb, why in zip(per_lb, outcomes, strict=True) if why}

    async def _apply_lb(self, steps: list[Op]) -> str:
        """One LB's steps in order; the first that fails stops them, and says why."""
        made: set[str] = set()  # namespaces these steps created: nothing runs in them yet
        for op in steps:
            if isinstance(op, ReportError):
                return op.reason
            try:
                await self._run(apply_op, op, self.layout, getattr(op, "namespace", None) in made)
                if isinstance(op, EnsureNamespace):
                    made.add(op.namespace)
            except Exception as exc:
                log.warning("converge failed", lb=getattr(op, "lb_id", None) or op.key,
                            op=type(op).__name__, error=str(exc))
                return f"{type(op).__name__}: {exc}"
        return ""

    async def _results(self, failures: Mapping[str, str], accepted: Mapping[str, LoadBalancerSpec],
                       clashes: Mapping[str, str]) -> dict[str, LbResult]:
        """One result per desired LB (ACTIVE, or ERROR with the reason), DELETED for the gone."""

        async def result(spec: LoadBalancerSpec) -> LbResult:
            why = failures.get(spec.id, "")
            stats = await self._run(haproxy.show_stat,
                                    LbPaths(self.layout.lb_dir(self.layout.short_id(spec.id))))
            return LbResult(spec.id, spec.generation, ERROR if why else ACTIVE,
                            rollup(spec, stats), why)

        found = await asyncio.gather(*(result(spec) for spec in accepted.values()))
        results = {r.lb_id: r for r in found}
        for lb_id, reason in clashes.items():
            spec = self._desired[lb_id]
            results[lb_id] = LbResult(lb_id, spec.generation, ERROR, rollup(spec, None), reason)
        return results

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------------ reports

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


# --------------------------------------------------------------------------- observe (blocking)


def observe_lb(layout: HostLayout, short: str, hosted_in: str | None = None) -> ObservedLB:
    """Everything ``plan_lb`` needs to know about one LB slot (`hosted_in`: the router
    namespace a routed LB runs in, whose links are the router driver's business)."""
    namespace = hosted_in or f"{layout.lb_namespace_prefix}{short}"
    paths = LbPaths(layout.lb_dir(short))
    inode = netns.namespace_inode(namespace)
    links = (netns.observe_namespace(namespace, layout.ns_vip_ifname)
             if inode and hosted_in is None else None)
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
    """The bridge a host-side veth is plugged into; ``None`` if loose, ``False`` if absent.
    Netlink, not /sys: an agent rooted in a host namespace (`--netns`) shares the machine's
    /sys, which shows the root namespace's devices."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        (link,) = ipr.get_links(found[0])
        master = link.get_attr("IFLA_MASTER")
        if not master:
            return None
        return str(ipr.get_links(master)[0].get_attr("IFLA_IFNAME"))


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


def apply_op(op: Op, layout: HostLayout, new_namespace: bool = False) -> None:
    """Carry out one step; every step is idempotent. `new_namespace`: the step's namespace
    was created by an earlier step of the same LB, in this converge."""
    match op:
        case EnsureBridge(name=name):
            netns.ensure_bridge(name)
        case DeleteBridge(name=name):
            netns.delete_unused_bridge(name)
        case KillStrayHaproxy(netns_inode=inode):
            netns.kill_pids_with_inode(inode)
        case EnsureNamespace(namespace=namespace):
            netns.ensure_namespace(namespace)
        case EnsureVipLeg(leg=leg):
            netns.ensure_vip_leg(leg)
        case StartHaproxy():
            _start(op, new_namespace)
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


def _start(op: StartHaproxy, new_namespace: bool = False) -> None:
    paths = LbPaths(op.dir)
    _write_config(op.lb_id, paths, op.config)
    if op.hosted:  # a worker whose master died holds the port; the router's others stay
        haproxy.kill_leftovers(op.namespace, paths)
    elif not new_namespace:  # finding them reads all of /proc: ~19 ms with 2,000 processes
        netns.kill_namespace_processes(op.namespace)
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
