"""Group commit: the writes of concurrent commands meet here on their way to JetStream.

The writes meet here, on the store connection's loop (`natsio.NatsThread`). A thread hands its
messages over with `submit` and waits on a `concurrent.futures.Future`; a command decided inline
on that loop (the command service's) gets an asyncio future instead. No task, no coroutine and
no loop wake-up per write: the loop looks once for whatever arrived since it last looked.

A write of several messages must be atomic, and goes as an atomic batch (ADR-50); writes that
arrive while commits are in flight wait and go together in the next one, up to `inflight`
commits at once. A one-message write goes out as a plain publish while fewer than `direct` are
in flight, and joins the batches beyond: on R1 with fsync always, concurrent single publishes
outrun atomic batches of the same writes (a batch's commit costs the server ~4.5 ms whatever
its size), at the same CPU per write. Writes that check the same subject never share a batch
nor run at the same time (the server checks a subject once per batch, and a concurrent check
would fail spuriously). If a shared batch is refused — one of its writes lost a concurrency
check — each of its writes is retried on its own, side by side, so a conflict only ever fails
the write that caused it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any

from .inline import wait
from .natsio import NatsThread
from .natswire import JetStreamAPIError, OutMsg

Result = tuple[int, int]  # (last stream sequence, count) of one write's messages
Answer = Future[Result] | asyncio.Future[Result]  # a thread's, or inline code's on the loop
Write = tuple[Sequence[OutMsg], set[str], Answer]

CHECKED_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"


class ConnectionLostError(ConnectionError):
    """The connection went before the write's answer came: its outcome is unknown."""


class GroupCommitter:
    """Commits the writes of concurrent threads together; see the module's doc."""

    def __init__(
        self,
        conn: NatsThread,
        *,
        max_msgs: int = 1000,
        timeout: float = 10.0,
        inflight: int = 2,
        direct: int = 0,
    ) -> None:
        self.conn = conn
        self.max_msgs = max_msgs
        self.timeout = timeout
        self.inflight = inflight
        self.direct = direct
        self._singles = 0  # one-message writes in flight as plain publishes
        self._incoming: list[Write] = []  # handed over by threads, not yet seen by the loop
        self._incoming_lock = threading.Lock()
        self._woken = False  # a look at `_incoming` is already scheduled on the loop
        self._queue: list[Write] = []  # on the loop: waiting for a commit
        self._busy: set[str] = set()  # checked subjects of the commits in flight
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._here: set[asyncio.Task[Any]] = set()  # inline commands publishing their write
        self._abandoned: set[asyncio.Task[Any]] = set()  # of those, the ones a lost connection failed
        self.commits = 0
        self.grouped = 0

    # -- the writer's side ----------------------------------------------------------------------

    def write(self, msgs: Sequence[OutMsg], timeout: float) -> Result:
        """Store one write and wait for it: from a thread, through `submit`; from inline code on
        the loop (`splice.events.inline`), a one-message write that may go direct is handed to
        the socket by the deciding command itself, at once, and its answer awaited there (no
        task between it and the server), any other queues."""
        if not self.conn.on_loop_thread():
            return self.submit(msgs).result(timeout)
        checked = _checked(msgs)
        if len(msgs) != 1 or self._singles >= self.direct or checked & self._busy:
            fut: asyncio.Future[Result] = self.conn.loop.create_future()
            self._enqueue(msgs, checked, fut)
            self._take_incoming()  # it starts now, or goes with the next batch
            return wait(fut)
        self._busy |= checked
        self._singles += 1
        try:
            return wait(self._publish_here(self.conn.publishing(msgs, timeout=self.timeout)))
        finally:
            self._singles -= 1
            self._busy -= checked
            self._start()

    async def _publish_here(self, sent: Coroutine[Any, Any, Result]) -> Result:
        task = asyncio.current_task()
        assert task is not None
        self._here.add(task)
        try:
            return await sent
        except asyncio.CancelledError:
            if task not in self._abandoned:
                raise
            task.uncancel()
            raise ConnectionLostError("the connection to NATS was lost (outcome unknown)") from None
        finally:
            self._here.discard(task)
            self._abandoned.discard(task)

    # -- any thread ----------------------------------------------------------------------------

    def submit(self, msgs: Sequence[OutMsg]) -> Future[Result]:
        """Queue one write (its messages stored atomically); the future gives its (last seq,
        count), or raises what the server answered (`JetStreamAPIError`), `ConnectionLostError`
        or another transport error."""
        fut: Future[Result] = Future()
        if self._enqueue(msgs, _checked(msgs), fut):
            self.conn.loop.call_soon_threadsafe(self._take_incoming)
        return fut

    def _enqueue(self, msgs: Sequence[OutMsg], checked: set[str], fut: Answer) -> bool:
        """Hand a write to the loop; True if the loop must be woken to look."""
        with self._incoming_lock:
            self._incoming.append((msgs, checked, fut))
            wake, self._woken = not self._woken, True
        return wake

    # -- the loop ------------------------------------------------------------------------------

    def abandon(self) -> None:
        """Fail the queued writes and the commits in flight: the connection is gone."""
        with self._incoming_lock:
            incoming, self._incoming = self._incoming, []
        for _, _, fut in (*self._queue, *incoming):
            _fail(fut, ConnectionLostError("the connection to NATS was lost (outcome unknown)"))
        self._queue.clear()
        for task in list(self._tasks):
            task.cancel()  # its done callback fails its writes and frees the subjects it checked
        self._abandoned |= self._here
        for task in list(self._here):
            task.cancel()  # `_publish_here` turns it into ConnectionLostError

    def _take_incoming(self) -> None:
        with self._incoming_lock:
            incoming, self._incoming = self._incoming, []
            self._woken = False
        self._queue += incoming
        self._start()

    def _start(self) -> None:
        if self._singles < self.direct:
            rest: list[Write] = []
            for item in self._queue:
                msgs, checked, _ = item
                if len(msgs) == 1 and self._singles < self.direct and not checked & self._busy:
                    self._busy |= checked
                    self._singles += 1
                    self._launch(partial(self._one, msgs, item[2]), [item], single=True)
                else:
                    rest.append(item)
            self._queue = rest
        while self._queue and self._running < self.inflight:
            group = self._take()
            if not group:
                return
            self._running += 1
            self._launch(partial(self._commit, group), group, single=False)

    def _launch(self, commit: Callable[[Callable[[], None]], Coroutine[Any, Any, None]],
                group: list[Write], *, single: bool) -> None:
        """Run one commit; whatever becomes of it (even cancelled before it starts), its
        subjects are freed, its writes answered, and the next commits started. The commit
        frees its subjects and starts the next ones itself (`release`) as soon as the server
        answered, before it answers its writes: the next commit then goes out ahead of the
        commands those answers resume."""
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if single:
                self._singles -= 1
            else:
                self._running -= 1
            for _, checked, _ in group:
                self._busy -= checked
            self._start()

        task = asyncio.ensure_future(commit(release))
        self._tasks.add(task)

        def done(finished: asyncio.Future[None]) -> None:
            self._tasks.discard(task)
            for _, _, write in group:
                _fail(write, ConnectionLostError("the commit was abandoned (outcome unknown)"))
            release()

        task.add_done_callback(done)

    def _take(self) -> list[Write]:
        group: list[Write] = []
        rest: list[Write] = []
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

    async def _commit(self, group: list[Write], release: Callable[[], None]) -> None:
        self.commits += 1
        if len(group) == 1:
            await self._one(group[0][0], group[0][2], release)
            return
        self.grouped += len(group)
        msgs = [m for item, _, _ in group for m in item]
        try:
            last, count = await self.conn.publish(msgs, timeout=self.timeout)
        except asyncio.CancelledError:
            raise
        except JetStreamAPIError:  # the server refused the batch: find the write(s) it refused
            await asyncio.gather(*(self._one(item, fut) for item, _, fut in group))
            return
        except Exception as e:
            release()
            for _, _, fut in group:
                _fail(fut, e)
            return
        release()
        seq = last - count + 1
        for item, _, fut in group:
            seq += len(item)
            if not fut.done():
                fut.set_result((seq - 1, len(item)))

    async def _one(self, msgs: Sequence[OutMsg], fut: Answer,
                   release: Callable[[], None] = lambda: None) -> None:
        try:
            result = await self.conn.publish(msgs, timeout=self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            release()
            _fail(fut, e)
        else:
            release()
            if not fut.done():
                fut.set_result(result)


def _checked(msgs: Sequence[OutMsg]) -> set[str]:
    """The subjects whose last sequence the write's messages check."""
    return {m.headers.get(CHECKED_SUBJECT, m.subject) for m in msgs}


def _fail(fut: Answer, error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)
