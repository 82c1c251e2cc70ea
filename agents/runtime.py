"""The host agent: from the event stream to the desired state of this host, and back as reports.

`Agent.run()`:

* registers the host with the providers it has drivers for (`host.register`), then heartbeats
  on core NATS (`splice.hb.<host>`, every 2 s: liveness is not an event);
* follows the load-balancer, router and network events (`splice.events.follow`: resumable) and folds
  them with the very fold the command side applies (`splice.events.lbaas_fold`). An event that
  cannot be decoded or applied is set aside (logged, kept in the follower's `set_aside`,
  counted in ``splice_events_set_aside_total{reader="agent"}``) and changes nothing: an event
  is applied to a copy of the load balancer's state, which replaces the state only once the
  whole event applied, so the host keeps serving what it served and the agent goes on;
* keeps a snapshot of those states and the stream position in its state directory, so a
  restart resumes from where it stopped instead of replaying the whole history;
* level-triggered: any event only marks the host dirty; the converge loop then computes the
  complete desired set for this host (load balancers placed here and not being deleted), hands
  each provider's share to that provider's driver, and reports: the generation converged
  (ACTIVE, or ERROR with the reason), DELETED once a load balancer being deleted is gone from
  the host, and operating status transitions. Reports are commands on
  ``splice.cmd._host.loadbalancer.*``. A load balancer of a provider without a driver here is
  reported ERROR, never served by another driver;
* what each driver must serve comes from `agents.desired` (pure): a load balancer routed on a
  router runs in that router's namespace, which the router driver (converged first) makes and
  where it holds the VIP;
* routers (when the agent offers `ROUTER_PROVIDER`): those the scheduler placed on this host
  (their `ServiceScheduled` event, folded by `splice.events.router_fold`) are handed to the
  router driver, which makes their namespaces, legs, routes and SNAT tables; a router's
  trouble is logged (routers have no status report on the wire yet). Firewalls and NAT are
  folded too (`splice.events.advanced_fold`): those routed on a router placed here become
  tables in its namespace (`drivers.router.routed`);
* taps (when the agent offers ``tc-mirror``): the standalone taps placed on this host, with the
  ports they use (`splice.events.port_fold`: the host each port is bound to), are handed to the
  tap driver (`desired.desired_taps`), which mirrors with tc. A compute port bound to this host
  is plugged by whoever runs the machine (as Nova does for Neutron); its host-side interface,
  in the root namespace, is named as Neutron names it: ``tap`` + the first 11 characters of the
  port id (`drivers.tap.port_interface`); a tap it cannot serve is logged
  with the reason (taps have no status report on the wire) and tried again on resync. The
  folds and the snapshot are `agents.folds`';
* chains (with the router driver): the chains of the routers placed here are steered in their
  namespaces by the chain driver (`drivers.chain`, converged after the router driver), from
  `desired.desired_chains`; a chain it does not steer is logged with the reason;
* a resync timer re-converges the last desired set to repair drift;
* every `stats_s` it reads the load balancers' counters (`agents.stats`: metrics, and answers
  on ``splice.stats.<tenant>.<host>.<lb>``), never as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from splice.events import contracts as c
from splice.events import metrics, subjects
from splice.events.advanced_fold import FirewallState, NatState, TapState
from splice.events.chain_fold import ChainState
from splice.events.follow import Delivery, Follower
from splice.events.lbaas_fold import LoadBalancerState, apply
from splice.events.natsclient import connect
from splice.events.port_fold import PortState
from splice.events.router_fold import ROUTER_PROVIDER, RouterState

from . import stats
from .desired import (
    Folds,
    desired_chains,
    desired_lbs,
    desired_routers,
    desired_segments,
    desired_taps,
    public,
    tenant,
)
from .drivers import drivers
from .drivers.chain.driver import ChainDriver
from .drivers.overlay.driver import OverlayDriver
from .drivers.reports import LbResult, Report
from .drivers.router import RouterDriver, RouterSpec
from .drivers.tap import PROVIDER as TAP_PROVIDER
from .drivers.tap import TapDriver
from .folds import FOLDS, HostInfo, Snapshot, copy_for_apply, fold_host, fold_into
from .liveness import Liveness
from .model import LoadBalancerSpec

log = structlog.get_logger("splice.agent")

SUBJECTS = [subjects.events_of("loadbalancer"), subjects.events_of("network"),
            subjects.events_of("router"), subjects.events_of("firewall"),
            subjects.events_of("nat"), subjects.events_of("tap"), subjects.events_of("port"),
            subjects.events_of("chain"), subjects.events_of("hosts", tenant=subjects.ADMIN)]
_decoders = {name: msgspec.json.Decoder(t) for name, t in c.EVENT_TYPES.items()}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: str) -> str:
    """A reason as the report's contract takes it: no line breaks or control characters
    (haproxy's own words come on several lines)."""
    return _CONTROL.sub(" ", text).strip()


class Agent:
    """One host's agent (see the module's docstring)."""

    def __init__(
        self,
        nats_url: str,
        host: str,
        state_dir: str | os.PathLike[str],
        *,
        providers: Iterable[str] = ("haproxy",),
        prefix: str = "spl-",
        resync_s: float = 30.0,
        nc: Any = None,
        js_prefix: str | None = None,
        underlay_ip: str | None = None,
        stats_s: float = stats.DEFAULT_INTERVAL_S,
    ) -> None:
        """`nc`: the process's NATS connection (left open on stop); without it, one of its own.
        `js_prefix`: the JetStream API as a host's account imports it (None: the services').
        `underlay_ip`: this host's address on the underlay, registered with the host, where
        the other hosts send its networks' VXLAN traffic (None: the host joins no tunnel)."""
        self.nats_url, self.host = nats_url, host
        self.js_prefix = js_prefix
        self._shared_nc = nc
        self.providers = sorted(set(providers))
        # An agent offers exactly the providers it has drivers for (the scheduler places by
        # them); a service of any other provider placed here is reported ERROR.
        known = drivers()
        unknown = [p for p in self.providers if p not in known and p != ROUTER_PROVIDER]
        if unknown:
            raise ValueError(f"no host driver for provider(s) {', '.join(unknown)}: "
                             f"this agent offers {', '.join(sorted([*known, ROUTER_PROVIDER]))}")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.snapshot_path = self.state_dir / f"agent-{host}.json"
        self.resync_s = resync_s
        # a state directory per driver (haproxy's keeps its historical name)
        made = {p: known[p](host, self.state_dir / ("lb" if p == "haproxy" else p),
                            prefix=prefix, on_report=self._on_report)
                for p in self.providers if p != ROUTER_PROVIDER}
        self.tap_driver: TapDriver | None = made.pop(TAP_PROVIDER, None)  # type: ignore[assignment]
        self.drivers = made  # the load balancers' drivers
        self.prefix = prefix
        self.router_driver = (RouterDriver(host, prefix=prefix)
                              if ROUTER_PROVIDER in self.providers else None)
        self.chain_driver = (ChainDriver(host, prefix=prefix)
                             if ROUTER_PROVIDER in self.providers else None)
        self.underlay_ip = underlay_ip
        self.overlay = OverlayDriver(prefix=prefix, underlay_ip=underlay_ip)
        self.segments: dict[str, int] = {}  # network aggregate id -> VNI
        self.hosts: dict[str, HostInfo] = {}  # by host name
        self.liveness = Liveness(host, {"providers": self.providers, **(
            {"underlay_ip": underlay_ip} if underlay_ip else {})}, self._command,
            self.overlay.fence, lambda: self._dirty.set())
        self.routers: dict[str, RouterState] = {}  # by aggregate id
        self.firewalls: dict[str, FirewallState] = {}  # by aggregate id
        self.nats: dict[str, NatState] = {}  # by aggregate id
        self.taps: dict[str, TapState] = {}  # by aggregate id
        self.ports: dict[str, PortState] = {}  # by aggregate id
        self.chains: dict[str, ChainState] = {}  # by aggregate id
        self.lbs: dict[str, LoadBalancerState] = {}  # by aggregate id
        self.networks: dict[str, tuple[str, str]] = {}
        self.seq = 0
        self._dirty = asyncio.Event()
        self._reported: dict[str, tuple[int, str]] = {}
        self._nc: Any = None
        self._pending_reports: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self.converges = 0
        self.follower: Follower | None = None  # its `set_aside` lists the events set aside
        self.stats = stats.Book(host, stats_s)  # the latest per-service counters
        self.load_snapshot()  # resume where the last run stopped

    # -- snapshot ---------------------------------------------------------------------------

    def load_snapshot(self) -> None:
        if not self.snapshot_path.exists():
            return
        try:
            snap = msgspec.json.decode(self.snapshot_path.read_bytes(), type=Snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("snapshot unreadable: replaying the history instead", error=str(e))
            return
        if set(SUBJECTS) - set(snap.followed):  # written before this agent followed them all
            log.info("snapshot predates some followed events: replaying the history instead")
            return
        self.seq, self.networks, self.lbs = snap.seq, dict(snap.networks), dict(snap.lbs)
        self.routers, self.firewalls, self.nats = dict(snap.routers), dict(snap.firewalls), dict(snap.nats)
        self.taps, self.ports, self.chains = dict(snap.taps), dict(snap.ports), dict(snap.chains)
        self.segments, self.hosts = dict(snap.segments), dict(snap.hosts)

    def save_snapshot(self) -> None:
        data = msgspec.json.encode(Snapshot(seq=self.seq, followed=SUBJECTS, lbs=self.lbs,
                                             networks=self.networks, routers=self.routers,
                                             firewalls=self.firewalls, nats=self.nats,
                                             taps=self.taps, ports=self.ports,
                                             chains=self.chains, segments=self.segments,
                                             hosts=self.hosts))
        tmp = self.snapshot_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)

    # -- the stream -------------------------------------------------------------------------

    async def on_event(self, d: Delivery) -> None:
        """One event of the stream: fold it (a bad one raises, and the follower sets it aside)."""
        self.seq = d.seq
        where = subjects.parse_event(d.subject)
        decoder = _decoders.get(d.topic)
        if where is None or decoder is None:
            return
        payload = decoder.decode(d.data)
        agg_id = where.aggregate_id
        if where.aggregate == "network":
            if isinstance(payload, c.NetworkCreated):
                self.networks[agg_id] = (payload.cidr, payload.gateway)
                self.segments[agg_id] = getattr(payload, "segmentation_id", 0)
            elif isinstance(payload, c.NetworkDeleted):
                self.networks.pop(agg_id, None)
                self.segments.pop(agg_id, None)
        elif where.aggregate == "hosts":
            fold_host(self.hosts, d.topic, payload)
            task = self.liveness.on_host_event(d.topic, getattr(payload, "host", ""),
                                               getattr(payload, "command_id", None))
            if task is not None:
                self._pending_reports.add(task)
                task.add_done_callback(self._pending_reports.discard)
        elif where.aggregate == "loadbalancer":
            before = self.lbs.get(agg_id)
            state = LoadBalancerState() if before is None else copy_for_apply(before)
            apply(state, payload)  # raises on a bad event: `self.lbs` is untouched then
            if state.deleted:
                self.lbs.pop(agg_id, None)
                self._reported.pop(agg_id, None)
            else:
                self.lbs[agg_id] = state
        elif where.aggregate in FOLDS:  # raises on a bad event: the fold is untouched then
            fold_into(getattr(self, FOLDS[where.aggregate][0]), where.aggregate, agg_id, payload)
        self._dirty.set()

    def _caught_up(self, _position: int) -> None:
        self.ready.set()
        self._dirty.set()

    async def _consume(self, stop: asyncio.Event) -> None:
        js = self._nc.jetstream(prefix=self.js_prefix) if self.js_prefix else self._nc.jetstream()
        self.follower = Follower(js, SUBJECTS, self.on_event, after=self.seq,
                                 name=f"agent-{self.host}", on_caught_up=self._caught_up,
                                 reader="agent")
        await self.follower.run(stop)

    # -- converging -------------------------------------------------------------------------

    def folds(self) -> Folds:
        return Folds(self.lbs, self.networks, self.routers, self.firewalls, self.nats,
                     self.taps, self.ports, self.chains, self.segments, self.hosts)

    def desired(self) -> dict[str, dict[str, LoadBalancerSpec]]:
        """What each driver must serve here (`desired.desired_lbs`); a load balancer placed
        here that this host cannot serve is reported ERROR with the reason."""
        out, refused = desired_lbs(self.folds(), self.host, self.drivers, prefix=self.prefix,
                                   routing=self.router_driver is not None)
        for agg_id, why in refused.items():
            self._send_later(self._report(agg_id, why.generation, "ERROR", why.reason))
        return out

    def desired_routers(self) -> dict[str, RouterSpec]:
        return desired_routers(self.folds(), self.host, prefix=self.prefix)

    async def converge(self) -> tuple[set[str], dict[str, LbResult]]:
        """Converge every driver; returns the ids of the load balancers that were desired,
        and their results (the router driver's trouble is logged by it)."""
        routers = self.desired_routers() if self.router_driver is not None else {}
        desired = self.desired()
        bridges = {p: frozenset(s.network.bridge_name(self.prefix) for s in specs.values()
                                if s.hosted_in is None) for p, specs in desired.items()}
        bridges[ROUTER_PROVIDER] = frozenset().union(*(r.bridges for r in routers.values()))
        segments = desired_segments(self.folds(), self.host,
                                    frozenset().union(*bridges.values()), prefix=self.prefix)
        bridges["overlay"] = frozenset(s.bridge for s in segments.values())
        everyone = frozenset().union(*bridges.values())
        if not self.liveness.fenced:  # first: a leg's first gratuitous ARP must reach the others
            await self.overlay.converge(segments, set(segments))
        if self.router_driver is not None:  # first: routed load balancers run in its namespaces
            self.router_driver.keep_bridges = everyone - bridges[ROUTER_PROVIDER]
            await self.router_driver.converge(routers)
        if self.chain_driver is not None:  # then: chains steer in the routers' namespaces
            await self.chain_driver.converge(*desired_chains(self.folds(), self.host,
                                                             prefix=self.prefix))
        if self.tap_driver is not None:
            taps, refused = desired_taps(self.folds(), self.host, (TAP_PROVIDER,))
            await self.tap_driver.converge(taps, refused)  # it logs what it cannot serve
        results: dict[str, LbResult] = {}
        for provider, driver in self.drivers.items():
            driver.keep_bridges = everyone - bridges[provider]
            results.update(await driver.converge(desired[provider]))
        return {i for wanted in desired.values() for i in wanted}, results

    async def _converge_loop(self, stop: asyncio.Event) -> None:
        await self.ready.wait()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=1.0)
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            try:
                with metrics.CONVERGE_SECONDS.time():
                    wanted, results = await self.converge()
            except Exception:
                metrics.CONVERGE_ERRORS.inc()
                log.exception("converge failed; retrying on the next change or resync")
                await asyncio.sleep(1)
                self._dirty.set()
                continue
            self.converges += 1
            await self._report_results(wanted, results)
            self.save_snapshot()

    async def _resync(self, stop: asyncio.Event) -> None:
        loops = [d.run_resync(self.resync_s, stop) for d in self.drivers.values()]
        for extra in (self.router_driver, self.chain_driver, self.tap_driver, self.overlay):
            if extra is not None:
                loops.append(extra.run_resync(self.resync_s, stop))
        await asyncio.gather(*loops)

    async def _report_results(self, wanted: set[str], results: dict[str, LbResult]) -> None:
        """Report what this converge did: the generation it served (not a newer one that came
        in meanwhile), and DELETED only for what it was asked to remove."""
        by_uuid = {public(agg_id): (agg_id, s) for agg_id, s in self.lbs.items()}
        for lb_uuid, result in results.items():
            if lb_uuid not in wanted or lb_uuid not in by_uuid or result.generation is None:
                continue
            if result.provisioning_status in ("ACTIVE", "ERROR"):
                await self._report(by_uuid[lb_uuid][0], result.generation,
                                   result.provisioning_status, result.reason)
        for lb_uuid, (agg_id, state) in by_uuid.items():  # converged away from this host
            if (lb_uuid not in wanted and state.host == self.host
                    and state.provisioning_status == "PENDING_DELETE"):
                await self._report(agg_id, state.generation, "DELETED", "")

    async def _report(self, agg_id: str, generation: int, status: str, reason: str) -> None:
        key = (generation, status)
        if self._reported.get(agg_id) == key:
            return
        state = self.lbs.get(agg_id)
        if (status == "ACTIVE" and state is not None and state.converged >= generation
                and state.provisioning_status == "ACTIVE"):
            self._reported[agg_id] = key
            return
        body = {
            "command_id": f"report-{self.host}-{public(agg_id)}-{generation}-{status}",
            "actor": f"agent:{self.host}", "tenant": tenant(agg_id),
            "loadbalancer_id": public(agg_id), "host": self.host,
            "generation": generation, "status": status, "reason": one_line(reason)[:255],
        }
        if await self._command(subjects.command(subjects.HOSTS, "loadbalancer", "report"), body):
            self._reported[agg_id] = key

    def _on_report(self, report: Report) -> None:
        """Operating status transitions from a driver: one command each."""
        if not report.changes or report.result.provisioning_status == "DELETED":
            return  # a removed load balancer has no operating status left to report
        agg_id = next((a for a in self.lbs if public(a) == report.result.lb_id), None)
        if agg_id is None:
            return
        body: dict[str, Any] = {
            "command_id": str(uuid.uuid4()), "actor": f"agent:{self.host}", "tenant": tenant(agg_id),
            "loadbalancer_id": report.result.lb_id, "host": self.host,
            "listeners": {}, "pools": {}, "members": {},
        }
        for change in report.changes:
            if change.new is None:
                continue
            if change.kind == "loadbalancer":
                body["loadbalancer"] = change.new
            elif change.kind in ("listener", "pool", "member"):
                body[change.kind + "s"][change.id] = change.new
        self._send_later(self._command(
            subjects.command(subjects.HOSTS, "loadbalancer", "report_status"), body))

    def _send_later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending_reports.add(task)
        task.add_done_callback(self._pending_reports.discard)

    async def _command(self, subject: str, body: dict[str, Any]) -> bool:
        try:
            msg = await self._nc.request(subject, json.dumps(body).encode(), timeout=10)
        except Exception as e:
            log.warning("report not delivered", subject=subject, error=str(e))
            self._dirty.set()
            return False
        reply = json.loads(msg.data)
        if not reply.get("ok"):
            log.warning("report refused", subject=subject, error=reply.get("error"))
            return reply.get("error", {}).get("code") != "unavailable"
        return True

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.overlay.fence()  # until registered again and caught up (`liveness`)
        self._nc = self._shared_nc or await connect(
            self.nats_url, name=f"splice-agent-{self.host}",
            max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        try:
            registered = await self.liveness.register()
            log.info("agent started", host=self.host, registered=registered, resume_from=self.seq)
            tasks = [
                asyncio.create_task(self.liveness.heartbeats(self._nc, stop)),
                asyncio.create_task(self.liveness.watch_connection(self._nc, stop)),
                asyncio.create_task(self._consume(stop)),
                asyncio.create_task(self._converge_loop(stop)),
                asyncio.create_task(self._resync(stop)),
                asyncio.create_task(stats.run_agent(self, stop)),
            ]
            await stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            with contextlib.suppress(Exception):
                self.save_snapshot()
            if self._pending_reports:
                await asyncio.gather(*self._pending_reports, return_exceptions=True)
            if self._shared_nc is None:
                with contextlib.suppress(Exception):
                    await self._nc.drain()
            for driver in self.drivers.values():
                driver.close()
            for extra in (self.router_driver, self.chain_driver, self.tap_driver, self.overlay):
                if extra is not None:
                    extra.close()
