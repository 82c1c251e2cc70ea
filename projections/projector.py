"""The projector: reads SPLICE_EVENTS in order and applies it to the views, batch by batch.

Reading: the one stream follower (`splice.events.follow`) on ``splice.evt.>`` from the lowest
view position + 1. Its handler only appends deliveries to a buffer: the event loop stays free
to receive, and the buffer's bound is the back-pressure (a full buffer makes the handler wait,
and the follower asks the server for nothing more meanwhile).

Applying: a single writer thread takes a batch (up to `batch_size` events, or whatever arrived
within `max_delay` when following live), decodes it, runs the views' handlers against the row
cache and commits rows and positions in one transaction (`Store.commit`). Big batches make a
rebuild fast; the delay keeps a live projector's lag small.

Poison: an event that cannot be decoded, or whose handler raises in a view, is set aside for
that view: the batch is applied again without it, and a row in ``projection_set_aside`` (view,
seq, subject, type, error) is committed with the batch. The audit log says so at the event's
sequence ("seq N on S was set aside by …: error", `views.audit.note_set_aside`), and the
process's ``splice_events_set_aside_total{reader="projector"}`` counts it once. The projector
never stops on one event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from splice.events import subjects
from splice.events.follow import Delivery, Follower, SetAside, last_seq, wait_any
from splice.events.metrics import count_set_aside

from .envelope import Event, from_parts
from .store import Store
from .views import VIEWS, Rows, Tx, View
from .views.audit import AUDIT_VIEW, note_set_aside

log = structlog.get_logger("splice.projections")

PULL_BATCH = 2000  # messages per pull request of the projector's follower


class ViewFailed(Exception):
    """A view's handler raised on one event (the batch is then applied again without it)."""

    def __init__(self, view: str, event: Event, error: Exception) -> None:
        super().__init__(f"{view} failed on seq {event.seq}: {error!r}")
        self.view = view
        self.record = SetAside(event.seq, event_subject(event), event.type, describe(error),
                               event.time_ns, event_headers(event))


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def event_subject(ev: Event) -> str:
    return subjects.event(ev.tenant, ev.aggregate, ev.aggregate_id, ev.type)


def event_headers(ev: Event) -> dict[str, str]:
    """The headers a decoded event came with, as far as its record of being set aside needs."""
    return {
        subjects.H_TOPIC: ev.type,
        subjects.H_VERSION: str(ev.version),
        subjects.H_ACTOR: ev.actor,
        subjects.H_COMMAND_ID: ev.command_id,
        subjects.H_CORRELATION_ID: ev.correlation_id,
    }


class Projector:
    """Applies batches of events to the views: one transaction per batch, exactly once.

    `reader`: the label under which the events it sets aside are counted in the process's
    metric (None: not counted, as for the scratch rebuild of `verify`).
    """

    def __init__(
        self, store: Store, views: Sequence[View] = VIEWS, *, reader: str | None = "projector"
    ) -> None:
        self.store = store
        self.views = tuple(views)
        self.reader = reader
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

    def apply_deliveries(self, batch: Sequence[Delivery]) -> int:
        """Decode deliveries (in stream order) and apply them; see `apply`."""
        events: list[Event] = []
        unreadable: list[SetAside] = []
        for d in batch:
            try:
                events.append(from_parts(d.seq, d.time_ns, d.subject, d.headers, d.data))
            except Exception as e:
                unreadable.append(
                    SetAside(d.seq, d.subject, d.topic, describe(e), d.time_ns, d.headers)
                )
        return self.apply(events, last=batch[-1].seq if batch else 0, unreadable=unreadable)

    def apply(
        self, events: Sequence[Event], *, last: int = 0, unreadable: Sequence[SetAside] = ()
    ) -> int:
        """Apply events (in stream order) to every view not already past them; commit once.

        `last` (default: the last event's seq) is where the views' positions move to;
        `unreadable` are deliveries that could not be decoded, set aside for every view.
        Returns the new position. When a view's handler raises, the batch is applied again one
        event per transaction (so that many bad events cost no more than one each), and each
        event a view raises on is set aside for that view. On any other failure nothing of the
        transaction in progress is applied and the caches are reset.
        """
        last = max(last, events[-1].seq if events else 0)
        if last == 0:
            return self.position
        try:
            self._apply(events, last, {}, unreadable)
        except ViewFailed:
            self._reload()
            for one, upto, before in _one_by_one(events, last, unreadable):
                self._apply_setting_aside(one, upto, before)
        except BaseException:
            self._reload()
            raise
        for r in unreadable:
            log.warning("event set aside", view="*", seq=r.seq, subject=r.subject, error=r.error)
        return self.position

    def _apply_setting_aside(
        self, events: Sequence[Event], last: int, unreadable: Sequence[SetAside]
    ) -> None:
        skip: dict[tuple[int, str], SetAside] = {}
        while True:
            try:
                self._apply(events, last, skip, unreadable)
                return
            except ViewFailed as e:
                self._reload()
                skip[(e.record.seq, e.view)] = e.record
                log.warning("event set aside", view=e.view, seq=e.record.seq,
                            subject=e.record.subject, type=e.record.topic, error=e.record.error)
            except BaseException:
                self._reload()
                raise

    def _apply(
        self,
        events: Sequence[Event],
        last: int,
        skip: dict[tuple[int, str], SetAside],
        unreadable: Sequence[SetAside],
    ) -> None:
        for rows, key_of, view in self._prefetchers:
            rows.prefetch({_as_key(key_of(ev)) for ev in events if view.wants(ev.type)})
        active = [(v, self.positions[v.name]) for v in self.views if self.positions[v.name] < last]
        for ev in events:
            for view, pos in active:
                if ev.seq > pos and view.wants(ev.type) and (ev.seq, view.name) not in skip:
                    try:
                        view.apply(ev, self.tx)
                    except Exception as e:
                        raise ViewFailed(view.name, ev, e) from e
        moves = {v.name: (pos, last) for v, pos in active}
        aside = [(view, r) for (_, view), r in skip.items()]
        aside += [(v.name, r) for r in unreadable for v, pos in active if r.seq > pos]
        if aside:
            self._audit_set_aside(aside, active)
        writes = [rows.take_writes() for rows in self.tx.tables.values()]
        self.store.commit(writes, moves, aside)
        for name, (_, new) in moves.items():
            self.positions[name] = new
        for rows in self.tx.tables.values():
            rows.trim()
        if aside and self.reader is not None:
            count_set_aside(self.reader, len({r.seq for _, r in aside}))

    def _audit_set_aside(
        self, aside: Sequence[tuple[str, SetAside]], active: Sequence[tuple[View, int]]
    ) -> None:
        """Say in the audit log (when it is applying these events now) which views set what
        aside: the same rows in this transaction as in any rebuild, so `verify` agrees."""
        audit_at = next((pos for v, pos in active if v.name == AUDIT_VIEW.name), None)
        if audit_at is None:
            return
        order = {v.name: i for i, v in enumerate(self.views)}
        notes: dict[int, tuple[SetAside, list[str]]] = {}
        for view, r in aside:
            if r.seq > audit_at:
                notes.setdefault(r.seq, (r, []))[1].append(view)
        for _, views in notes.values():
            views.sort(key=lambda name: order.get(name, len(order)))
        note_set_aside(self.tx, [notes[seq] for seq in sorted(notes)])


def _one_by_one(
    events: Sequence[Event], last: int, unreadable: Sequence[SetAside]
) -> Iterator[tuple[list[Event], int, list[SetAside]]]:
    """A batch as one-event pieces: (events, position to move to, unreadable ones up to it)."""
    rest = sorted(unreadable, key=lambda r: r.seq)
    for ev in events:
        before = [r for r in rest if r.seq < ev.seq]
        rest = rest[len(before) :]
        yield [ev], ev.seq, before
    if rest or not events or last > events[-1].seq:
        yield [], last, rest


def _as_key(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


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
                await loop.run_in_executor(pool, projector.apply_deliveries, batch)
                progress.position = projector.position
                progress.applied += len(batch)
                if on_batch is not None:
                    on_batch(progress)
            if (until is not None and projector.position >= until) or stop.is_set():
                break
            if reading.done() and not buf:
                reading.result()  # the follower returns only when told to; say why if not
                break
    finally:
        room.set()
        follower.close()
        if not reading.done():
            reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        if executor is None:
            pool.shutdown(wait=True)
    return projector.position
