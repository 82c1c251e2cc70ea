"""The projector: reads SPLICE_EVENTS in order and applies it to the views, batch by batch.

Reading: one ordered consumer (push, flow-controlled, no acks, recreated by nats-py from the
last sequence it saw whenever it detects a gap) on ``splice.evt.>`` from the lowest view
position + 1. Its callback only appends raw messages to a buffer: the event loop stays free to
receive, and the buffer's bound is the back-pressure (a full buffer makes the callback wait,
nats-py then holds back flow-control replies, and the server stops sending).

Applying: a single writer thread takes a batch (up to `batch_size` events, or whatever arrived
within `max_delay` when following live), decodes it, runs the views' handlers against the row
cache and commits rows and positions in one transaction (`Store.commit`). Big batches make a
rebuild fast; the delay keeps a live projector's lag small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

from .envelope import Event, ack_position, from_parts
from .store import Store
from .views import VIEWS, Rows, Tx, View

log = logging.getLogger("splice.projections")

STREAM = "SPLICE_EVENTS"
EVENTS_SUBJECT = "splice.evt.>"
RawMsg = tuple[str, str, Any, bytes]  # reply, subject, headers, data


class Projector:
    """Applies batches of events to the views: one transaction per batch, exactly once."""

    def __init__(self, store: Store, views: Sequence[View] = VIEWS) -> None:
        self.store = store
        self.views = tuple(views)
        store.ensure(self.views)
        self._reload()

    def _reload(self) -> None:
        """(Re)read positions and start with fresh row caches (after a failed batch, too)."""
        self.positions = {v.name: p for v, p in self._stored_positions()}
        tables = {t.name: t for v in self.views for t in v.tables}
        self.tx = Tx(
            {n: Rows(t, self.store, complete=self.store.is_empty(t)) for n, t in tables.items()}
        )
        self._prefetchers = [
            (self.tx[t.name], t.prefetch, v)
            for v in self.views
            for t in v.tables
            if t.prefetch is not None
        ]

    def _stored_positions(self) -> list[tuple[View, int]]:
        stored = self.store.positions()
        return [(v, stored.get(v.name, 0)) for v in self.views]

    @property
    def position(self) -> int:
        """The stream sequence every view has applied (the lowest of their positions)."""
        return min(self.positions.values(), default=0)

    def apply_raw(self, raw: Sequence[RawMsg]) -> int:
        """Decode and apply raw deliveries (the consumer's callback keeps only these)."""
        events = []
        newest = 0
        for reply, subject, headers, data in raw:
            seq, ts = ack_position(reply)
            if seq <= newest:  # a redelivery after a consumer reset: already in this batch
                continue
            newest = seq
            events.append(from_parts(seq, ts, subject, headers, data))
        return self.apply(events)

    def apply(self, events: Sequence[Event]) -> int:
        """Apply events (in stream order) to every view not already past them; commit once.

        Returns the new position. On any failure nothing is applied and the caches are reset.
        """
        if not events:
            return self.position
        try:
            self._apply(events)
        except BaseException:
            self._reload()
            raise
        return self.position

    def _apply(self, events: Sequence[Event]) -> None:
        for rows, key_of, view in self._prefetchers:
            rows.prefetch({_as_key(key_of(ev)) for ev in events if view.wants(ev.type)})
        last = events[-1].seq
        active = [(v, self.positions[v.name]) for v in self.views if self.positions[v.name] < last]
        for ev in events:
            for view, pos in active:
                if ev.seq > pos and view.wants(ev.type):
                    view.apply(ev, self.tx)
        moves = {v.name: (pos, last) for v, pos in active}
        writes = [rows.take_writes() for rows in self.tx.tables.values()]
        self.store.commit(writes, moves)
        for name, (_, new) in moves.items():
            self.positions[name] = new
        for rows in self.tx.tables.values():
            rows.trim()


def _as_key(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


@dataclass
class Progress:
    """What a progress display needs: where we are, where the end was when we started."""

    position: int
    target: int | None
    applied: int = 0
    started: float = 0.0


async def last_event_seq(js: Any, stream: str = STREAM) -> int:
    """The stream sequence of the newest event (0 when there is none)."""
    try:
        msg = await js.get_last_msg(stream, EVENTS_SUBJECT, direct=True)
    except Exception as e:  # nats-py raises NotFoundError (a 404) on an empty subject
        if "404" in str(e) or type(e).__name__ == "NotFoundError":
            return 0
        raise
    return int(msg.seq)


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
    """Consume from the projector's position and apply, until `stop` (or sequence `until`).

    Returns the position reached. With `until`, events after it are not applied (time travel,
    verify and rebuild stop at a known end).
    """
    loop = asyncio.get_running_loop()
    own_executor = executor is None
    pool = executor or ThreadPoolExecutor(1, thread_name_prefix="splice-projector")
    buf: list[RawMsg] = []
    ready = asyncio.Event()
    room = asyncio.Event()
    room.set()
    limit = batch_size * 4
    progress = Progress(projector.position, until, started=time.monotonic())
    start = projector.position + 1
    if until is not None and projector.position >= until:
        return projector.position

    async def on_msg(msg: Any) -> None:
        buf.append((msg.reply, msg.subject, msg.headers, msg.data))
        if len(buf) >= batch_size or (until is not None and ack_position(msg.reply)[0] >= until):
            ready.set()
        if len(buf) >= limit:
            room.clear()
            await room.wait()

    sub = await js.subscribe(
        EVENTS_SUBJECT,
        stream=STREAM,
        ordered_consumer=True,
        cb=on_msg,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
        pending_msgs_limit=limit * 2,
    )
    try:
        while True:
            if not buf:
                with contextlib.suppress(TimeoutError):
                    await _wait_any(ready, stop, timeout=1.0)
            if buf and len(buf) < batch_size and not ready.is_set() and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await _wait_any(ready, stop, timeout=max_delay)
            ready.clear()
            batch = buf[:batch_size]
            del buf[: len(batch)]
            if len(buf) < limit:
                room.set()
            if until is not None:
                batch = [m for m in batch if ack_position(m[0])[0] <= until]
            if batch:
                await loop.run_in_executor(pool, projector.apply_raw, batch)
                progress.position = projector.position
                progress.applied += len(batch)
                if on_batch is not None:
                    on_batch(progress)
            if until is not None and projector.position >= until:
                break
            if stop.is_set():
                break
    finally:
        room.set()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if own_executor:
            pool.shutdown(wait=True)
    return projector.position


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    """Wait until either event is set, at most `timeout` seconds (TimeoutError otherwise)."""
    if a.is_set() or b.is_set():
        return
    tasks = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
    if not done:
        raise TimeoutError
