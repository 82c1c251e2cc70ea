"""Following the stream into the read models: `run_projection` reads SPLICE_EVENTS and hands
a `Projector` (projector.py) its batches, while the next one arrives.

Reading: the one stream follower (`splice.events.follow`) on ``splice.evt.>`` from the lowest
view position + 1. Its handler only appends deliveries to a buffer: the event loop stays free
to receive, and the buffer's bound is the back-pressure (a full buffer makes the handler wait,
and the follower asks the server for nothing more meanwhile). A batch is up to `batch_size`
events, or whatever arrived within `max_delay` when following live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from splice.events import metrics, subjects
from splice.events.follow import Delivery, Follower, last_seq, wait_any

from .projector import Projector

PULL_BATCH = 2000  # messages per pull request of the projector's follower


@dataclass
class Progress:
    """What a progress display needs: where we are, where the end was when we started."""

    position: int
    target: int | None
    applied: int = 0
    started: float = 0.0


async def last_event_seq(
    js: Any, subject: str = subjects.EVENTS, stream: str = subjects.STREAM
) -> int:
    """The stream sequence of the newest event on `subject` (0 when there is none)."""
    return await last_seq(js, subject, stream)


async def end_reading(follower: Follower, reading: asyncio.Task[int]) -> None:
    """Stop a follower and wait for its task (cancelled if it does not end by itself)."""
    follower.close()
    if not reading.done():
        reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading


async def run_projection(
    js: Any,
    projector: Projector,
    stop: asyncio.Event,
    *,
    until: int | None = None,
    batch_size: int = 5000,
    max_delay: float = 0.05,
    on_batch: Callable[[Progress], None] | None = None,
    executor: ThreadPoolExecutor | None = None,
) -> int:
    """Follow the stream from the projector's position and apply, until `stop` (or `until`).

    Returns the position reached. With `until`, events after it are not applied (time travel,
    verify and rebuild stop at a known end).
    """
    if until is not None and projector.position >= until:
        return projector.position
    loop = asyncio.get_running_loop()
    pool = executor or ThreadPoolExecutor(1, thread_name_prefix="splice-projector")
    buf: list[Delivery] = []
    ready = asyncio.Event()
    room = asyncio.Event()
    room.set()
    limit = batch_size * 4
    progress = Progress(projector.position, until, started=time.monotonic())

    async def take(d: Delivery) -> None:
        buf.append(d)
        if len(buf) >= batch_size or d.seq == until:
            ready.set()
        if len(buf) >= limit:
            room.clear()
            await room.wait()

    def report(batch: Sequence[Delivery]) -> None:
        if not batch:
            return
        metrics.PROJECTOR_LAG.set(batch[-1].pending + len(buf))
        progress.position = projector.position
        progress.applied += len(batch)
        if on_batch is not None:
            on_batch(progress)

    follower = Follower(
        js, subjects.EVENTS, take, after=projector.position, name="projector",
        batch=min(batch_size, PULL_BATCH),
    )
    reading = asyncio.create_task(follower.run(stop, until=until))
    try:
        while True:
            if not buf:
                await wait_any((ready, stop), 1.0)
            if buf and len(buf) < batch_size and not ready.is_set() and not stop.is_set():
                await wait_any((ready, stop), max_delay)
            ready.clear()
            batch = buf[:batch_size]
            del buf[: len(batch)]
            if len(buf) < limit:
                room.set()
            if batch:
                # Folded and committed on the pool's thread while the loop reads on, and
                # reported once it is in (on a failure, raised here, the projector starts
                # again from the store). Caught up: the indexes a bulk load deferred first.
                await loop.run_in_executor(pool, _apply, projector, batch)
                caught_up = batch[-1].pending == 0 or (until is not None and batch[-1].seq >= until)
                if caught_up and projector.store.deferred:
                    await loop.run_in_executor(pool, projector.store.build_indexes)
                report(batch)
            if (until is not None and projector.position >= until) or stop.is_set():
                break
            if reading.done() and not buf:
                reading.result()  # the follower returns only when told to; say why if not
                break
    finally:
        room.set()
        await end_reading(follower, reading)
        try:
            await loop.run_in_executor(pool, projector.close)
        finally:
            if executor is None:
                pool.shutdown(wait=True)
    return projector.position


def _apply(projector: Projector, batch: Sequence[Delivery]) -> None:
    """Fold and commit one batch (on the projector's thread)."""
    projector.submit(projector.prepare_deliveries(batch))
