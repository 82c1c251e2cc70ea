"""Background monitors of the command service: the PENDING watchdog and the host monitor.

Every command-service replica runs both (started after the service subscribes, stopped
first). They decide nothing: they watch, and send ordinary commands over NATS as a client would.
Replicas send the *same* command with the same deterministic `command_id`, so idempotency gives
one effect however many notice (and handlers decide again on fresh state).

PendingWatchdog
    Follows ``splice.evt.*.loadbalancer.>`` in the stream (the stream follower, from the start,
    filtered on the server). A load balancer is pending from the event that starts a generation
    (`LoadBalancerCreated`, or any event carrying a newer ``generation``: updates of the tree,
    `LoadBalancerDeleteRequested`) until `LoadBalancerProvisioned` (not while deleting),
    `LoadBalancerProvisioningFailed` or `LoadBalancerProvisioningTimedOut` of that generation;
    `LoadBalancerDeleted` forgets it. When a generation has been pending for longer than
    ``SPLICE_PENDING_TIMEOUT`` seconds (default 300; measured from the event's ``timestamp``)
    it sends ``splice.cmd.<tenant>.loadbalancer.expire_pending`` with
    ``command_id = "expire-<lb id>-<generation>"``; the load balancer becomes ERROR by a
    `LoadBalancerProvisioningTimedOut` event. It checks every ``min(5, timeout / 4)`` seconds.

HostMonitor
    **Heartbeat contract for agents**: an agent publishes a core-NATS message (not a JetStream
    event; any payload, empty is fine) on ``splice.hb.<host>`` every ``HEARTBEAT_INTERVAL``
    (0.25 s), from the moment it sends ``splice.cmd._host.host.register``. A registered, live
    host whose heartbeat has not been seen for ``SPLICE_HOST_TIMEOUT`` seconds (default 2, i.e.
    eight missed beats) is declared lost with ``splice.cmd._admin.host.lost``,
    ``command_id = "lost-<host>-<stream seq of its last HostRegistered event>"``; its services
    move to other live hosts. Heartbeats do not revive a lost host: its agent registers again.
    The monitor learns which hosts are registered and alive from ``splice.evt._admin.hosts.>``
    (`HostRegistered`, `HostLost`). A registration counts as a heartbeat, so a host is never
    lost sooner than the timeout after the monitor learns of it; in particular a monitor that
    (re)starts treats every registered host as just seen (a grace period), instead of
    declaring everyone lost. A monitor whose own checks ran late (its process stalled: the
    heartbeats of that time may still be queued, unread) judges no host on that check.

Both act only once they have read the stream up to its end at start (a monitor replaying
history must not act on a state that later events already changed). ``SPLICE_MONITORS=off``
disables them in a replica. Both read with the one stream follower (`splice.events.follow`):
an event they cannot read is set aside (logged, counted in ``follower.set_aside_total``) and
the next one read; a stalled or lost consumer is re-made from the last sequence read. A failed check is logged and retried on
the next tick. Time comes from a `clock` (wall-clock for the watchdog, whose deadlines start at
events' timestamps; monotonic for the host monitor), so that tests can move it forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import structlog

from splice.events import subjects
from splice.events.follow import Delivery, Follower
from splice.events.natsclient import connect
from splice.events.natsio import settled

from .monitor_state import Clock, HostTracker, PendingTracker, lost_command_id

log = structlog.get_logger("splice.monitors")


HEARTBEAT_INTERVAL = 0.25  # seconds between an agent's heartbeats (the agents' contract)
HEARTBEAT_SUBJECTS = subjects.heartbeat("*")
LB_EVENTS = subjects.events_of("loadbalancer")
HOST_EVENTS = subjects.events_of("hosts", tenant=subjects.ADMIN)
DEFAULT_PENDING_TIMEOUT = 300.0
DEFAULT_HOST_TIMEOUT = 2.0
MAX_COMMANDS_PER_TICK = 200
REQUEST_TIMEOUT = 5.0
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key) or os.environ.get(key)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if value > 0:
        return value
    log.warning("bad setting, using the default", key=key, value=raw, default=default)
    return default


# -- the running monitors -------------------------------------------------------------------------


class _Monitor:
    """Follows one filtered part of the stream and checks on a timer; subclasses say what to do."""

    NAME = "monitor"
    FILTER = ""
    HEARTBEAT = 2.0  # the follower's idle heartbeat: a stalled read is re-made after three

    def __init__(self, stream: str, interval: float, clock: Clock) -> None:
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.sent = 0  # commands answered ok (for tests and logs)
        self.follower: Follower | None = None
        self._nc: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def caught_up(self) -> bool:
        return self.follower is not None and self.follower.caught_up.is_set()

    async def start(self, nc: Any) -> None:
        self._nc = nc
        self.follower = Follower(nc.jetstream(), self.FILTER, self.apply, stream=self.stream,
                                 name=self.NAME, heartbeat=self.HEARTBEAT)
        self._tasks = [
            asyncio.create_task(self.follower.run(self._stop), name=f"{self.NAME}-follow"),
            asyncio.create_task(self._ticks(), name=f"{self.NAME}-tick"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        _, running = await asyncio.wait(self._tasks, timeout=2) if self._tasks else ((), ())
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=2)
        self._tasks = []

    async def apply(self, d: Delivery) -> None:
        raise NotImplementedError

    async def check(self) -> None:
        raise NotImplementedError

    async def tick(self) -> None:
        """One check, once the stream has been read up to its end (the timer calls this)."""
        if not self.caught_up or self._stop.is_set():
            return
        try:
            await self.check()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("monitor check failed", monitor=self.NAME)

    async def _ticks(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            await self.tick()

    async def _command(self, subject: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Send one command; its reply, or None when there was none (logged)."""
        try:
            msg = await self._nc.request(subject, json.dumps(body).encode(), timeout=REQUEST_TIMEOUT)
            reply: dict[str, Any] = json.loads(msg.data)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("monitor command got no reply; will retry", monitor=self.NAME,
                        subject=subject, command_id=body.get("command_id"), error=repr(e))
            return None
        if reply.get("ok"):
            self.sent += 1
            log.info("monitor command", monitor=self.NAME, subject=subject,
                     command_id=body.get("command_id"), seq=reply.get("seq"))
        else:
            log.warning("monitor command refused", monitor=self.NAME, subject=subject,
                        command_id=body.get("command_id"), error=reply.get("error"))
        return reply


class PendingWatchdog(_Monitor):
    NAME = "pending-watchdog"
    FILTER = LB_EVENTS

    def __init__(
        self, stream: str, timeout: float, *, clock: Clock = time.time, interval: float = 0
    ) -> None:
        super().__init__(stream, interval or min(5.0, timeout / 4), clock)
        self.timeout = timeout
        self.state = PendingTracker(clock)

    async def apply(self, d: Delivery) -> None:
        self.state.apply(d.subject, d.topic, d.data)

    async def check(self) -> None:
        due = self.state.overdue(self.clock(), self.timeout)[:MAX_COMMANDS_PER_TICK]
        for lb, st in due:
            if self._stop.is_set():
                return
            gen = st.generation
            reply = await self._command(
                subjects.command(st.tenant, "loadbalancer", "expire_pending"),
                {"id": lb, "generation": gen, "command_id": f"expire-{lb}-{gen}",
                 "actor": "watchdog"},
            )
            if reply is None:
                continue
            current = self.state.pending.get(lb)
            if reply.get("ok") and current is st:
                st.expired = gen  # the event follows; until then, do not send it again
            elif current is st and (reply.get("error") or {}).get("code") in ("not_found", "poisoned"):
                del self.state.pending[lb]  # gone meanwhile, or refused until repaired


class HostMonitor(_Monitor):
    NAME = "host-monitor"
    FILTER = HOST_EVENTS

    def __init__(
        self, stream: str, timeout: float, *, clock: Clock = time.monotonic, interval: float = 0
    ) -> None:
        super().__init__(stream, interval or min(0.25, timeout / 8), clock)
        self.timeout = timeout
        self.state = HostTracker()
        self._hb: Any = None
        self._last_check: float | None = None  # time.monotonic() of the last check
        self.stalls = 0

    async def start(self, nc: Any) -> None:
        self._hb = await nc.subscribe(HEARTBEAT_SUBJECTS, cb=self._on_heartbeat)
        await settled(nc)
        await super().start(nc)

    async def stop(self) -> None:
        if self._hb is not None:
            with contextlib.suppress(Exception):
                await self._hb.unsubscribe()
            self._hb = None
        await super().stop()

    async def _on_heartbeat(self, msg: Any) -> None:
        host = msg.subject[len(subjects.heartbeat("")):]
        if _HOST_RE.match(host):
            self.state.heartbeat(host, self.clock())

    async def apply(self, d: Delivery) -> None:
        self.state.apply(d.topic, d.seq, d.data, self.clock())

    async def check(self) -> None:
        now, real = self.clock(), time.monotonic()
        late = self._last_check is not None and real - self._last_check > max(
            3 * self.interval, self.timeout / 2)
        self._last_check = real
        if late:  # this process stalled: heartbeats may wait unread; judge on the next check
            self.stalls += 1
            log.warning("host monitor ran late: no host judged on this check")
            return
        self.state.prune(now, keep=10 * self.timeout)
        for host, seq in self.state.overdue(now, self.timeout)[:MAX_COMMANDS_PER_TICK]:
            if self._stop.is_set():
                return
            reply = await self._command(
                subjects.command(subjects.ADMIN, "host", "lost"),
                {"host": host, "command_id": lost_command_id(host, seq), "actor": "host-monitor"},
            )
            h = self.state.hosts.get(host)
            if reply is None or h is None or h.seq != seq:
                continue
            if reply.get("ok"):
                h.declared = seq  # the event follows; until then, do not send it again
            else:  # the service's view disagrees (for now): try again, less and less often
                h.retries += 1
                h.retry_at = now + min(self.interval * 2**h.retries, 60.0)


class Monitors:
    """Both monitors of one replica, on the process's NATS connection or on one of their own.

    `clock` (default: wall-clock time for the watchdog, monotonic for the host monitor) and
    `interval` (seconds between checks; default from the timeouts) are for tests.
    """

    def __init__(
        self, nats_url: str, env: Mapping[str, str], *, clock: Clock | None = None, interval: float = 0
    ) -> None:
        self.nats_url = nats_url
        stream = env.get("JETSTREAM_STREAM") or subjects.STREAM
        self.watchdog = PendingWatchdog(
            stream, _seconds(env, "SPLICE_PENDING_TIMEOUT", DEFAULT_PENDING_TIMEOUT),
            clock=clock or time.time, interval=interval,
        )
        self.hosts = HostMonitor(
            stream, _seconds(env, "SPLICE_HOST_TIMEOUT", DEFAULT_HOST_TIMEOUT),
            clock=clock or time.monotonic, interval=interval,
        )
        self._nc: Any = None
        self._own_nc = False

    async def start(self, nc: Any = None) -> None:
        """Start both; on `nc` when given (it stays open at `stop()`), else on a new connection."""
        self._own_nc = nc is None
        self._nc = nc or await connect(
            self.nats_url,
            name="splice-monitors",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
        )
        await self.hosts.start(self._nc)
        await self.watchdog.start(self._nc)
        log.info("monitors started", pending_timeout=self.watchdog.timeout,
                 host_timeout=self.hosts.timeout, heartbeat_interval=HEARTBEAT_INTERVAL)

    async def stop(self) -> None:
        await asyncio.gather(self.watchdog.stop(), self.hosts.stop(), return_exceptions=True)
        if self._nc is not None and self._own_nc:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = None


async def start_monitors(nats_url: str, env: Mapping[str, str], nc: Any = None) -> Monitors | None:
    """Start the monitors of a replica (on `nc`, the process's connection, when given); None
    when disabled or when they could not start."""
    if (env.get("SPLICE_MONITORS") or os.environ.get("SPLICE_MONITORS") or "on").lower() in (
        "0", "off", "false", "no",
    ):
        return None
    monitors = Monitors(nats_url, env)
    try:
        await monitors.start(nc)
    except Exception:
        log.exception("monitors did not start; the service runs without them")
        await monitors.stop()
        return None
    return monitors


async def stop_monitors(monitors: Monitors | None) -> None:
    try:
        if monitors is not None:
            await monitors.stop()
    except Exception:  # pragma: no cover - best effort
        log.exception("monitors did not stop cleanly")
