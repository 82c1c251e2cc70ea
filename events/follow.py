"""One resumable reader of the event stream: the projector, the monitors and the agents use it.

A `Follower` reads SPLICE_EVENTS after a known stream sequence, on one or more subject filters,
and hands each message to an async handler as a `Delivery`, in stream order, once.

* Reading: an ephemeral pull consumer of its own (no acks, in memory, named, so that the create
  subject carries the filter and a tenant's pinned create permission allows it). On Splice's
  client (`natsclient`), its messages are taken as they are read and handled by a task of the
  follower's, in order; on nats-py's own, through the subscription's callback. Pull requests
  of `batch` messages keep two of them in flight; nothing more than two `batch` is ever asked
  for ahead of the handler, which is the back-pressure.
* Position: `position` is the stream sequence of the last message handled or set aside. When
  anything looks wrong it drops its consumer and makes a new one from ``position + 1``: no
  message and no heartbeat for three `heartbeat` seconds while the handler is idle (a stall, a
  lost pull request after a reconnect, a restarted server that forgot the consumer), a gap in
  the consumer's delivery sequence, or a status saying the consumer is gone. A message at or
  below `position` is never handed out again.
* Poison: when the handler raises, the message is logged, counted (`set_aside_total`, and the
  process's metric ``splice_events_set_aside_total{reader}``, `splice.events.metrics`), kept in
  `set_aside` (the newest `keep`) and given to `on_set_aside`; the follower goes on with the next
  one. Only cancellation, `stop` or `close()` end `run()`.
* Readiness: `caught_up` is set (and `on_caught_up(position)` called, once) when everything the
  filter matched in the stream when the follower started has been handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from . import natsclient
from .metrics import count_set_aside
from .subjects import EVENTS, STREAM, topic_of

log = structlog.get_logger("splice.follow")

_STATUS = "Status"
_DESCRIPTION = "Description"
_PENDING_MSGS = "Nats-Pending-Messages"
_HEARTBEAT = "100"
_EXPIRED = "408"
_NO_MESSAGES = "404"


class Delivery(msgspec.Struct, frozen=True, array_like=True):
    """One stored message as a handler gets it. A msgspec Struct: made in a tenth of a frozen
    dataclass's time (one per message read), and sent to another process as it is, a list
    of them one msgpack array (`splice.projections.parallel`)."""

    seq: int  # stream sequence
    subject: str
    topic: str  # the Splice-Topic header, else the subject's last token
    data: bytes
    headers: Mapping[str, str]
    time_ns: int  # when the stream stored it (nanoseconds since the epoch)
    pending: int  # messages matching the filter after this one, when it was sent


@dataclass(frozen=True, slots=True)
class SetAside:
    """A message the handler could not take: where it is and what went wrong."""

    seq: int
    subject: str
    topic: str
    error: str
    time_ns: int = 0  # when the stream stored it (0: not known)
    headers: Mapping[str, str] = field(default_factory=dict)  # the message's headers


Handler = Callable[[Delivery], Awaitable[None]]
OnSetAside = Callable[[SetAside], Awaitable[None] | None]


def reply_fields(reply: str) -> tuple[int, int, int, int]:
    """(stream seq, consumer seq, store time ns, pending) from a delivery's reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9 tokens), or the
    v2 form with domain and account hash after ``$JS.ACK`` (12 or more). Cheaper than nats-py's
    ``msg.metadata``, which builds several objects per message.
    """
    t = reply.split(".")
    i = 5 if len(t) == 9 else 7
    return int(t[i]), int(t[i + 1]), int(t[i + 2]), int(t[i + 3])


@dataclass
class _Session:
    """One consumer and the inbox its messages arrive on; dropped whole when anything is off."""

    consumer: str
    inbox: str
    next_subject: str  # where pull requests go
    next_cseq: int = 1
    outstanding: int = 0  # messages asked for and neither delivered nor expired
    active: float = field(default_factory=time.monotonic)  # last sign of life
    busy: bool = False  # the handler is running (a slow handler is not a stall)
    broken: str = ""  # why this consumer must be replaced
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    kept: deque[tuple[bytes, bytes, bytes, bytes | None]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # `kept` has messages
    sub: Any = None


class Follower:
    """Follows `subjects` of `stream` after sequence `after`; see the module docstring."""

    def __init__(
        self,
        js: Any,
        subjects: str | Sequence[str],
        handler: Handler,
        *,
        after: int = 0,
        start_time: datetime | None = None,
        stream: str = STREAM,
        name: str = "follower",
        batch: int = 1000,
        heartbeat: float = 2.0,
        on_set_aside: OnSetAside | None = None,
        on_caught_up: Callable[[int], None] | None = None,
        keep: int = 100,
        reader: str | None = None,
    ) -> None:
        self.js = js
        self.subjects = [subjects] if isinstance(subjects, str) else list(subjects)
        self.handler = handler
        self.position = after
        self.start_time = start_time
        self.stream = stream
        self.name = name
        self.reader = reader or name  # the metric's label: a bounded name (no host, no tenant)
        self.batch = max(2, batch)
        self.heartbeat = heartbeat
        self.expires = max(30.0, 10 * heartbeat)
        self.on_set_aside = on_set_aside
        self.on_caught_up = on_caught_up
        self.caught_up = asyncio.Event()
        self.set_aside: deque[SetAside] = deque(maxlen=keep)
        self.set_aside_total = 0
        self.resets = 0  # consumers replaced after a stall, gap or loss
        self._until: int | None = None
        self._done = False
        self._session: _Session | None = None
        self._cleanup: set[asyncio.Task[None]] = set()
        self._prefix = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:32]

    # -- the caller's side ----------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None, *, until: int | None = None) -> int:
        """Follow until `stop` is set, `close()` is called or (with `until`) the message at that
        sequence has been handled. Returns `position`. Errors are logged and retried."""
        stop = stop or asyncio.Event()
        self._until = until
        self._done = False
        backoff = 0.1
        try:
            while not self._finished(stop):
                try:
                    await self._follow(stop)
                    backoff = 0.1
                    continue
                except asyncio.CancelledError:
                    raise
                except NotFoundError:
                    if backoff == 0.1:  # once per wait, not at every retry
                        log.info("stream not there yet; waiting", follower=self.name,
                                 stream=self.stream)
                except Exception as e:
                    log.warning("follower could not read; retrying", follower=self.name,
                                error=repr(e), from_seq=self.position + 1)
                await wait_any((stop,), backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            await self._settle_cleanup()
        return self.position

    async def _settle_cleanup(self) -> None:
        """Give the consumers' deletions in the background a second, then cancel and await
        those still waiting (such a consumer expires on the server once inactive)."""
        if not self._cleanup:
            return
        _, waiting = await asyncio.wait(self._cleanup, timeout=1.0)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    def close(self) -> None:
        """Make `run()` return (after the message in hand, if a handler calls it)."""
        self._done = True
        if self._session is not None:
            self._session.wake.set()

    def _finished(self, stop: asyncio.Event) -> bool:
        reached = self._until is not None and self.position >= self._until
        return self._done or reached or stop.is_set()

    # -- one consumer -----------------------------------------------------------------------
    async def _follow(self, stop: asyncio.Event) -> None:
        """Read through one consumer until it breaks or the follower is done."""
        nc, api = self.js._nc, self.js._prefix  # nats-py has no public accessors for these
        consumer = f"{self._prefix}-{uuid.uuid4().hex[:16]}"
        s = _Session(consumer, nc.new_inbox(), f"{api}.CONSUMER.MSG.NEXT.{self.stream}.{consumer}")
        self._session = s

        async def on_msg(msg: Any) -> None:
            await self._on_msg(s, msg.subject, msg.reply, msg.data, msg.headers)

        def take(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            s.kept.append((subject, reply, data, headers))  # at most two pulls' worth
            s.arrived.set()

        drain: asyncio.Task[None] | None = None
        try:
            s.sub = await nc.subscribe(s.inbox, cb=on_msg, pending_msgs_limit=4 * self.batch + 64)
            if natsclient.take_raw(s.sub, take):
                drain = asyncio.create_task(self._drain(s))
            info = await self.js.add_consumer(self.stream, config=self._config(s.consumer))
            if info.num_pending == 0:
                self._reached_end()
            await self._pull(s)
            s.active = time.monotonic()
            while not self._finished(stop):
                if drain is not None and drain.done():
                    s.broken = s.broken or f"reading failed: {drain.exception()!r}"
                if s.broken:
                    self._replace(s.broken)
                    return
                if not s.busy and time.monotonic() - s.active > 3 * self.heartbeat:
                    self._replace("no messages nor heartbeats")
                    return
                s.wake.clear()
                await wait_any((stop, s.wake), self.heartbeat)
        finally:
            s.closed = True
            self._session = None
            if drain is not None:
                drain.cancel()
                with contextlib.suppress(BaseException):
                    await drain
            if s.sub is not None:
                with contextlib.suppress(Exception):
                    await s.sub.unsubscribe()
            self._forget(s.consumer)

    def _config(self, name: str) -> ConsumerConfig:
        cfg = ConsumerConfig(
            name=name,
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=max(60.0, 10 * self.expires),
        )
        if self.position > 0 or self.start_time is None:
            cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = self.position + 1
        else:
            cfg.deliver_policy = DeliverPolicy.BY_START_TIME
            cfg.opt_start_time = self.start_time
        if len(self.subjects) == 1:
            cfg.filter_subject = self.subjects[0]
        else:
            cfg.filter_subjects = self.subjects
        return cfg

    async def _pull(self, s: _Session) -> None:
        """Ask for `batch` more when no more than one `batch` is still to come."""
        if s.outstanding > self.batch or s.closed:
            return
        request = {
            "batch": self.batch,
            "expires": int(self.expires * 1e9),
            "idle_heartbeat": int(self.heartbeat * 1e9),
        }
        s.outstanding += self.batch
        await self.js._nc.publish(s.next_subject, json.dumps(request).encode(), reply=s.inbox)

    def _replace(self, why: str) -> None:
        self.resets += 1
        log.warning("follower replaces its consumer", follower=self.name, reason=why,
                    from_seq=self.position + 1)

    def _forget(self, consumer: str) -> None:
        """Delete a consumer in the background (a tenant may not be allowed: it then expires)."""

        async def delete() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.js.delete_consumer(self.stream, consumer), 2.0)

        task = asyncio.create_task(delete())
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    # -- messages -------------------------------------------------------------------------
    async def _drain(self, s: _Session) -> None:
        """The messages `take_raw` kept, in the order they were read, one at a time."""
        nc = self.js._nc
        while not s.closed:
            if not s.kept:
                s.arrived.clear()
                await s.arrived.wait()
                continue
            subject, reply, data, raw = s.kept.popleft()
            headers = await natsclient.read_headers(nc, raw)
            await self._on_msg(s, subject.decode(), reply.decode(), data, headers)

    async def _on_msg(self, s: _Session, subject: str, reply: str, data: bytes,
                      headers: Mapping[str, str] | None) -> None:
        if s.closed or s.broken:
            return
        s.active = time.monotonic()
        headers = headers or {}
        if not reply:
            await self._on_status(s, headers)
            return
        try:
            seq, cseq, time_ns, pending = reply_fields(reply)
        except (ValueError, IndexError):
            s.broken = f"not a JetStream delivery: {reply!r}"
            s.wake.set()
            return
        if cseq != s.next_cseq:
            s.broken = f"delivery gap: consumer seq {cseq}, expected {s.next_cseq}"
            s.wake.set()
            return
        s.next_cseq += 1
        s.outstanding -= 1
        if s.outstanding <= self.batch:
            await self._pull(s)
        if seq <= self.position or self._done:
            return
        if self._until is not None and seq > self._until:
            self.close()
            return
        d = Delivery(seq, subject, topic_of(subject, headers), data, headers, time_ns, pending)
        s.busy = True
        try:
            await self.handler(d)
        except Exception as e:
            await self._set_aside(d, e)
        finally:
            s.busy = False
            s.active = time.monotonic()
        self.position = seq
        if pending == 0:
            self._reached_end()
        if self._until is not None and seq >= self._until:
            self.close()

    async def _on_status(self, s: _Session, headers: Mapping[str, str]) -> None:
        code = headers.get(_STATUS, "")
        if code in (_HEARTBEAT, _NO_MESSAGES):
            return
        if code == _EXPIRED:  # a pull request ended; what it did not deliver is not coming
            s.outstanding -= int(headers.get(_PENDING_MSGS) or 0)
            await self._pull(s)
            return
        s.broken = f"status {code} {headers.get(_DESCRIPTION, '')}".strip()
        s.wake.set()

    async def _set_aside(self, d: Delivery, e: Exception) -> None:
        rec = SetAside(d.seq, d.subject, d.topic, f"{type(e).__name__}: {e}", d.time_ns,
                       d.headers)
        self.set_aside_total += 1
        self.set_aside.append(rec)
        count_set_aside(self.reader)
        log.warning("event set aside", follower=self.name, seq=d.seq, subject=d.subject,
                    topic=d.topic, error=rec.error)
        if self.on_set_aside is None:
            return
        try:
            res = self.on_set_aside(rec)
            if inspect.isawaitable(res):
                await res
        except Exception:
            log.exception("recording a set-aside event failed", follower=self.name, seq=d.seq)

    def _reached_end(self) -> None:
        if self.caught_up.is_set():
            return
        self.caught_up.set()
        log.info("follower caught up with the stream", follower=self.name, seq=self.position)
        if self.on_caught_up is not None:
            self.on_caught_up(self.position)


async def last_seq(js: Any, subject: str = EVENTS, stream: str = STREAM) -> int:
    """The stream sequence of the newest message on `subject` (0 when there is none)."""
    try:
        msg = await js.get_last_msg(stream, subject, direct=True)
    except NotFoundError:  # an empty subject (a 404), or no stream yet
        return 0
    return int(msg.seq)


async def wait_any(events: Sequence[asyncio.Event], timeout: float) -> None:
    """Wait until one of `events` is set, or `timeout` seconds (no error either way)."""
    if any(e.is_set() for e in events):
        return
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
