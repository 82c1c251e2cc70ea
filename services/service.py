"""The command service: NATS request/reply on ``splice.cmd.<tenant>.<aggregate>.<verb>``.

Several replicas share the load through one queue group. For each request: check the subject and
the size, decode and validate the body (msgspec), look up the command id (a command already
handled gets its first reply again), run the handler, save its events in one atomic write with
the command's claim, reply. A concurrency conflict re-runs the handler on fresh state, a bounded
number of times. Every reply is structured; no traceback goes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import structlog
from eventsourcing.persistence import IntegrityError, OperationalError
from nats.aio.msg import Msg

from splice.events.contracts import (
    ADMIN_TENANT,
    COMMANDS,
    HOST_TENANT,
    Command,
    Error,
    Failed,
    Ok,
    scope_of,
)
from splice.events.jetstream import JetStreamApplicationRecorder

from .common_handlers import SpliceApplication, tracking_loads
from .domain import AlreadyAppliedError, DomainError, Meta, acting, public_id
from .handlers import COMMAND_HANDLERS
from .registry import AGGREGATES

log = structlog.get_logger("splice.cmd")

COMMAND_SUBJECTS = "splice.cmd.>"
QUEUE_GROUP = "splice-cmd"
MAX_PAYLOAD = 64 * 1024
TENANT_RE = re.compile(r"^(?:[a-z0-9][a-z0-9-]{0,62}|_admin|_host)$")
_AT = re.compile(r" - at (?:`key` in )?`(\$[^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")

_encoder = msgspec.json.Encoder()
_DECODERS = {t: msgspec.json.Decoder(t) for t in COMMANDS.values()}
_ok_decoder = msgspec.json.Decoder(Ok)


def app_env(nats_url: str, **extra: str) -> dict[str, str]:
    """The eventsourcing environment of the command side."""
    env = {
        "PERSISTENCE_MODULE": "splice.events.jetstream",
        "NATS_URL": nats_url,
        "MAPPER_TOPIC": "splice.services.codec:SpliceMapper",
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        # The cache follows this process's own writes; what other replicas wrote is caught by
        # the server's concurrency check on every write (then the decision's aggregates are
        # evicted and it is decided again), and a refusal or a no-op decided on cached state
        # is decided again on fresh state before it is answered.
        "AGGREGATE_CACHE_FASTFORWARD": "n",
    }
    env.update(extra)
    return env


def failed(
    code: str, message: str, field: str | None = None, command_id: str | None = None
) -> Failed:
    return Failed(error=Error(code=code, message=message, field=field), command_id=command_id)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Parsed:
    tenant: str
    aggregate: str
    verb: str
    command: Command


def parse(subject: str, data: bytes, max_payload: int = MAX_PAYLOAD) -> Parsed | Failed:
    """Subject, size and body checks. Pure: no I/O."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "splice" or parts[1] != "cmd":
        return failed(
            "invalid", "command subjects are splice.cmd.<tenant>.<aggregate>.<verb>", "subject"
        )
    tenant, aggregate, verb = parts[2], parts[3], parts[4]
    if not TENANT_RE.match(tenant):
        return failed("invalid", f"{tenant!r} is not a valid tenant", "subject")
    cmd_type = COMMANDS.get((aggregate, verb))
    if cmd_type is None:
        return failed("invalid", f"unknown command {aggregate}.{verb}", "subject")
    scope = scope_of(aggregate, verb)
    expected = {"admin": ADMIN_TENANT, "host": HOST_TENANT}.get(scope)
    if (expected is not None and tenant != expected) or (expected is None and tenant.startswith("_")):
        where = {"admin": "the admin scope (_admin)", "host": "agents (_host)"}.get(scope, "a tenant")
        return failed("forbidden", f"{aggregate}.{verb} belongs to {where}", "subject")
    if len(data) > max_payload:
        return failed("invalid", f"payload of {len(data)} bytes exceeds {max_payload}", "$")
    try:
        cmd = _DECODERS[cmd_type].decode(data)
    except msgspec.ValidationError as e:
        return failed("invalid", *_describe(e))
    except msgspec.DecodeError as e:
        return failed("invalid", str(e), "$")
    return Parsed(tenant, aggregate, verb, cmd)


class Unverified(Exception):
    """A decision with no write was made on cached state: decide again on fresh state."""


def _describe(e: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's message without the location, and the location as a JSON path."""
    text = str(e)
    m = _AT.search(text)
    path = m.group(1) if m else "$"
    missing = _MISSING.search(text)
    if missing:
        path = f"{path}.{missing.group(1)}"
    return _AT.sub("", text), path


class CommandService:
    """Serves commands until stopped. One instance per process; run several for more."""

    def __init__(
        self,
        nats_url: str,
        *,
        env: dict[str, str] | None = None,
        workers: int = 32,
        max_attempts: int = 12,
        max_payload: int = MAX_PAYLOAD,
        queue: str = QUEUE_GROUP,
    ) -> None:
        self.nats_url = nats_url
        self.env = app_env(nats_url, **(env or {}))
        self.workers = workers
        self.max_attempts = max_attempts
        self.max_payload = max_payload
        self.queue = queue
        self.app: SpliceApplication | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splice-cmd")
        self._nc: Any = None
        self._sem = asyncio.Semaphore(workers * 4)
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        self.handled = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.app = await loop.run_in_executor(self._pool, lambda: SpliceApplication(env=self.env))
        self._nc = await nats.connect(
            self.nats_url.split(","),
            name="splice-command-service",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
        )
        await self._nc.subscribe(COMMAND_SUBJECTS, queue=self.queue, cb=self._on_msg)
        await self._nc.flush()
        log.info("command service ready", subjects=COMMAND_SUBJECTS, queue=self.queue)
        # -- monitors (services/monitors.py): they send their commands over NATS, like clients --
        from .monitors import start_monitors

        self._monitors = await start_monitors(self.nats_url, self.app.env)
        # -- end monitors --

    async def stop(self) -> None:
        # -- monitors (services/monitors.py): stopped first, while the service still answers --
        from .monitors import stop_monitors

        await stop_monitors(getattr(self, "_monitors", None))
        self._monitors = None
        # -- end monitors --
        if self._nc is not None:
            try:
                await self._nc.drain()
            except Exception as e:  # pragma: no cover - best effort
                log.warning("drain failed", error=str(e))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        loop = asyncio.get_running_loop()
        if self.app is not None:
            app = self.app
            await loop.run_in_executor(self._pool, app.close)
            self.app = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> CommandService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- requests ----------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        await self._sem.acquire()
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    async def _serve(self, msg: Msg) -> None:
        reply = await self.handle(msg.subject, msg.data)
        if msg.reply:
            try:
                await msg.respond(_encoder.encode(reply))
            except Exception as e:  # connection lost: the client will retry
                log.warning("reply not sent", subject=msg.subject, error=str(e))

    async def handle(self, subject: str, data: bytes) -> Ok | Failed:
        started = time.perf_counter()
        parsed = parse(subject, data, self.max_payload)
        if isinstance(parsed, Failed):
            self._log(subject, None, parsed, started, 0)
            return parsed
        cmd = parsed.command
        command_id = cmd.command_id or str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        try:
            reply, attempts = await loop.run_in_executor(
                self._pool, self._execute, subject, parsed, command_id
            )
        except Exception:
            log.exception("command failed unexpectedly", subject=subject, command_id=command_id)
            reply, attempts = failed("internal", "internal error", None, command_id), 0
        self._log(subject, parsed, reply, started, attempts)
        self.handled += 1
        return reply

    def _log(
        self, subject: str, parsed: Parsed | None, reply: Ok | Failed, started: float, attempts: int
    ) -> None:
        fields: dict[str, Any] = {
            "subject": subject,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "attempts": attempts,
        }
        if parsed is not None:
            fields.update(
                tenant=parsed.tenant,
                aggregate=parsed.aggregate,
                verb=parsed.verb,
                actor=parsed.command.actor,
            )
        if isinstance(reply, Ok):
            fields.update(
                outcome="ok",
                command_id=reply.command_id,
                id=reply.id,
                version=reply.version,
                seq=reply.seq,
            )
        else:
            fields.update(
                outcome=reply.error.code,
                command_id=reply.command_id,
                field=reply.error.field,
                error=reply.error.message,
            )
        log.info("command", **fields)

    # -- the synchronous core (worker threads) ------------------------------------------------

    def _recorder(self) -> JetStreamApplicationRecorder:
        assert self.app is not None
        rec = self.app.recorder
        assert isinstance(rec, JetStreamApplicationRecorder)
        return rec

    def _claim_suffix(self, tenant: str, command_id: str) -> str:
        return f"{tenant}.{command_id}"

    def _previous(self, subject: str, tenant: str, command_id: str) -> Ok | Failed | None:
        found = self._recorder().get_claim(self._claim_suffix(tenant, command_id))
        if found is None:
            return None
        seq, payload = found
        stored = msgspec.json.decode(payload)
        if stored.get("subject") != subject:
            return failed(
                "conflict",
                f"command id {command_id} was already used for {stored.get('subject')}",
                "command_id",
                command_id,
            )
        return Ok(
            id=stored["id"],
            version=stored["version"],
            seq=seq - int(stored.get("back", 1)),
            command_id=command_id,
        )

    @staticmethod
    def _probe_id(parsed: Parsed) -> str | None:
        """The aggregate a command names as its own (by `id`, or its load balancer's)."""
        cmd = parsed.command
        lb = getattr(cmd, "loadbalancer_id", None)
        if isinstance(lb, str):
            return f"{parsed.tenant}.loadbalancer.{lb}"
        ident = getattr(cmd, "id", None)
        if isinstance(ident, str) and parsed.aggregate in AGGREGATES:
            return f"{parsed.tenant}.{parsed.aggregate}.{ident}"
        return None

    def _remembered(self, agg_id: str, version: int, command_id: str) -> Ok:
        seq = self._recorder().seq_of_version(agg_id, version)
        return Ok(id=public_id(agg_id), version=version, seq=seq, command_id=command_id)

    def _remembered_by_probe(self, parsed: Parsed, command_id: str) -> Ok | None:
        probe = self._probe_id(parsed)
        if probe is None or self.app is None:
            return None
        agg = self.app.get_or_none(probe)
        done = agg.applied_version(command_id) if agg is not None else None
        return None if done is None else self._remembered(probe, done, command_id)

    def _evict(self, agg_ids: Iterable[str]) -> None:
        cache = self.app.repository.cache if self.app is not None else None
        if cache is None:
            return
        for agg_id in agg_ids:
            with contextlib.suppress(KeyError):
                cache.get(agg_id, evict=True)

    def _serialised(self, parsed: Parsed) -> list[threading.Lock]:
        """In-process locks for the aggregates this command will most likely contend on.

        Commands on one load balancer (or network, or the scheduler's registry) queue behind
        each other here instead of racing, failing the server's check and retrying: a herd of
        concurrent changes to one resource becomes a queue. Only a speed-up: correctness is
        the server's concurrency check, which still guards against other replicas.
        """
        t, agg, verb, cmd = parsed.tenant, parsed.aggregate, parsed.verb, parsed.command
        keys = set()
        for field in ("loadbalancer_id", "network_id", "vip_network_id", "router_id"):
            value = getattr(cmd, field, None)
            if isinstance(value, str):
                keys.add(f"{t}.{field}.{value}")
        if isinstance(getattr(cmd, "id", None), str):
            keys.add(f"{t}.{agg}.{cmd.id}")  # type: ignore[attr-defined]
        if verb == "create":
            keys.add(f"{t}.quota")
        if agg in ("loadbalancer", "firewall", "tap", "host") and verb in ("create", "delete",
                                                                             "register", "lost"):
            keys.add("hosts")
        if agg == "servicetype" and verb != "update":
            keys.add("servicetype-default")
        with self._locks_guard:
            return [self._locks.setdefault(k, threading.Lock()) for k in sorted(keys)]

    def _execute(self, subject: str, parsed: Parsed, command_id: str) -> tuple[Ok | Failed, int]:
        locks = self._serialised(parsed)
        for lock in locks:
            lock.acquire()
        try:
            return self._execute_locked(subject, parsed, command_id)
        finally:
            for lock in reversed(locks):
                lock.release()

    def _execute_locked(
        self, subject: str, parsed: Parsed, command_id: str
    ) -> tuple[Ok | Failed, int]:
        cmd = parsed.command
        meta = Meta(
            actor=cmd.actor,
            command_id=command_id,
            correlation_id=cmd.correlation_id or command_id,
        )
        attempt = 0
        fresh = False  # whether this attempt's aggregates were read from the stream
        with acting(meta):
            while True:
                attempt += 1
                loaded = tracking_loads()
                try:
                    # The stored result of an earlier send is looked up only when this send
                    # may be a repeat that the write alone would not reveal: after a conflict
                    # (the claim's subject was taken), or when there is nothing to write.
                    reply = self._attempt(
                        subject, parsed, meta, check_claim=attempt > 1, verified=fresh
                    )
                except AlreadyAppliedError as e:
                    # a repeat: the first answer again (found on fresh state, to be sure)
                    if not fresh:
                        self._evict(loaded)
                        fresh = True
                        continue
                    previous = self._previous(subject, parsed.tenant, command_id)
                    return previous or self._remembered(e.agg_id, e.version, command_id), attempt
                except Unverified:
                    # refused, or nothing to do, on cached state: decide once more afresh
                    self._evict(loaded)
                    fresh = True
                    continue
                except IntegrityError:
                    fresh = True  # the conflict evicted what the decision read
                    if attempt >= self.max_attempts:
                        return failed(
                            "conflict",
                            f"gave up after {attempt} attempts: the resource kept changing",
                            None,
                            command_id,
                        ), attempt
                    # back off with jitter: another replica is writing the same aggregates
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # noqa: S311
                    continue
                except OperationalError as e:
                    return failed(
                        "unavailable", f"event store unavailable: {e}", None, command_id
                    ), attempt
                except DomainError as e:
                    if not fresh:
                        self._evict(loaded)
                        fresh = True
                        continue
                    # A duplicate of this command may have committed meanwhile, and its effect
                    # is what refused this one: then the answer is the duplicate's.
                    if cmd.command_id is not None:
                        previous = self._previous(subject, parsed.tenant, command_id)
                        if previous is None:
                            previous = self._remembered_by_probe(parsed, command_id)
                        if previous is not None:
                            return previous, attempt
                    return failed(e.code, e.message, e.field, command_id), attempt
                return reply, attempt

    def _attempt(
        self, subject: str, parsed: Parsed, meta: Meta, *, check_claim: bool, verified: bool
    ) -> Ok | Failed:
        """Decide and save. Raises IntegrityError on a concurrency conflict (after evicting the
        decision's aggregates from the cache, so the next attempt reads them afresh)."""
        app = self.app
        assert app is not None
        cmd, command_id = parsed.command, meta.command_id
        if check_claim and cmd.command_id is not None:
            previous = self._previous(subject, parsed.tenant, command_id)
            if previous is not None:
                return previous
        decision = COMMAND_HANDLERS[type(cmd)](app, parsed.tenant, cmd)
        target = decision.subject
        result_id = decision.result_id or public_id(target.id)
        if not decision.save:
            if not verified:
                raise Unverified
            if cmd.command_id is not None and not check_claim:
                previous = self._previous(subject, parsed.tenant, command_id)
                if previous is not None:
                    return previous
            return Ok(id=result_id, version=target.version, seq=None, command_id=command_id)
        # The reply's seq is the stream sequence of the target's newest event. The claim is
        # the batch's last message, so that event sits `back` messages before it.
        back, upto = 1, 0
        counts = [(agg.id, len(agg.pending_events)) for agg in decision.save]
        total = sum(n for _, n in counts)
        for agg_id, n in counts:
            upto += n
            if agg_id == target.id and n:
                back = total - upto + 1
        headers = {
            "Splice-Actor": meta.actor,
            "Splice-Command-Id": meta.command_id,
            "Splice-Correlation-Id": meta.correlation_id,
        }
        # One event on an existing aggregate that is also the reply's subject: one message,
        # no claim. A repeat is recognised by the aggregate itself (its recent command ids), so
        # the write needs no atomic batch — a batch costs several times a single publish.
        single = (
            decision.result_id is None
            and len(decision.save) == 1
            and decision.save[0] is target
            and len(target.pending_events) == 1
            and target.version > 1
            and self._probe_id(parsed) == target.id
        )
        claim_body = {"subject": subject, "id": result_id, "version": target.version, "back": back}
        claim = (self._claim_suffix(parsed.tenant, command_id), msgspec.json.encode(claim_body))
        try:
            if single:
                recordings = app.save(target, headers=headers)
            else:
                recordings = app.save(*decision.save, claim=claim, headers=headers)
        except (IntegrityError, OperationalError):
            self._evict(agg.id for agg in decision.save)
            raise
        seqs = [r.notification.id for r in recordings if r.domain_event.originator_id == target.id]
        return Ok(
            id=result_id,
            version=target.version,
            seq=max(seqs) if seqs else None,
            command_id=command_id,
        )
