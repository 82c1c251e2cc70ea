"""A bounded rebuild on two cores: this process reads the stream, a child folds and commits.

`run_projection` reads, decodes, folds and commits in one process, so a rebuild runs at the
speed of one core whatever the machine has: reading (nats-py's parsing of each message and its
headers) takes about as long as folding and committing. Here the child process (forked: it
starts in milliseconds and needs nothing but the database's URL) owns the `Projector` and its
store, and the parent only follows the stream and hands it chunks of deliveries over a pipe
(msgpack: an array of `Delivery` structs, with only the headers the read side reads). While
the child folds chunk N, the parent reads N+1: each side on its own core.

A transaction is `batch_size` events: the child folds the chunks of one into its row caches
and takes their writes once (`Projector.prepare(take=False)`), so that a row that many events
change is written once per transaction, not once per chunk, and commits it (the parent reads
on meanwhile). Each chunk's audit rows are written as soon as it is folded, into the
transaction the take commits (`Store.stage`). The child says at each commit point
how far its commits have gone, and hands the next transaction to the committer only when the
parent has heard it (so that an `on_batch` that stops the run leaves the store where it was
told).

The rows are those `run_projection` makes: the child applies the same deliveries in the same
order with the same `Projector`, and the rows do not depend on where batches end
(`tests/projections/test_parallel_rebuild.py`, `test_rebuild_transactions.py`). Only runs
with an end (`until`) go this way: rebuild, verify and the replay benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from splice.events import subjects
from splice.events.collector import stop_collector
from splice.events.follow import Delivery, Follower, wait_any

from .envelope import READ_HEADERS
from .folding import Refold
from .projector import PreparedBatch, Projector
from .reading import PULL_BATCH, Progress, end_reading
from .store import open_store
from .views import VIEWS, View

_END, _GO = b"end", b"go"
CHUNK = 5000  # events handed to the child at a time (a transaction may span several)
# Events per transaction of a rebuild: the more, the fewer times a row many of them change is
# written; what is held until the take (the audit rows, the encoded writes) grows with it, and
# an interrupted rebuild resumes from the last commit.
REBUILD_BATCH = 50_000
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_deliveries = msgspec.msgpack.Decoder(list[Delivery]).decode  # a chunk, as the parent sent it


class _Child:
    """The child's side of the pipe: chunks to fold, the parent's go at each commit point."""

    def __init__(self, conn: Connection, projector: Projector, batch_size: int) -> None:
        self.conn, self.projector, self.batch_size = conn, projector, batch_size
        self.early: deque[bytes] = deque()  # what came while waiting for a go, in order
        self.held: list[bytes] = []  # the chunks folded since the last take, as they came
        self.held_n = 0  # events in them
        self.previous = 0  # events in the transaction committing

    def say(self, kind: str, value: Any, n: int = 0) -> None:
        self.conn.send_bytes(_encode((kind, value, n)))

    def next(self) -> bytes:
        return self.early.popleft() if self.early else self.conn.recv_bytes()

    def run(self) -> None:
        """Fold chunks until the end, committing at each commit point the parent agrees to (a
        parent that stops the run closes the pipe: `recv_bytes` then raises EOFError)."""
        while (raw := self.next()) != _END:
            self.held.append(raw)
            chunk = _deliveries(raw)
            self.held_n += len(chunk)
            try:
                self.projector.prepare_deliveries(chunk, take=False)
            except Refold:  # a view failed on an event: all of them again, setting it aside
                again = [d for r in self.held for d in _deliveries(r)]
                job = self.projector.prepare_deliveries(again)  # None: went in event by event
                self.commit_point(job, self.held_n if job else 0, 0 if job else self.held_n)
            else:
                if self.held_n >= self.batch_size or self.projector.over_limit():
                    self.commit_point(self.projector.take(), self.held_n)
        job = self.projector.take()
        if job is not None:
            self.commit_point(job, self.held_n)

    def commit_point(self, job: PreparedBatch | None, n: int, done: int = 0) -> None:
        """Say where the commits are (with `done` events committed meanwhile) and hand the
        committer `job` (n events) once the parent says go; chunks that come first wait."""
        self.held.clear()
        self.held_n = 0
        self.say("at", self.projector.flush(), self.previous + done)
        while (raw := self.conn.recv_bytes()) != _GO:
            self.early.append(raw)
        self.projector.submit(job, wait=False)
        self.previous = n


def _child(conn: Connection, parents: Connection, db_url: str, views: Sequence[View],
           reader: str | None, batch_size: int) -> None:
    """The child's whole life: fold what arrives, commit it, say where the commits are.

    Chunks are folded as they come, and their writes are taken as one transaction once
    `batch_size` events (or a full row cache) are folded: a row that many of them change is
    written once. Transaction N+1 is folded once N is in, while the parent reads on, and is
    handed to the committer only once the parent has heard that N is in (its `on_batch` may
    stop the run: then nothing after N is committed, as with `run_projection`). When the
    parent goes, the child sees the pipe end, lets the commit in flight finish and leaves."""
    parents.close()  # the parent's end, copied by the fork: else its close would never be seen
    for sig in (signal.SIGINT, signal.SIGTERM):  # not the parent's handlers (asyncio's)
        signal.signal(sig, signal.SIG_DFL)
    stop_collector()  # a process with an end; its folds make no cycles
    store = projector = None
    try:
        store = open_store(db_url)
        projector = Projector(store, views, reader=reader)
        side = _Child(conn, projector, batch_size)
        side.say("start", projector.position)
        side.run()
        side.say("in", projector.flush(), side.previous)
        if store.deferred:
            store.build_indexes()
        side.say("done", projector.position)
    except EOFError:
        pass  # the parent stopped: what was not handed to the committer is not committed
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send_bytes(_encode(("error", traceback.format_exc(), 0)))
    finally:
        if projector is not None:
            with contextlib.suppress(BaseException):
                projector.close()  # the commit in flight, if any, goes in
        if store is not None:
            store.close()
        conn.close()


async def project_until(
    js: Any,
    db_url: str,
    until: int,
    *,
    views: Sequence[View] = VIEWS,
    reader: str | None = "projector",
    batch_size: int = REBUILD_BATCH,
    on_batch: Callable[[Progress], None] | None = None,
    chunk: int = CHUNK,
) -> int:
    """Apply the stream up to `until` to the read models at `db_url`, folding in a child
    process, `batch_size` events per transaction; returns the position reached (the views'
    lowest)."""
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=_child, args=(theirs, mine, db_url, tuple(views), reader,
                                             batch_size),
                        name="splice-fold", daemon=True)
    child.start()
    theirs.close()
    # One thread sends (chunks and go's, in the order given), one receives.
    sender = ThreadPoolExecutor(1, thread_name_prefix="splice-fold-send")
    receiver = ThreadPoolExecutor(1, thread_name_prefix="splice-fold-recv")
    loop = asyncio.get_running_loop()

    async def send(data: bytes) -> None:
        await loop.run_in_executor(sender, mine.send_bytes, data)

    async def hear() -> tuple[str, Any, int]:
        try:
            kind, value, n = _decode(await loop.run_in_executor(receiver, mine.recv_bytes))
        except EOFError:
            raise RuntimeError("the fold process ended without a word") from None
        if kind == "error":
            raise RuntimeError(f"the fold process failed:\n{value}")
        return str(kind), value, int(n)

    finished = False
    feeding: asyncio.Task[None] | None = None
    listening: asyncio.Task[int] | None = None
    try:
        _, position, _ = await hear()
        progress = Progress(position, until, started=loop.time())

        async def listen() -> int:
            """Each commit point: report it, then say go; until the child is done."""
            while True:
                kind, done, n = await hear()
                progress.position, progress.applied = int(done), progress.applied + n
                if on_batch is not None and n:
                    on_batch(progress)
                if kind == "done":
                    return int(done)
                if kind == "at":
                    await send(_GO)

        listening = asyncio.create_task(listen())
        if position < until:
            feeding = asyncio.create_task(
                _feed(js, send, position, until, min(batch_size, chunk)))
            await asyncio.wait((feeding, listening), return_when=asyncio.FIRST_COMPLETED)
            if feeding.done() and not feeding.cancelled() and \
                    isinstance(feeding.exception(), OSError):
                await asyncio.wait((listening,), timeout=5)  # a closed pipe: the child's word
            if listening.done():
                listening.result()  # the child failed (or on_batch raised): say why
                raise RuntimeError("the fold process ended before the stream did")
            feeding.result()
        await send(_END)
        position = await listening
        finished = True
        return position
    finally:
        if feeding is not None and not feeding.done():
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding
        # Stopped early (on_batch raised, cancelled, an error): the child is told by the end of
        # the pipe, and a thread still waiting on the pipe returns once the child is gone;
        # the pipe is closed after that, never under a waiting thread.
        try:
            if not finished:
                child.terminate()  # SIGTERM: default action, the child's transaction rolls back
            await asyncio.to_thread(child.join, 30)
            if child.is_alive():
                child.kill()
                await asyncio.to_thread(child.join, 5)
            if listening is not None and not listening.done():
                listening.cancel()  # its thread returns: the child is gone
                with contextlib.suppress(BaseException):
                    await listening
        finally:
            sender.shutdown(wait=False)
            receiver.shutdown(wait=False)
            mine.close()


async def _feed(js: Any, send: Callable[[bytes], Awaitable[None]],
                after: int, until: int, chunk: int) -> None:
    """Follow the stream from `after` to `until`, handing the child a chunk at a time (the
    next one is encoded and sent while the child folds this one)."""
    buf: list[Delivery] = []
    ready, room, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    room.set()

    async def take(d: Delivery) -> None:
        h = d.headers  # the child gets only those it reads: less to encode, send and decode
        buf.append(Delivery(d.seq, d.subject, d.topic, d.data,
                            {k: h[k] for k in READ_HEADERS if k in h}, d.time_ns, d.pending))
        if len(buf) >= chunk or d.seq >= until:
            ready.set()
        if len(buf) >= 4 * chunk:
            room.clear()
            await room.wait()

    follower = Follower(js, subjects.EVENTS, take, after=after, name="projector-rebuild",
                        batch=min(chunk, PULL_BATCH))
    reading = asyncio.create_task(follower.run(stop, until=until))
    try:
        while True:
            if not ready.is_set() and not reading.done():
                await wait_any((ready,), 0.5)  # a whole chunk, the end, or what came meanwhile
            ready.clear()
            batch, buf[:] = buf[:chunk], buf[chunk:]
            if len(buf) >= chunk:
                ready.set()
            room.set()
            if batch:
                await send(_encode(batch))
            if reading.done() and not buf:
                reading.result()  # the follower ends only at `until` (or says why)
                return
    finally:
        stop.set()
        await end_reading(follower, reading)
