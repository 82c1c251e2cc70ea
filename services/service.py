"""The command service: NATS request/reply on ``splice.cmd.<tenant>.<aggregate>.<verb>``.

The transport only: several replicas share the load through one queue group; for each request
it checks the subject and the size, decodes and validates the body (msgspec), hands the command
to the executor (`executor.py`: idempotency, conflicts, retries), and replies. Commands are
decided inline on the service's loop (`splice.events.inline`): where one waits for the event
store, whose connection is the service's own, the loop answers others meanwhile.
Every reply is structured; no traceback goes on the wire, and none is bigger than the server's
maximum payload (a long error is cut to fit).

The request's checks are `requests.py`'s (`parse`, `fit`); back-pressure and fairness are
`admission.py`'s (`FairQueue`): the subscription's callback never waits, it admits a request
into its tenant's queue or refuses it at once with `unavailable` and a retry hint.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from nats.aio.msg import Msg

from splice.events import metrics, subjects
from splice.events.contracts import (
    Failed,
    Ok,
)
from splice.events.inline import start_inline
from splice.events.natsclient import take_first
from splice.events.natsio import SHARED_CONNECTION, NatsThread, settled
from splice.events.wire import MAX_PAYLOAD

from . import senders
from .admission import MIN_RETRY_MS, Busy, FairQueue
from .common_handlers import SpliceApplication
from .executor import CommandExecutor, Parsed, app_env, failed
from .requests import command_id_of, fit, parse, tenant_token

__all__ = ["CommandService", "Parsed", "app_env", "failed"]

log = structlog.get_logger("splice.cmd")

QUEUE_GROUP = "splice-cmd"


class CommandService:
    """Serves commands until stopped. One instance per process; run several for more.

    `nc`, when given, is the process's NATS connection: the service and its monitors use it and
    leave it open on stop (its owner drains it); otherwise the service opens and drains its own.

    Bounds (see `FairQueue`): `workers` commands are in progress at once; one tenant's at most
    `tenant_workers` of them while it is the only tenant active, `shared_workers` while others
    are; `tenant_limit` commands of one tenant and `limit` of all wait or run at once (`_admin`
    and `_host` count only against their own); a command waits at most `max_wait` seconds for
    a worker. Past any of them the answer is an immediate `unavailable` with `retry_after_ms`.
    The defaults suit a small machine (2 cores): 32 at once is what one tenant needs for the
    command path's full rate (bench/command_path.py), and 8 more stay free for the others;
    beside others, 8 at once keep one tenant from taking the CPU they need; a full queue is a
    second or two of work, and no command waits more than 2 s for a worker.
    """

    def __init__(
        self,
        nats_url: str,
        *,
        env: dict[str, str] | None = None,
        workers: int = 40,
        tenant_workers: int = 32,
        shared_workers: int = 8,
        limit: int = 1024,
        tenant_limit: int = 128,
        max_wait: float = 2.0,
        max_attempts: int = 12,
        max_payload: int = MAX_PAYLOAD,
        queue: str = QUEUE_GROUP,
        nc: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nats_url = nats_url
        self.env = app_env(nats_url, **(env or {}))
        self.workers = workers
        self.max_attempts = max_attempts
        self.max_payload = max_payload
        self.queue = queue
        self.clock = clock
        self.app: SpliceApplication | None = None
        self._executor: CommandExecutor | None = None
        self._fair: FairQueue[Msg] = FairQueue(
            workers=workers,
            tenant_workers=tenant_workers,
            shared_workers=shared_workers,
            limit=limit,
            tenant_limit=tenant_limit,
            max_wait=max_wait,
            clock=clock,
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self._nc: Any = nc
        self._own_nc = nc is None
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn: NatsThread | None = None  # the event store's connection, on this loop
        self.handled = 0
        self.refused: Counter[str] = Counter()  # `unavailable` for want of room, by tenant
        self._refused_logged: Counter[str] = Counter()
        self._refusals_logged_at = 0.0
        self._timers: dict[tuple[str, str], Any] = {}  # COMMAND_SECONDS' children, by labels

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # One connection on this loop serves the requests and the event store, and commands
        # are decided inline on this loop: no thread between a request and its write.
        self._conn = await NatsThread.on_this_loop(self.nats_url, name="splice-command-service")
        shared = SHARED_CONNECTION.set(self._conn)
        try:  # built on a thread (it waits for the store), which sees the shared connection
            self.app = await asyncio.to_thread(SpliceApplication, env=self.env)
        finally:
            SHARED_CONNECTION.reset(shared)
        self._executor = CommandExecutor(self.app, max_attempts=self.max_attempts)
        if self._own_nc:
            self._nc = self._conn.nc
        self._sub = await self._nc.subscribe(subjects.COMMANDS, queue=self.queue, cb=self._on_msg)
        take_first(self._sub, self._arrived)  # on Splice's client: requests as they are read
        await settled(self._nc)  # the server routes requests here before "ready" is said
        log.info("command service ready", subjects=subjects.COMMANDS, queue=self.queue)
        # -- monitors (services/monitors.py): they send their commands over NATS, like clients --
        from .monitors import start_monitors

        theirs = None if self._own_nc else self._nc
        self._monitors = await start_monitors(self.nats_url, self.app.env, theirs)
        # -- end monitors --

    async def stop(self, timeout: float = 10.0) -> None:
        """No new requests; those admitted are answered (run, or after `timeout` refused)."""
        # -- monitors (services/monitors.py): stopped first, while the service still answers --
        from .monitors import stop_monitors

        await stop_monitors(getattr(self, "_monitors", None))
        self._monitors = None
        # -- end monitors --
        if self._sub is not None:
            try:
                await self._sub.drain()  # no new requests; those delivered are admitted
            except Exception as e:  # pragma: no cover - best effort
                log.warning("drain failed", error=str(e))
            self._sub = None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            late = self._fair.drop_waiting()
            log.warning("stopping: refusing the commands still waiting", count=len(late))
            busy = Busy("the command service is stopping", MIN_RETRY_MS)
            for msg in late:
                await self._reply(msg, busy.reply(command_id_of(msg.data[: self.max_payload])))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
        self._log_refusals(force=True)
        if self.app is not None:  # its store drains the connection (also the requests' if own)
            app, self.app, self._executor = self.app, None, None
            await asyncio.to_thread(app.close)
        if self._conn is not None:
            await asyncio.to_thread(self._conn.close)  # done already, unless the app failed
            self._conn = None

    async def __aenter__(self) -> CommandService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- requests ----------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        """nats-py calls this one message at a time: admit or refuse, never wait for room."""
        refusal = self._admit(msg)
        if refusal is not None:
            await refusal

    def _arrived(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """A request as it is read (`take_first`), admitted at once: no message queue or task
        step of nats-py's before `_on_msg` (1.6 % of a command's instructions). One with headers
        goes nats-py's way, which reads them."""
        if headers is not None:
            return False
        refusal = self._admit(Msg(self._nc, subject.decode(), reply.decode(), data))
        if refusal is not None:
            self._keep(asyncio.ensure_future(refusal))
        return True

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold `task` until it is done (`stop` waits for what is held)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admit(self, msg: Msg) -> Coroutine[Any, Any, None] | None:
        """Admit `msg` and start what may run, or say (the coroutine to await) why not."""
        tenant = tenant_token(msg.subject)
        busy = self._fair.admit(tenant, msg)
        if busy is None:
            self._idle.clear()
            self._dispatch()
            return None
        self.refused[tenant] += 1
        self._log_refusals()
        return self._reply(msg, busy.reply(command_id_of(msg.data[: self.max_payload])))

    def _dispatch(self) -> None:
        """Start what the fair queue lets run now: each command on a worker thread, which
        decides it and hands the reply back (`_finish`); a refusal for want of time at once."""
        while (next_up := self._fair.take()) is not None:
            tenant, msg, late = next_up
            if late is not None:
                self._keep(asyncio.create_task(self._refuse_late(tenant, msg, late)))
            else:
                self._keep(self._begin(tenant, msg, self.clock()))

    async def _refuse_late(self, tenant: str, msg: Msg, late: Busy) -> None:
        self.refused[tenant] += 1
        self._log_refusals()
        self._done(tenant, self.clock())
        self._dispatch()
        await self._reply(msg, late.reply(command_id_of(msg.data[: self.max_payload])))

    def _done(self, tenant: str, started: float) -> None:
        self._fair.done(tenant, self.clock() - started)
        if self._fair.load == 0:
            self._idle.set()

    def _begin(self, tenant: str, msg: Msg, started: float) -> asyncio.Task[None]:
        """Decide one command inline on this loop, starting now (it yields to the loop where
        it waits for the store: `splice.events.inline`), and answer it: every request gets one
        reply."""

        async def answer(reply: Ok | Failed | None, error: Exception | None) -> None:
            if reply is None:  # the error goes to the log only
                log.error("request failed unexpectedly", subject=msg.subject,
                          exc_info=error)
                reply = failed("internal", "internal error")
            self._done(tenant, started)
            self.handled += 1
            self._dispatch()
            await self._reply(msg, reply)

        return start_inline(self.decide, (msg.subject, msg.data, msg.headers), answer)

    async def _reply(self, msg: Msg, reply: Ok | Failed) -> None:
        if not msg.reply:
            return
        limit = int(getattr(self._nc, "max_payload", 0) or MAX_PAYLOAD)
        try:
            if self._conn is not None and self._nc is self._conn.nc:
                await self._conn.send(msg.reply, fit(reply, limit))  # to the socket at once
            else:
                await self._nc.publish(msg.reply, fit(reply, limit))
        except Exception as e:  # connection lost: the client will retry
            log.warning("reply not sent", subject=msg.subject, error=str(e))

    def _log_refusals(self, *, force: bool = False) -> None:
        """One line a second at most for the refusals since the last (not one per refusal)."""
        now = self.clock()
        if not force and now - self._refusals_logged_at < 1.0:
            return
        self._refusals_logged_at = now
        new = self.refused - self._refused_logged
        if new:
            log.warning("commands refused: no room (unavailable, retry later)", by_tenant=dict(new))
            self._refused_logged = self.refused.copy()

    def decide(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> Ok | Failed:
        """One request's reply (on a worker thread). `headers`: the request's, where the server
        names its sender (`Nats-Request-Info`)."""
        started = time.perf_counter()
        parsed = parse(subject, data, self.max_payload)
        if isinstance(parsed, Failed):
            self._log(subject, None, parsed, started, 0)
            return parsed
        cmd = parsed.command
        refusal = senders.refusal(parsed.tenant, cmd, subjects.sender_of(headers))
        if refusal is not None:
            refused = failed("forbidden", refusal.message, refusal.field, cmd.command_id)
            self._log(subject, parsed, refused, started, 0)
            return refused
        command_id = cmd.command_id or str(uuid.uuid4())
        executor = self._executor
        try:
            if executor is None:
                raise RuntimeError("the command service is not started")
            reply, attempts = executor.execute(parsed, command_id)
        except Exception:
            log.exception("command failed unexpectedly", subject=subject, command_id=command_id)
            reply, attempts = failed("internal", "internal error", None, command_id), 0
        self._log(subject, parsed, reply, started, attempts)
        return reply

    def _log(
        self, subject: str, parsed: Parsed | None, reply: Ok | Failed, started: float, attempts: int
    ) -> None:
        elapsed = time.perf_counter() - started
        outcome = "ok" if isinstance(reply, Ok) else reply.error.code
        command = f"{parsed.aggregate}.{parsed.verb}" if parsed is not None else "unparsed"
        timer = self._timers.get((command, outcome))
        if timer is None:  # bounded: the commands and error codes there are
            timer = metrics.COMMAND_SECONDS.labels(command=command, outcome=outcome)
            self._timers[(command, outcome)] = timer
        timer.observe(elapsed)
        # An accepted command is in the stream already (`splice events`, `splice audit`): its
        # line is for debugging; a refused one is only here.
        if outcome == "ok" and not log.is_enabled_for(logging.DEBUG):
            return
        fields: dict[str, Any] = {
            "subject": subject, "ms": round(elapsed * 1000, 2), "attempts": attempts,
            "outcome": outcome, "command_id": reply.command_id,
        }
        if parsed is not None:
            fields.update(tenant=parsed.tenant, aggregate=parsed.aggregate, verb=parsed.verb,
                          actor=parsed.command.actor)
        if isinstance(reply, Ok):
            fields.update(id=reply.id, version=reply.version, seq=reply.seq)
            log.debug("command", **fields)
        else:
            fields.update(field=reply.error.field, error=reply.error.message)
            log.info("command", **fields)

