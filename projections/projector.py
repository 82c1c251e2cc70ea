"""The projector: reads SPLICE_EVENTS in order and applies it to the views, batch by batch.

Reading: the one stream follower (`splice.events.follow`) on ``splice.evt.>`` from the lowest
view position + 1. Its handler only appends deliveries to a buffer: the event loop stays free
to receive, and the buffer's bound is the back-pressure (a full buffer makes the handler wait,
and the follower asks the server for nothing more meanwhile).

Applying: a single writer thread takes a batch (up to `batch_size` events, or whatever arrived
within `max_delay` when following live), decodes it, runs the views' handlers against the row
cache and commits rows and positions in one transaction (`Store.commit`). Big batches make a
rebuild fast; the delay keeps a live projector's lag small. While the stream is ahead, a
batch's transaction runs on the committer's thread (`committer.py`) as the next batch is
decoded and folded (`prepare` / `submit`); once caught up, each batch is waited for.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from splice.events import metrics, subjects
from splice.events.follow import Delivery, Follower, SetAside, last_seq, wait_any
from splice.events.metrics import count_set_aside

from .committer import Committer
from .envelope import Event, from_batch
from .folding import Step, ViewFailed, as_key, describe, gc_paused, one_by_one, steps_for
from .store import Store, TableWrites
from .views import VIEWS, Rows, Tx, View
from .views.audit import AUDIT_VIEW, note_set_aside

log = structlog.get_logger("splice.projections")

PULL_BATCH = 2000  # messages per pull request of the projector's follower


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
        self.committer = Committer()
        store.ensure(self.views)
        self._reload()

    def _reload(self) -> None:
        """(Re)read positions and start with fresh row caches (after a failed batch, too)."""
        self.positions = {v.name: p for v, p in self._stored_positions()}
        self._folded = dict(self.positions)  # where the views are once the batch in flight is in
        self._unsubmitted = False  # a batch was prepared (folded into the caches), not submitted
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

    def apply_deliveries(self, batch: Sequence[Delivery], *, wait: bool = True) -> int:
        """Decode deliveries (in stream order) and apply them; see `apply`."""
        self.submit(self.prepare_deliveries(batch), wait=wait)
        return self.position

    def prepare_deliveries(self, batch: Sequence[Delivery]) -> PreparedBatch | None:
        """Decode deliveries (in stream order) and fold them; see `prepare`."""
        with gc_paused():
            return self._prepare_deliveries(batch)

    def _prepare_deliveries(self, batch: Sequence[Delivery]) -> PreparedBatch | None:
        events: list[Event] = []
        unreadable: list[SetAside] = []
        for d, ev in zip(batch, from_batch(batch), strict=True):
            if isinstance(ev, Event):
                events.append(ev)
            else:
                unreadable.append(
                    SetAside(d.seq, d.subject, d.topic, describe(ev), d.time_ns, d.headers)
                )
        last = batch[-1].seq if batch else 0
        return self.prepare(events, last=last, unreadable=unreadable)

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
        self.submit(self.prepare(events, last=last, unreadable=unreadable))
        return self.position

    def prepare(
        self, events: Sequence[Event], *, last: int = 0, unreadable: Sequence[SetAside] = ()
    ) -> PreparedBatch | None:
        """`apply`'s first half: fold the batch into the row caches and take its writes, while
        the batch before it may still be committing. `submit` commits it; `close` forgets it
        if it never was. None: nothing to commit (no events, or the batch went in one event
        at a time because a view failed on one of them)."""
        last = max(last, events[-1].seq if events else 0)
        if last == 0:
            return None
        if any(rows.over_limit() for rows in self.tx.tables.values()):
            self.flush()  # the rows of the batch in flight must be in the store before a trim
            for rows in self.tx.tables.values():
                rows.trim()
        try:
            job = self._prepare(events, last, {}, unreadable)
        except ViewFailed:
            self._recover()
            for one, upto, before in one_by_one(events, last, unreadable):
                self._apply_setting_aside(one, upto, before)
            self._log_unreadable(unreadable)
            return None
        except BaseException:
            self._recover()
            raise
        job.unreadable = unreadable
        self._unsubmitted = True
        return job

    def submit(self, job: PreparedBatch | None, *, wait: bool = True) -> None:
        """Commit a prepared batch on the committer's thread (after the one in flight). With
        ``wait=False`` it is left running: `positions` move when it has committed, and its
        failure is raised by the next `submit` or `flush`."""
        if job is not None:
            self._unsubmitted = False
            self.committer.submit(lambda: self._commit(job))
        if wait:
            self.flush()

    def flush(self) -> int:
        """Wait for the batch in flight (if any); on its failure, start again from the store
        (the caches reset, the positions re-read) and raise it. Returns `position`."""
        try:
            self.committer.wait()
        except BaseException:
            self._reload()
            raise
        return self.position

    def close(self) -> None:
        """Wait for the batch in flight, forget one prepared and never submitted, and stop the
        committer's thread (made again on use)."""
        try:
            self.flush()
        finally:
            if self._unsubmitted:
                self._reload()
            self.committer.close()

    def _recover(self) -> None:
        """After a failed fold: the batch in flight goes in (or its failure is raised), and
        the caches start again from the store."""
        self.flush()
        self._reload()

    @staticmethod
    def _log_unreadable(unreadable: Sequence[SetAside]) -> None:
        for r in unreadable:
            log.warning("event set aside", view="*", seq=r.seq, subject=r.subject, error=r.error)

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
        self._commit(self._prepare(events, last, skip, unreadable))
        for rows in self.tx.tables.values():
            rows.trim()

    def _prepare(
        self,
        events: Sequence[Event],
        last: int,
        skip: dict[tuple[int, str], SetAside],
        unreadable: Sequence[SetAside],
    ) -> PreparedBatch:
        """Fold a batch into the row caches and take what its transaction writes (encoded:
        the caches may change under the next batch while this one commits)."""
        for rows, key_of, view in self._prefetchers:
            if not rows.complete:
                rows.prefetch({as_key(key_of(ev)) for ev in events if view.wants(ev.type)})
        active = [(v, self._folded[v.name]) for v in self.views if self._folded[v.name] < last]
        if skip or any(pos >= events[0].seq for _, pos in active if events):
            self._fold_carefully(events, active, skip)
        else:
            self._fold(events, [v for v, _ in active])
        moves = {v.name: (pos, last) for v, pos in active}
        aside = [(view, r) for (_, view), r in skip.items()]
        aside += [(v.name, r) for r in unreadable for v, pos in active if r.seq > pos]
        if aside:
            self._audit_set_aside(aside, active)
        writes = [rows.take_writes() for rows in self.tx.tables.values()]
        for w in writes:
            w.encode()
        for name, (_, new) in moves.items():
            self._folded[name] = new
        return PreparedBatch(writes, moves, aside)

    def _commit(self, job: PreparedBatch) -> None:
        self.store.commit(job.writes, job.moves, job.aside)
        for name, (_, new) in job.moves.items():
            self.positions[name] = new
        if job.aside and self.reader is not None:
            count_set_aside(self.reader, len({r.seq for _, r in job.aside}))
        self._log_unreadable(job.unreadable)

    def _fold(self, events: Sequence[Event], views: Sequence[View]) -> None:
        """Every event through every view (all of them before the batch): the common case,
        with each event type's handlers looked up once per batch."""
        tx = self.tx
        plan: dict[str, list[tuple[str, Step]]] = {}
        for ev in events:
            steps = plan.get(ev.type)
            if steps is None:
                steps = plan[ev.type] = steps_for(views, ev.type)
            for name, step in steps:
                try:
                    step(ev, tx)
                except Exception as e:
                    raise ViewFailed(name, ev, e) from e

    def _fold_carefully(
        self,
        events: Sequence[Event],
        active: Sequence[tuple[View, int]],
        skip: dict[tuple[int, str], SetAside],
    ) -> None:
        """Each event through the views not past it, but for those that set it aside."""
        for ev in events:
            for view, pos in active:
                if ev.seq > pos and view.wants(ev.type) and (ev.seq, view.name) not in skip:
                    try:
                        view.apply(ev, self.tx)
                    except Exception as e:
                        raise ViewFailed(view.name, ev, e) from e

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


@dataclass
class PreparedBatch:
    """One batch's transaction: rows (encoded), position moves, events set aside."""

    writes: list[TableWrites]
    moves: dict[str, tuple[int, int]]
    aside: list[tuple[str, SetAside]]
    unreadable: Sequence[SetAside] = ()  # to log once committed


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

    in_flight: list[Delivery] = []  # the batch committing, not reported yet

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
                # This batch folds while the one before it commits; each is reported once it
                # is in. Caught up (or at `until`): wait for it, so that the positions say
                # what has been read.
                job = await loop.run_in_executor(pool, projector.prepare_deliveries, batch)
                await loop.run_in_executor(pool, projector.flush)
                report(in_flight)
                projector.submit(job, wait=False)
                in_flight = batch
                if batch[-1].pending == 0 or (until is not None and batch[-1].seq >= until):
                    await loop.run_in_executor(pool, projector.flush)
                    if projector.store.deferred:
                        await loop.run_in_executor(pool, projector.store.build_indexes)
                    report(in_flight)
                    in_flight = []
            if stop.is_set() or (reading.done() and not buf):
                await loop.run_in_executor(pool, projector.flush)
                report(in_flight)
                in_flight = []
            if (until is not None and projector.position >= until) or stop.is_set():
                break
            if reading.done() and not buf:
                reading.result()  # the follower returns only when told to; say why if not
                break
    finally:
        room.set()
        await end_reading(follower, reading)
        try:
            await loop.run_in_executor(pool, projector.close)  # the batch in flight goes in
        finally:
            if executor is None:
                pool.shutdown(wait=True)
    return projector.position
