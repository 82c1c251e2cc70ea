"""A NATS connection owned by a background event loop, callable from synchronous code.

The `eventsourcing` recorders are synchronous and are called from many threads at once; nats-py is
asyncio. `NatsThread` runs one event loop in a daemon thread, owns one nats-py connection there,
and runs coroutines on it for any calling thread (`call`). Many calls are in flight at once, so
concurrent commands share the connection without serialising on it.

It also offers the two JetStream operations nats-py 2.16 has no API for: the batched direct get
(one request, many replies, ended by a 204 status) and the atomic batch publish (ADR-50).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

T = TypeVar("T")


class JetStreamAPIError(Exception):
    """An error answered by the JetStream API (code, err_code and description as sent)."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


@dataclass(frozen=True, slots=True)
class StoredMsg:
    """One message read from a stream by direct get."""

    seq: int
    subject: str
    headers: Mapping[str, str]
    data: bytes


@dataclass(frozen=True, slots=True)
class OutMsg:
    """One message to publish."""

    subject: str
    data: bytes
    headers: dict[str, str]


class NatsThread:
    """One nats-py connection on a private event loop in a daemon thread."""

    def __init__(self, url: str, *, name: str = "splice", connect_timeout: float = 5.0) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"nats-{name}", daemon=True)
        self._thread.start()
        self._closed = False
        self._on_disconnect: list[Callable[[], None]] = []
        self.nc: Client = self.call(
            nats.connect(
                [u.strip() for u in url.split(",") if u.strip()],
                name=name,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                allow_reconnect=True,
                disconnected_cb=self._disconnected,
            ),
            timeout=connect_timeout + 5,
        )
        self._inbox_prefix = self.nc.new_inbox()
        self._mux: dict[str, asyncio.Queue[Msg]] = {}
        self.call(self._start_mux())

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
        """Run `coro` on the connection's loop and wait for its result."""
        if threading.current_thread() is self._thread:  # pragma: no cover - misuse guard
            raise RuntimeError("NatsThread.call from its own loop would deadlock")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    async def _start_mux(self) -> None:
        async def route(msg: Msg) -> None:
            token = msg.subject.rsplit(".", 1)[-1]
            q = self._mux.get(token)
            if q is not None:
                q.put_nowait(msg)

        await self.nc.subscribe(self._inbox_prefix + ".*", cb=route)

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

    async def publish(self, msgs: Sequence[OutMsg], timeout: float = 10.0) -> tuple[int, int]:
        """Publish one message, or several as one atomic batch. Returns (last seq, count)."""
        if len(msgs) == 1:
            m = msgs[0]
            resp = await self.nc.request(m.subject, m.data, timeout=timeout, headers=m.headers)
            ack = json.loads(resp.data)
            err = ack.get("error")
            if err:
                raise JetStreamAPIError(
                    err.get("code", 0), err.get("err_code", 0), err.get("description", "")
                )
            return int(ack["seq"]), 1
        batch_id = uuid.uuid4().hex
        first_token, first_reply, first_q = self._new_reply()
        token, reply, q = self._new_reply()
        try:
            last = len(msgs)
            for i, m in enumerate(msgs, 1):
                headers = dict(m.headers)
                headers["Nats-Batch-Id"] = batch_id
                headers["Nats-Batch-Sequence"] = str(i)
                if i == last:
                    headers["Nats-Batch-Commit"] = "1"
                    await self.nc.publish(m.subject, m.data, reply=reply, headers=headers)
                elif i == 1:
                    await self.nc.publish(m.subject, m.data, reply=first_reply, headers=headers)
                else:
                    await self.nc.publish(m.subject, m.data, headers=headers)
            # The first message's reply is empty on success; an error there (or on the commit)
            # rejects the batch. Wait for whichever decides.
            while True:
                get_commit = asyncio.ensure_future(q.get())
                get_first = asyncio.ensure_future(first_q.get())
                done, _ = await asyncio.wait(
                    {get_commit, get_first}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for f in (get_commit, get_first):
                    if f not in done:
                        f.cancel()
                if not done:
                    raise TimeoutError("atomic batch publish timed out")
                for f in done:
                    data = f.result().data
                    if not data:
                        continue
                    ack = json.loads(data)
                    err = ack.get("error")
                    if err:
                        raise JetStreamAPIError(
                            err.get("code", 0), err.get("err_code", 0), err.get("description", "")
                        )
                    if f is get_commit:
                        return int(ack["seq"]), int(ack.get("count", last))
        finally:
            self._mux.pop(first_token, None)
            self._mux.pop(token, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.call(self.nc.drain(), timeout=10)
        except Exception:  # noqa: S110 - best effort on shutdown
            pass
        try:
            self.call(self._cancel_rest(), timeout=5)
        except Exception:  # noqa: S110 - best effort on shutdown
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _cancel_rest(self) -> None:
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


class GroupCommitter:
    """Commits the writes of concurrent callers together, as atomic batches.

    A JetStream atomic batch costs about the same for two messages as for a hundred (the server
    stages and commits it as a whole), so writes that arrive while commits are in flight wait
    and go together in the next one; up to `inflight` commits run at once. Writes that check
    the same subject never share a batch nor run at the same time (the server checks a subject
    once per batch, and a concurrent check would fail spuriously). If a shared batch is refused
    — one of its writes lost a concurrency check — each write is retried on its own, so a
    conflict only ever fails the write that caused it. Runs on the connection's loop; `submit`
    returns (last seq, count) of the caller's messages.
    """

    def __init__(
        self, conn: NatsThread, *, max_msgs: int = 1000, timeout: float = 10.0, inflight: int = 2
    ) -> None:
        self.conn = conn
        self.max_msgs = max_msgs
        self.timeout = timeout
        self.inflight = inflight
        self._queue: list[tuple[Sequence[OutMsg], set[str], asyncio.Future[tuple[int, int]]]] = []
        self._busy: set[str] = set()  # checked subjects of the commits in flight
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.commits = 0
        self.grouped = 0

    def abandon(self) -> None:
        """Cancel the commits in flight and drop the queued ones: the connection is gone."""
        for _, _, fut in self._queue:
            fut.cancel()
        self._queue.clear()
        for task in list(self._tasks):
            task.cancel()  # its `finally` frees the subjects it checked

    async def submit(self, msgs: Sequence[OutMsg]) -> tuple[int, int]:
        if len(msgs) == 1:
            # One message is one publish: cheaper alone than inside a batch, and publishes
            # of different callers already run side by side on the server.
            return await self.conn.publish(msgs, timeout=self.timeout)
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._queue.append((msgs, self._checked(msgs), fut))
        self._start()
        return await fut

    @staticmethod
    def _checked(msgs: Sequence[OutMsg]) -> set[str]:
        return {
            m.headers.get("Nats-Expected-Last-Subject-Sequence-Subject", m.subject)
            for m in msgs
            if "Nats-Expected-Last-Subject-Sequence" in m.headers
        }

    def _start(self) -> None:
        while self._queue and self._running < self.inflight:
            group = self._take()
            if not group:
                return
            self._running += 1
            task = asyncio.ensure_future(self._commit(group))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        self._start()

    def _take(self) -> list[tuple[Sequence[OutMsg], set[str], asyncio.Future[tuple[int, int]]]]:
        group: list[tuple[Sequence[OutMsg], set[str], asyncio.Future[tuple[int, int]]]] = []
        rest: list[tuple[Sequence[OutMsg], set[str], asyncio.Future[tuple[int, int]]]] = []
        size = 0
        taken: set[str] = set()
        for item in self._queue:
            msgs, checked, _ = item
            clash = checked & (taken | self._busy)
            if clash or (group and size + len(msgs) > self.max_msgs):
                rest.append(item)
                continue
            group.append(item)
            taken |= checked
            size += len(msgs)
        self._queue = rest
        self._busy |= taken
        return group

    async def _commit(
        self, group: list[tuple[Sequence[OutMsg], set[str], asyncio.Future[tuple[int, int]]]]
    ) -> None:
        self.commits += 1
        try:
            if len(group) == 1:
                await self._one(group[0][0], group[0][2])
                return
            self.grouped += len(group)
            msgs = [m for item, _, _ in group for m in item]
            try:
                last, count = await self.conn.publish(msgs, timeout=self.timeout)
            except JetStreamAPIError:
                for item, _, fut in group:  # find the write(s) that were refused
                    await self._one(item, fut)
                return
            except Exception as e:
                for _, _, fut in group:
                    if not fut.done():
                        fut.set_exception(e)
                return
            seq = last - count + 1
            for item, _, fut in group:
                seq += len(item)
                if not fut.done():
                    fut.set_result((seq - 1, len(item)))
        finally:
            for _, checked, _ in group:
                self._busy -= checked

    async def _one(self, msgs: Sequence[OutMsg], fut: asyncio.Future[tuple[int, int]]) -> None:
        try:
            result = await self.conn.publish(msgs, timeout=self.timeout)
        except Exception as e:
            if not fut.done():
                fut.set_exception(e)
        else:
            if not fut.done():
                fut.set_result(result)
