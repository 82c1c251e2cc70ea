"""A NATS connection owned by a background event loop, callable from synchronous code.

The `eventsourcing` recorders are synchronous; nats-py is asyncio. `NatsThread` owns one nats-py
connection on an event loop (a daemon thread's, or a shared one) and runs coroutines on it for
any thread (`call`): concurrent commands share the connection without serialising on it.

It also offers the two JetStream operations nats-py 2.16 has no API for: the batched direct get
(one request, many replies, ended by a 204 status) and the atomic batch publish (ADR-50).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from .inline import wait
from .natsclient import connect, take_first
from .natswire import JetStreamAPIError, OutMsg, StoredMsg, acked, pub_command

T = TypeVar("T")

SHARED_CONNECTION: ContextVar[NatsThread | None] = ContextVar("splice_shared_nats", default=None)
"""Set while an application is built: its event store uses this connection (the command service
shares its own, on its loop) instead of opening one on a thread of its own."""


def _expire(answer: asyncio.Future[Msg]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError("no answer in time"))


SWEEP_S = 0.1  # how often unanswered requests are looked at for their deadline
WRITE_EVERY = 3  # writes handed to the socket together (`NatsThread._hand_over`)


async def _seq_of(answer: Coroutine[Any, Any, Msg], count: int) -> tuple[int, int]:
    """(last seq, count) of a publish of `count` messages, from its acknowledgement."""
    try:
        ack = acked(await answer)
    except TimeoutError:
        if count == 1:
            raise
        raise TimeoutError("atomic batch publish timed out") from None
    return int(ack["seq"]), int(ack.get("count", count))


async def settled(nc: Client) -> None:
    """Return once the server has processed everything `nc` sent before (subscriptions above all).

    nats-py's `flush()` writes its PING at once while a SUB may still wait in its buffer, so one
    PONG proves nothing (no responders in 2% of 2,000 tries): the second PING follows the buffer."""
    await nc.flush()
    await nc.flush()


class NatsThread:
    """One nats-py connection on a private event loop in a daemon thread."""

    def __init__(self, url: str, *, name: str = "splice", connect_timeout: float = 5.0) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name=f"nats-{name}", daemon=True)
        self._thread.start()
        self._loop_thread = self._thread.ident
        self._closed = False
        self._on_disconnect: list[Callable[[], None]] = []
        self.nc: Client = self.call(self._connect(name, connect_timeout), timeout=connect_timeout + 5)
        self.call(self._start_mux())

    @classmethod
    async def on_this_loop(cls, url: str, *, name: str = "splice",
                           connect_timeout: float = 5.0) -> NatsThread:
        """The connection on the running loop instead of a thread of its own: code run by
        `inline.run_inline` on this loop then waits for its calls without leaving the thread;
        other threads still `call` it as they would a thread's."""
        self = cls.__new__(cls)
        self.url = url
        self._loop = asyncio.get_running_loop()
        self._thread = None
        self._loop_thread = threading.get_ident()
        self._closed = False
        self._on_disconnect = []
        self.nc = await self._connect(name, connect_timeout)
        await self._start_mux()
        return self

    async def _connect(self, name: str, connect_timeout: float) -> Client:
        return await connect(self.url, name=name, connect_timeout=connect_timeout,
                             max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                             allow_reconnect=True, disconnected_cb=self._disconnected)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The connection's loop (to schedule work on it from other threads)."""
        return self._loop

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the connection's loop whenever the connection is lost."""
        self._on_disconnect.append(callback)

    async def _disconnected(self) -> None:
        for callback in self._on_disconnect:
            callback()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run `coro` on the connection's loop and wait for its result (inline, on the loop's
        own thread: the loop runs other work meanwhile)."""
        if threading.get_ident() == self._loop_thread:
            if self._thread is None:
                return wait(asyncio.wait_for(coro, timeout))
            raise RuntimeError("NatsThread.call from its own loop would deadlock")  # pragma: no cover
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def on_loop_thread(self) -> bool:
        """Whether this code runs on the thread of a loop it shares (inline code, mostly)."""
        return self._thread is None and threading.get_ident() == self._loop_thread

    async def _start_mux(self) -> None:
        """The connection's own inbox: answers to `_ask`, and the replies `_new_reply` routes."""
        self._inbox_prefix = self.nc.new_inbox()
        self._mux: dict[str, asyncio.Queue[Msg]] = {}
        self._answers: dict[str, asyncio.Future[Msg]] = {}  # one-answer requests (`_ask`)
        self._firsts: set[str] = set()  # of those, batches' first messages: empty when taken
        self._asked = 0
        # (deadline, token) of the `_ask`s, swept every SWEEP_S: one timer for all of them
        # instead of a TimerHandle made and cancelled per write (asyncio's timer heap compares
        # its handles in Python)
        self._deadlines: list[tuple[float, str]] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.write_every = WRITE_EVERY
        self._held = 0  # writes of `_ask` in nats-py's buffer, not yet handed to the socket
        self._write_soon: asyncio.Handle | None = None  # the turn's end hands them over

        async def route(msg: Msg) -> None:
            token = msg.subject.rsplit(".", 1)[-1]
            if token in self._answers:
                self._settle(token, msg)
                return
            q = self._mux.get(token)
            if q is not None:
                q.put_nowait(msg)

        take_first(await self.nc.subscribe(self._inbox_prefix + ".*", cb=route), self._answered)

    def _answered(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """An `_ask`'s answer, as it is read (`take_first`): no message object, queue or task
        step of nats-py's on the way (3 % of a command's instructions in `splice serve`, by
        callgrind). A message with headers (a status: no responders) or for another token goes
        on to `route`."""
        if headers is not None:
            return False
        token = subject[subject.rfind(b".") + 1:].decode()
        if token not in self._answers:
            return False
        self._settle(token, Msg(self.nc, subject.decode(), reply.decode(), data))
        return True

    def _settle(self, token: str, msg: Msg) -> None:
        """`msg` answers the `_ask` waiting on `token`, which is forgotten; a batch's first
        message answers only with an error (it is empty when the server took the message)."""
        answer = self._answers.pop(token)
        if not answer.done() and (token not in self._firsts or b'"error"' in msg.data):
            answer.set_result(msg)

    def _ask(self, msgs: Sequence[OutMsg], timeout: float) -> Coroutine[Any, Any, Msg]:
        """Send `msgs` now and return what waits for the one answer they get, on the
        connection's own inbox (nats-py's `request` draws a random token and wraps its wait in
        `wait_for` each time, a tenth of a command's CPU). The last message asks for the
        answer. Several messages are an atomic batch, and an error on the first also answers
        (any other reply to it is ignored: it is empty when the server took the message).

        Sent now, not when the coroutine starts: a decision that ends in a write hands it to
        the server within a few decisions (`_hand_over`), not after a whole turn of the loop,
        so the server's fsyncs overlap this loop's work. What cannot go to nats-py's buffer at
        once (no connection: its reconnect buffer) is sent when the coroutine starts. Await
        the coroutine: its end forgets the answer."""
        self._asked += 1
        token = f"a{self._asked}"
        first = f"{token}f" if len(msgs) > 1 else ""
        answer: asyncio.Future[Msg] = self._loop.create_future()
        self._answers[token] = answer
        if first:
            self._answers[first] = answer
            self._firsts.add(first)
        heapq.heappush(self._deadlines, (self._loop.time() + timeout, token))
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)
        last = len(msgs) - 1
        replies = [f"{self._inbox_prefix}.{token}" if i == last
                   else f"{self._inbox_prefix}.{first}" if i == 0 else "" for i in range(len(msgs))]
        sent = 0
        for m, reply in zip(msgs, replies, strict=True):
            if not self._send_now(m.subject, m.data, m.headers, reply):
                break
            sent += 1
        self._hand_over()
        return self._answer(msgs[sent:], replies[sent:], token, first, answer)

    def _sweep(self) -> None:
        """Fail the requests whose deadline has passed with no answer (up to SWEEP_S late)."""
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            answer = self._answers.get(heapq.heappop(deadlines)[1])
            if answer is not None:
                _expire(answer)
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep) if deadlines else None

    async def _answer(self, rest: Sequence[OutMsg], replies: list[str], token: str, first: str,
                      answer: asyncio.Future[Msg]) -> Msg:
        try:
            for m, reply in zip(rest, replies, strict=True):
                await self.send(m.subject, m.data, m.headers, reply)
            msg = await answer
        finally:
            self._answers.pop(token, None)
            if first:
                self._answers.pop(first, None)
                self._firsts.discard(first)
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    def _new_reply(self) -> tuple[str, str, asyncio.Queue[Msg]]:
        token = uuid.uuid4().hex
        q: asyncio.Queue[Msg] = asyncio.Queue()
        self._mux[token] = q
        return token, f"{self._inbox_prefix}.{token}", q

    # -- JetStream API helpers (run on the loop) ------------------------------------------

    async def api(self, subject: str, body: Mapping[str, Any] | None, timeout: float = 10.0) -> Any:
        payload = json.dumps(body).encode() if body is not None else b""
        msg = await self.nc.request(subject, payload, timeout=timeout)
        reply = json.loads(msg.data) if msg.data else {}
        err = reply.get("error")
        if err:
            raise JetStreamAPIError(
                err.get("code", 0), err.get("err_code", 0), err.get("description", "")
            )
        return reply

    async def direct_get_batch(
        self, stream: str, seq: int, subject: str, batch: int, timeout: float = 10.0
    ) -> tuple[list[StoredMsg], int]:
        """Messages on `subject` (may be a wildcard) from stream sequence `seq` on, at most `batch`.

        Returns the messages and the number still pending after them.
        """
        token, reply, q = self._new_reply()
        try:
            body = json.dumps(
                {"seq": max(seq, 1), "next_by_subj": subject, "batch": batch}
            ).encode()
            await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", body, reply=reply)
            out: list[StoredMsg] = []
            pending = 0
            while True:
                msg = await asyncio.wait_for(q.get(), timeout)
                hdrs = msg.headers or {}
                status = hdrs.get("Status")
                if status:
                    if status == "204":
                        pending = int(hdrs.get("Nats-Num-Pending", "0") or 0)
                        return out, pending
                    if status == "404":
                        return out, 0
                    raise JetStreamAPIError(int(status), 0, str(hdrs.get("Description", "")))
                out.append(
                    StoredMsg(
                        seq=int(hdrs["Nats-Sequence"]),
                        subject=hdrs["Nats-Subject"],
                        headers=hdrs,
                        data=msg.data,
                    )
                )
        finally:
            self._mux.pop(token, None)

    async def direct_get_last(
        self, stream: str, subject: str, timeout: float = 10.0
    ) -> StoredMsg | None:
        """The last message on `subject` (may be a wildcard), or None."""
        return await self.direct_get(stream, {"last_by_subj": subject}, timeout)

    async def direct_get(
        self, stream: str, request: Mapping[str, Any], timeout: float = 10.0
    ) -> StoredMsg | None:
        """One message by direct get (`request` as JetStream takes it), or None when none."""
        body = json.dumps(request).encode()
        msg = await self.nc.request(f"$JS.API.DIRECT.GET.{stream}", body, timeout=timeout)
        hdrs = msg.headers or {}
        status = hdrs.get("Status")
        if status == "404":
            return None
        if status:
            raise JetStreamAPIError(int(status), 0, str(hdrs.get("Description", "")))
        return StoredMsg(int(hdrs["Nats-Sequence"]), hdrs["Nats-Subject"], hdrs, msg.data)

    def publishing(self, msgs: Sequence[OutMsg], timeout: float = 10.0
                   ) -> Coroutine[Any, Any, tuple[int, int]]:
        """`publish`, its messages handed to the socket now (see `_ask`); on this loop."""
        if len(msgs) == 1:
            return _seq_of(self._ask(msgs, timeout), 1)
        batch_id = uuid.uuid4().hex
        last = len(msgs)
        batch = []
        for i, m in enumerate(msgs, 1):
            headers = {**m.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
            if i == last:
                headers["Nats-Batch-Commit"] = "1"
            batch.append(OutMsg(m.subject, m.data, headers))
        return _seq_of(self._ask(batch, timeout), last)

    async def publish(self, msgs: Sequence[OutMsg], timeout: float = 10.0) -> tuple[int, int]:
        return await self.publishing(msgs, timeout)  # one message, or an atomic batch

    def _send_now(self, subject: str, data: bytes, headers: Mapping[str, str] | None,
                  reply: str) -> bool:
        """Put one message in nats-py's pending buffer as its `publish` would, without the
        checks and the flusher's wake-up each publish costs; False if it cannot go now
        (reconnecting, closed, too large)."""
        nc = self.nc
        if not nc.is_connected or nc._transport is None or len(data) > nc.max_payload:
            return False
        cmd = pub_command(subject, reply, data, headers)
        nc._pending.append(cmd)
        nc._pending_data_size += len(cmd)
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(data)
        return True

    async def send(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None,
                   reply: str = "") -> None:
        """Publish on this loop and hand it to the socket at once (see `write_now`); nats-py's
        `publish` where `_send_now` cannot."""
        if not self._send_now(subject, data, headers, reply):
            await self.nc.publish(subject, data, reply=reply,
                                  headers=None if headers is None else dict(headers))
        self.write_now()

    def _hand_over(self) -> None:
        """A write is in nats-py's buffer: every `write_every`-th goes to the socket at once with
        those held before it, the rest at the end of the loop's turn. A socket write each cost
        the service and nats-server a system call and a wake-up per command."""
        self._held += 1
        if self._held >= self.write_every:
            self.write_now()
        elif self._write_soon is None:
            self._write_soon = self._loop.call_soon(self.write_now)

    def write_now(self) -> None:
        """Hand what nats-py holds for the socket to the transport now, not on the flusher
        task's next turn (which waits behind every callback ready on a busy loop)."""
        self._held = 0
        if self._write_soon is not None:
            self._write_soon.cancel()
            self._write_soon = None
        nc = self.nc
        if nc._pending_data_size and nc.is_connected and nc._transport is not None:
            nc._transport.writelines(nc._pending[:])
            nc._pending = []
            nc._pending_data_size = 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.call(self.nc.drain(), timeout=10)
        except Exception:  # noqa: S110 - best effort on shutdown
            pass
        if self._thread is None:
            return  # the loop is its owner's: its tasks and its end are theirs
        try:
            self.call(self._cancel_rest(), timeout=5)
        except Exception:  # noqa: S110 - best effort on shutdown
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()  # else "unclosed event loop" when it is collected

    async def _cancel_rest(self) -> None:
        """Cancel the loop's other tasks and wait for them, again where one swallowed it (3.11's
        `wait_for` can lose a cancel, and nats-py's reconnect loop then goes on)."""
        me = asyncio.current_task()
        for _ in range(10):
            if not (rest := [t for t in asyncio.all_tasks() if t is not me and not t.done()]):
                return
            for t in rest:
                t.cancel()
            await asyncio.wait(rest, timeout=0.2)
            for t in rest:
                if t.done() and not t.cancelled():
                    t.exception()  # taken: not logged as never retrieved
