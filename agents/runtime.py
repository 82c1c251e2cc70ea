"""The host agent: from the event stream to the desired state of this host, and back as reports.

`Agent.run()`:

* registers the host and its providers (`host.register`), then heartbeats on core NATS
  (`splice.hb.<host>`, every 2 s: liveness is not an event);
* folds the load-balancer and network events of the stream (server-side subject filters) into
  views — the same fold the command side applies (`splice.events.lbfold`);
* keeps a snapshot of those views and the stream position in its state directory, so a restart
  resumes from where it stopped instead of replaying the whole history;
* level-triggered: any event only marks the host dirty; the converge loop then computes the
  complete desired set for this host (load balancers placed here and not being deleted),
  hands it to the `Reconciler`, and reports: the generation converged (ACTIVE, or ERROR with
  the reason), DELETED once a load balancer being deleted is gone from the host, and operating
  status transitions. Reports are commands on ``splice.cmd._host.loadbalancer.*``;
* a resync timer re-converges the last desired set to repair drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import nats
import structlog
from nats.js.api import ConsumerConfig, DeliverPolicy

from splice.events import contracts as c
from splice.events.lbfold import LoadBalancerView

from .converge import Reconciler, Report
from .model import (
    Algorithm,
    CompareType,
    HealthMonitorSpec,
    HttpMethod,
    L7Action,
    L7PolicySpec,
    L7RuleSpec,
    L7RuleType,
    ListenerSpec,
    LoadBalancerSpec,
    MemberSpec,
    MonitorType,
    NetworkSpec,
    PersistenceType,
    PoolSpec,
    Protocol,
    SessionPersistenceSpec,
    SpecError,
)

log = structlog.get_logger("splice.agent")

HEARTBEAT_S = 2.0
SUBJECTS = ["splice.evt.*.loadbalancer.>", "splice.evt.*.network.>"]
STREAM = "SPLICE_EVENTS"
_decoders = {name: msgspec.json.Decoder(t) for name, t in c.EVENT_TYPES.items()}


class LBState(msgspec.Struct, kw_only=True):
    """What the snapshot keeps of a load balancer view."""

    id: str
    tenant: str
    name: str
    description: str
    vip_network_id: str
    vip_address: str
    vip_port_id: str
    insertion: c.InsertionState
    admin_state_up: bool
    listeners: dict[str, c.Listener]
    pools: dict[str, c.Pool]
    generation: int
    converged: int
    provisioning_status: str
    operating_status: str
    statuses: dict[str, str]
    host: str | None
    error: str
    deleted: bool = False


class Snapshot(msgspec.Struct, kw_only=True):
    seq: int = 0
    lbs: dict[str, LBState] = {}
    networks: dict[str, tuple[str, str]] = {}  # network agg id -> (cidr, gateway)


def to_spec(view: LoadBalancerView, network: tuple[str, str]) -> LoadBalancerSpec:
    """The reconciler's plain, validated input for one load balancer."""

    def hm(h: c.HealthMonitor | None) -> HealthMonitorSpec | None:
        if h is None or not h.admin_state_up:
            return None
        return HealthMonitorSpec(
            type=MonitorType(h.type), delay=h.delay, timeout=h.timeout, max_retries=h.max_retries,
            max_retries_down=h.max_retries_down, http_method=HttpMethod(h.http_method),
            url_path=h.url_path, expected_codes=h.expected_codes,
        )

    pools = tuple(
        PoolSpec(
            id=p.id, protocol=Protocol(p.protocol), lb_algorithm=Algorithm(p.lb_algorithm),
            members=tuple(
                MemberSpec(id=m.id, address=m.address, protocol_port=m.protocol_port, weight=m.weight,
                           backup=m.backup, admin_state_up=m.admin_state_up, name=m.name or "")
                for m in p.members
            ),
            healthmonitor=hm(p.healthmonitor),
            session_persistence=(
                SessionPersistenceSpec(type=PersistenceType(p.session_persistence.type),
                                       cookie_name=p.session_persistence.cookie_name)
                if p.session_persistence else None
            ),
            admin_state_up=p.admin_state_up, name=p.name,
        )
        for p in view.pools.values()
    )
    listeners = tuple(
        ListenerSpec(
            id=li.id, protocol=Protocol(li.protocol), port=li.protocol_port,
            default_pool_id=li.default_pool_id, connection_limit=li.connection_limit,
            timeout_client_data_ms=li.timeout_client_data,
            timeout_member_connect_ms=li.timeout_member_connect,
            timeout_member_data_ms=li.timeout_member_data,
            l7policies=tuple(
                L7PolicySpec(
                    id=p.id, position=p.position, action=L7Action(p.action),
                    rules=tuple(L7RuleSpec(type=L7RuleType(r.type), compare_type=CompareType(r.compare_type),
                                           value=r.value, key=r.key, invert=r.invert) for r in p.rules),
                    redirect_pool_id=p.redirect_pool_id, redirect_url=p.redirect_url,
                    admin_state_up=p.admin_state_up, name=p.name or "",
                )
                for p in li.l7policies
            ),
            admin_state_up=li.admin_state_up, name=li.name,
        )
        for li in view.listeners.values()
    )
    cidr, gateway = network
    return LoadBalancerSpec(
        id=view.id.rsplit(".", 1)[1], generation=view.generation,
        network=NetworkSpec(id=view.vip_network_id, cidr=cidr, gateway=gateway),
        vip_address=view.vip_address, listeners=listeners, pools=pools,
        admin_state_up=view.admin_state_up, name=view.name,
    )


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
    ) -> None:
        self.nats_url, self.host = nats_url, host
        self.providers = sorted(set(providers))
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.snapshot_path = self.state_dir / f"agent-{host}.json"
        self.resync_s = resync_s
        self.reconciler = Reconciler(host, self.state_dir / "lb", prefix=prefix, on_report=self._on_report)
        self.views: dict[str, LoadBalancerView] = {}
        self.networks: dict[str, tuple[str, str]] = {}
        self.seq = 0
        self._dirty = asyncio.Event()
        self._reported: dict[str, tuple[int, str]] = {}
        self._nc: Any = None
        self._pending_reports: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self.converges = 0
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
        self.seq = snap.seq
        self.networks = dict(snap.networks)
        for lb_id, state in snap.lbs.items():
            view = LoadBalancerView(lb_id, state.tenant)
            view.__dict__.update(msgspec.structs.asdict(state))
            view.chains = set()
            self.views[lb_id] = view

    def save_snapshot(self) -> None:
        lbs = {
            lb_id: msgspec.convert(
                {f: getattr(v, f, None) for f in LBState.__struct_fields__}, LBState,
                from_attributes=True,
            )
            for lb_id, v in self.views.items()
            if not v.deleted
        }
        data = msgspec.json.encode(Snapshot(seq=self.seq, lbs=lbs, networks=self.networks))
        tmp = self.snapshot_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)

    # -- the stream -------------------------------------------------------------------------

    def apply(self, subject: str, topic: str, data: bytes, seq: int) -> None:
        tokens = subject.split(".")
        tenant, aggregate, ident = tokens[2], tokens[3], tokens[4]
        agg_id = f"{tenant}.{aggregate}.{ident}"
        decoder = _decoders.get(topic)
        if decoder is None:
            return
        payload = decoder.decode(data)
        if aggregate == "network":
            if isinstance(payload, c.NetworkCreated):
                self.networks[agg_id] = (payload.cidr, payload.gateway)
            elif isinstance(payload, c.NetworkDeleted):
                self.networks.pop(agg_id, None)
        elif aggregate == "loadbalancer":
            view = self.views.get(agg_id)
            if view is None:
                view = self.views[agg_id] = LoadBalancerView(agg_id, tenant)
            view.when(payload)
            if view.deleted:
                self.views.pop(agg_id, None)
                self._reported.pop(agg_id, None)
        self.seq = seq
        self._dirty.set()

    async def _consume(self, stop: asyncio.Event) -> None:
        js = self._nc.jetstream()
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if self.seq else DeliverPolicy.ALL,
            opt_start_seq=self.seq + 1 if self.seq else None,
            filter_subjects=SUBJECTS,
        )
        sub = await js.subscribe("", stream=STREAM, ordered_consumer=True, config=cfg)
        try:
            while not stop.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    if not self.ready.is_set():
                        self.ready.set()  # caught up with the history
                        self._dirty.set()
                    continue
                hdrs = msg.headers or {}
                self.apply(msg.subject, hdrs.get("Splice-Topic", msg.subject.rsplit(".", 1)[-1]),
                           msg.data, msg.metadata.sequence.stream)
                if msg.metadata.num_pending == 0 and not self.ready.is_set():
                    self.ready.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- converging -------------------------------------------------------------------------

    def desired(self) -> dict[str, LoadBalancerSpec]:
        out: dict[str, LoadBalancerSpec] = {}
        for view in self.views.values():
            if view.host != self.host or view.provisioning_status in ("PENDING_DELETE", "DELETED"):
                continue
            net = self.networks.get(f"{view.tenant}.network.{view.vip_network_id}")
            if net is None:
                continue
            try:
                spec = to_spec(view, net)
            except SpecError as e:
                self._send_later(self._report(view, view.generation, "ERROR", f"refused: {e}"))
                continue
            out[spec.id] = spec
        return out

    async def _converge_loop(self, stop: asyncio.Event) -> None:
        await self.ready.wait()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=1.0)
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            desired = self.desired()
            try:
                results = await self.reconciler.converge(desired)
            except Exception:
                log.exception("converge failed; retrying on the next change or resync")
                await asyncio.sleep(1)
                self._dirty.set()
                continue
            self.converges += 1
            await self._report_results(desired, results)
            self.save_snapshot()

    async def _report_results(self, desired: dict[str, LoadBalancerSpec], results: dict[str, Any]) -> None:
        by_uuid = {v.id.rsplit(".", 1)[1]: v for v in self.views.values()}
        for lb_uuid, result in results.items():
            view = by_uuid.get(lb_uuid)
            if view is None:
                continue
            if lb_uuid in desired and result.provisioning_status in ("ACTIVE", "ERROR"):
                await self._report(view, desired[lb_uuid].generation, result.provisioning_status,
                                   result.reason)
        for view in list(by_uuid.values()):  # deleted from this host: say so
            if view.host == self.host and view.provisioning_status == "PENDING_DELETE":
                lb_uuid = view.id.rsplit(".", 1)[1]
                if lb_uuid not in desired:
                    await self._report(view, view.generation, "DELETED", "")

    async def _report(self, view: LoadBalancerView, generation: int, status: str, reason: str) -> None:
        key = (generation, status)
        if self._reported.get(view.id) == key:
            return
        if status == "ACTIVE" and view.converged >= generation and view.provisioning_status == "ACTIVE":
            self._reported[view.id] = key
            return
        body = {
            "command_id": f"report-{self.host}-{view.id.rsplit('.', 1)[1]}-{generation}-{status}",
            "actor": f"agent:{self.host}", "tenant": view.tenant,
            "loadbalancer_id": view.id.rsplit(".", 1)[1], "host": self.host,
            "generation": generation, "status": status, "reason": reason[:255],
        }
        if await self._command("splice.cmd._host.loadbalancer.report", body):
            self._reported[view.id] = key

    def _on_report(self, report: Report) -> None:
        """Operating status transitions from the reconciler: one command each."""
        if not report.changes or report.result.provisioning_status == "DELETED":
            return  # a removed load balancer has no operating status left to report
        view = next((v for v in self.views.values() if v.id.endswith(report.result.lb_id)), None)
        if view is None:
            return
        body: dict[str, Any] = {
            "command_id": str(uuid.uuid4()), "actor": f"agent:{self.host}", "tenant": view.tenant,
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
        self._send_later(self._command("splice.cmd._host.loadbalancer.report_status", body))

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

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await self._nc.publish(f"splice.hb.{self.host}",
                                       json.dumps({"host": self.host, "providers": self.providers}).encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_S)

    async def run(self, stop: asyncio.Event) -> None:
        self._nc = await nats.connect(self.nats_url.split(","), name=f"splice-agent-{self.host}",
                                      max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        try:
            registered = await self._command("splice.cmd._host.host.register", {
                "command_id": f"register-{self.host}-{uuid.uuid4().hex[:8]}",
                "actor": f"agent:{self.host}", "host": self.host, "providers": self.providers})
            log.info("agent started", host=self.host, registered=registered, resume_from=self.seq)
            tasks = [
                asyncio.create_task(self._heartbeat(stop)),
                asyncio.create_task(self._consume(stop)),
                asyncio.create_task(self._converge_loop(stop)),
                asyncio.create_task(self.reconciler.run_resync(self.resync_s, stop)),
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
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self.reconciler.close()
