"""A bounded rebuild on two cores: this process reads the stream, a child folds and commits.

`run_projection` reads, decodes, folds and commits in one process, so a rebuild runs at the
speed of one core whatever the machine has: reading (nats-py's parsing of each message and its
headers) takes about as long as folding and committing. Here the child process (forked: it
starts in milliseconds and needs nothing but the database's URL) owns the `Projector` and its
store, and the parent only follows the stream and hands it batches of deliveries over a pipe
(msgpack: the same fields a `Delivery` has). While the child folds batch N and commits N-1,
the parent reads batch N+1: each side on its own core. The child says after each batch how far
its commits have gone, and commits the next only when the parent has heard it (so that an
`on_batch` that stops the run leaves the store where it was told).

The rows are those `run_projection` makes: the child applies the same deliveries in the same
order with the same `Projector` (batches may end elsewhere: the rows do not depend on where) (`tests/projections/test_parallel_rebuild.py`). Only runs with
an end (`until`) go this way: rebuild, verify and the replay benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from splice.events import subjects
from splice.events.collector import stop_collector
from splice.events.follow import Delivery, Follower, wait_any

from .projector import PULL_BATCH, Progress, Projector, end_reading
from .store import open_store
from .views import VIEWS, View

_END, _GO = b"end", b"go"
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def _child(conn: Connection, parents: Connection, db_url: str, views: Sequence[View],
           reader: str | None) -> None:
    """The child's whole life: fold what arrives, commit it, say where the commits are.

    Batch N+1 is folded while batch N commits; N+1 is handed to the committer only once the
    parent has heard that N is in (its `on_batch` may stop the run: then nothing after N is
    committed, as with `run_projection`). When the parent goes, the child sees the pipe end,
    lets the commit in flight finish and leaves."""
    parents.close()  # the parent's end, copied by the fork: else its close would never be seen
    for sig in (signal.SIGINT, signal.SIGTERM):  # not the parent's handlers (asyncio's)
        signal.signal(sig, signal.SIG_DFL)
    stop_collector()  # a process with an end; its folds make no cycles
    store = projector = None
    try:
        store = open_store(db_url)
        projector = Projector(store, views, reader=reader)
        conn.send_bytes(_encode(("at", projector.position, 0)))
        previous = 0  # events in the batch committing
        while (raw := conn.recv_bytes()) != _END:
            batch = [Delivery(*fields) for fields in _decode(raw)]
            job = projector.prepare_deliveries(batch)
            conn.send_bytes(_encode(("at", projector.flush(), previous)))
            if conn.recv_bytes() != _GO:
                break
            projector.submit(job, wait=False)
            previous = len(batch)
        else:
            conn.send_bytes(_encode(("at", projector.flush(), previous)))
            if store.deferred:
                store.build_indexes()
            conn.send_bytes(_encode(("done", projector.position, 0)))
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
    batch_size: int = 5000,
    on_batch: Callable[[Progress], None] | None = None,
) -> int:
    """Apply the stream up to `until` to the read models at `db_url`, folding in a child
    process; returns the position reached (the views' lowest)."""
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=_child, args=(theirs, mine, db_url, tuple(views), reader),
                        name="splice-fold", daemon=True)
    child.start()
    theirs.close()
    io = ThreadPoolExecutor(2, thread_name_prefix="splice-fold-io")  # a sender and a receiver
    loop = asyncio.get_running_loop()

    async def hear() -> tuple[str, Any, int]:
        try:
            kind, value, n = _decode(await loop.run_in_executor(io, mine.recv_bytes))
        except EOFError:
            raise RuntimeError("the fold process ended without a word") from None
        if kind == "error":
            raise RuntimeError(f"the fold process failed:\n{value}")
        return str(kind), value, int(n)

    finished = False
    try:
        _, position, _ = await hear()
        progress = Progress(position, until, started=loop.time())

        def heard(done: int, n: int) -> None:
            progress.position, progress.applied = done, progress.applied + n
            if on_batch is not None and n:
                on_batch(progress)

        if position < until:
            await _feed(js, mine, io, hear, heard, position, until, batch_size)
        await loop.run_in_executor(io, mine.send_bytes, _END)
        while True:
            kind, position, n = await hear()
            if kind == "done":
                finished = True
                heard(int(position), 0)
                return int(position)
            heard(int(position), n)
    finally:
        # Stopped early (on_batch raised, cancelled, an error): the child is told by the end of
        # the pipe, and a reader thread still waiting on the pipe returns once the child is gone;
        # the pipe is closed after that, never under a waiting reader.
        try:
            if not finished:
                child.terminate()  # SIGTERM: default action, the child's transaction rolls back
            await asyncio.to_thread(child.join, 30)
            if child.is_alive():
                child.kill()
                await asyncio.to_thread(child.join, 5)
        finally:
            io.shutdown(wait=False)
            mine.close()


async def _feed(js: Any, conn: Connection, io: ThreadPoolExecutor,
                hear: Callable[[], Any], heard: Callable[[int, int], None],
                after: int, until: int, batch_size: int) -> None:
    """Follow the stream from `after` to `until`, handing the child a batch at a time."""
    loop = asyncio.get_running_loop()
    buf: list[Delivery] = []
    ready, room, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    room.set()

    async def take(d: Delivery) -> None:
        buf.append(d)
        if len(buf) >= batch_size or d.seq >= until:
            ready.set()
        if len(buf) >= 4 * batch_size:
            room.clear()
            await room.wait()

    follower = Follower(js, subjects.EVENTS, take, after=after, name="projector-rebuild",
                        batch=min(batch_size, PULL_BATCH))
    reading = asyncio.create_task(follower.run(stop, until=until))
    try:
        while True:
            if not ready.is_set() and not reading.done():
                await wait_any((ready,), 0.5)  # a whole batch, the end, or what came meanwhile
            ready.clear()
            batch, buf[:] = buf[:batch_size], buf[batch_size:]
            if len(buf) >= batch_size:
                ready.set()
            room.set()
            if batch:
                rows = [(d.seq, d.subject, d.topic, d.data, d.headers, d.time_ns, d.pending)
                        for d in batch]
                await loop.run_in_executor(io, conn.send_bytes, _encode(rows))
                _, done, n = await hear()  # folded; the batch before it is in
                heard(int(done), n)
                await loop.run_in_executor(io, conn.send_bytes, _GO)
            if reading.done() and not buf:
                reading.result()  # the follower ends only at `until` (or says why)
                return
    finally:
        stop.set()
        await end_reading(follower, reading)
