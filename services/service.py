"""The command service: NATS request/reply on ``splice.cmd.<tenant>.<aggregate>.<verb>``.

The transport only: several replicas share the load through one queue group; for each request
it checks the subject and the size, decodes and validates the body (msgspec), hands the command
to the executor (`executor.py`: idempotency, conflicts, retries) on a worker thread, and replies.
Every reply is structured; no traceback goes on the wire.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import nats
import structlog
from nats.aio.msg import Msg

from splice.events import subjects
from splice.events.contracts import ADMIN_TENANT, COMMANDS, HOST_TENANT, Failed, Ok, scope_of
from splice.events.wire import MAX_DEPTH, MAX_PAYLOAD, Token, too_deep

from . import senders
from .common_handlers import SpliceApplication
from .executor import CommandExecutor, Parsed, app_env, failed

__all__ = ["CommandService", "Parsed", "app_env", "failed", "parse"]

log = structlog.get_logger("splice.cmd")

QUEUE_GROUP = "splice-cmd"
_AT = re.compile(r" - at (?:`key` in )?`(\$[^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")

_encoder = msgspec.json.Encoder()
_DECODERS = {t: msgspec.json.Decoder(t) for t in COMMANDS.values()}


def parse(subject: str, data: bytes, max_payload: int = MAX_PAYLOAD) -> Parsed | Failed:
    """Subject, size, depth and body checks. Pure: no I/O. A refusal echoes the body's
    `command_id` whenever it can be read."""

    def refuse(code: str, message: str, field: str) -> Failed:
        return failed(code, message, field, _command_id(data[:max_payload]))

    parts = subjects.parse_command(subject)
    if parts is None:
        return refuse(
            "invalid", "command subjects are splice.cmd.<tenant>.<aggregate>.<verb>", "subject"
        )
    tenant, aggregate, verb = parts
    if not subjects.TENANT_TOKEN.fullmatch(tenant):
        return refuse("invalid", f"{tenant!r} is not a valid tenant", "subject")
    cmd_type = COMMANDS.get((aggregate, verb))
    if cmd_type is None:
        return refuse("invalid", f"unknown command {aggregate}.{verb}", "subject")
    scope = scope_of(aggregate, verb)
    expected = {"admin": ADMIN_TENANT, "host": HOST_TENANT}.get(scope)
    if (expected is not None and tenant != expected) or (expected is None and tenant.startswith("_")):
        where = {"admin": "the admin scope (_admin)", "host": "agents (_host)"}.get(scope, "a tenant")
        return refuse("forbidden", f"{aggregate}.{verb} belongs to {where}", "subject")
    if len(data) > max_payload:
        return refuse("invalid", f"payload of {len(data)} bytes exceeds {max_payload}", "$")
    if too_deep(data, MAX_DEPTH):
        return refuse("invalid", f"JSON nested deeper than {MAX_DEPTH} levels", "$")
    try:
        cmd = _DECODERS[cmd_type].decode(data)
    except msgspec.ValidationError as e:
        return refuse("invalid", *_describe(e))
    except msgspec.DecodeError as e:
        return refuse("invalid", str(e), "$")
    unknown = unknown_field(_plain.decode(data), _plain.decode(_encoder.encode(cmd)), "$")
    if unknown is not None:
        return refuse("invalid", f"unknown field `{unknown.rsplit('.', 1)[-1]}`", unknown)
    return Parsed(subject, tenant, aggregate, verb, cmd)


def unknown_field(sent: Any, known: Any, path: str) -> str | None:
    """The JSON path of the first key `sent` has that the decoded command does not know.

    `known` is the decoded command encoded again: every field it has (defaults included), so a
    key of `sent` missing from it at the same place is not a field of the contract. The tag
    (`type`) is the one key allowed beside the fields.
    """
    if isinstance(sent, dict) and isinstance(known, dict):
        for key, value in sent.items():
            if key not in known:
                if path == "$" and key == "type":
                    continue
                return f"{path}.{key}"
            found = unknown_field(value, known[key], f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(sent, list) and isinstance(known, list):
        for i, (a, b) in enumerate(zip(sent, known, strict=False)):
            found = unknown_field(a, b, f"{path}[{i}]")
            if found is not None:
                return found
    return None


class _Id(msgspec.Struct):
    command_id: Token | None = None


_id_decoder = msgspec.json.Decoder(_Id)
_plain = msgspec.json.Decoder()


def _command_id(data: bytes) -> str | None:
    """The command id of a body that was refused, when it can be read."""
    try:
        return _id_decoder.decode(data).command_id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


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
    """Serves commands until stopped. One instance per process; run several for more.

    `nc`, when given, is the process's NATS connection: the service and its monitors use it and
    leave it open on stop (its owner drains it); otherwise the service opens and drains its own.
    """

    def __init__(
        self,
        nats_url: str,
        *,
        env: dict[str, str] | None = None,
        workers: int = 32,
        max_attempts: int = 12,
        max_payload: int = MAX_PAYLOAD,
        queue: str = QUEUE_GROUP,
        nc: Any = None,
    ) -> None:
        self.nats_url = nats_url
        self.env = app_env(nats_url, **(env or {}))
        self.workers = workers
        self.max_attempts = max_attempts
        self.max_payload = max_payload
        self.queue = queue
        self.app: SpliceApplication | None = None
        self._executor: CommandExecutor | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splice-cmd")
        self._nc: Any = nc
        self._own_nc = nc is None
        self._sub: Any = None
        self._sem = asyncio.Semaphore(workers * 4)
        self._tasks: set[asyncio.Task[None]] = set()
        self.handled = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.app = await loop.run_in_executor(self._pool, lambda: SpliceApplication(env=self.env))
        self._executor = CommandExecutor(self.app, max_attempts=self.max_attempts)
        if self._own_nc:
            self._nc = await nats.connect(
                self.nats_url.split(","),
                name="splice-command-service",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
            )
        self._sub = await self._nc.subscribe(subjects.COMMANDS, queue=self.queue, cb=self._on_msg)
        await self._nc.flush()
        log.info("command service ready", subjects=subjects.COMMANDS, queue=self.queue)
        # -- monitors (services/monitors.py): they send their commands over NATS, like clients --
        from .monitors import start_monitors

        shared = None if self._own_nc else self._nc
        self._monitors = await start_monitors(self.nats_url, self.app.env, shared)
        # -- end monitors --

    async def stop(self) -> None:
        # -- monitors (services/monitors.py): stopped first, while the service still answers --
        from .monitors import stop_monitors

        await stop_monitors(getattr(self, "_monitors", None))
        self._monitors = None
        # -- end monitors --
        if self._nc is not None:
            try:
                if self._own_nc:
                    await self._nc.drain()
                elif self._sub is not None:
                    await self._sub.drain()  # no new requests; the connection stays its owner's
            except Exception as e:  # pragma: no cover - best effort
                log.warning("drain failed", error=str(e))
            self._sub = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        loop = asyncio.get_running_loop()
        if self.app is not None:
            app = self.app
            await loop.run_in_executor(self._pool, app.close)
            self.app = self._executor = None
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
        try:
            reply = await self.handle(msg.subject, msg.data, msg.headers)
        except Exception:  # every request gets a reply; the error goes to the log only
            log.exception("request failed unexpectedly", subject=msg.subject)
            reply = failed("internal", "internal error")
        if msg.reply:
            try:
                await msg.respond(_encoder.encode(reply))
            except Exception as e:  # connection lost: the client will retry
                log.warning("reply not sent", subject=msg.subject, error=str(e))

    async def handle(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> Ok | Failed:
        """`headers`: the request's, where the server names its sender (`Nats-Request-Info`)."""
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
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            if executor is None:
                raise RuntimeError("the command service is not started")
            reply, attempts = await loop.run_in_executor(
                self._pool, executor.execute, parsed, command_id
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

