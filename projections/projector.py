"""The projector: applies SPLICE_EVENTS, in stream order, to the views, batch by batch.

Applying: a single writer thread takes a batch (`reading.run_projection` and
`parallel.project_until` hand them over), decodes it, runs the views' handlers against the row
cache and commits rows and positions in one transaction (`Store.commit`). Big batches make a
rebuild fast; a live projector's batches are small, to keep its lag small. While the stream is
ahead, a live projector reads on while its pool thread folds and commits each batch
(`prepare` / `submit`; `committer.py` says why the commit is not on a thread of its own). A
rebuild may fold several batches before it takes their writes as one transaction
(``take=False``): a row that many of them change is then written once.

Poison: an event that cannot be decoded, or whose handler raises in a view, is set aside for
that view: the batch is applied again without it, and a row in ``projection_set_aside`` (view,
seq, subject, type, error) is committed with the batch. The audit log says so at the event's
sequence ("seq N on S was set aside by …: error", `views.audit.note_set_aside`), and the
process's ``splice_events_set_aside_total{reader="projector"}`` counts it once. The projector
never stops on one event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from splice.events.follow import Delivery, SetAside
from splice.events.metrics import count_set_aside

from .committer import Committer
from .envelope import Event, from_batch
from .folding import (
    Refold,
    Step,
    ViewFailed,
    as_key,
    audit_set_aside,
    describe,
    gc_paused,
    one_by_one,
    steps_for,
)
from .store import Store, TableWrites
from .views import VIEWS, Rows, Tx, View

log = structlog.get_logger("splice.projections")


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
        """(Re)read positions and start with fresh row caches (after a failed batch, too); rows
        staged for a transaction never taken are dropped."""
        self.store.discard()
        self.positions = {v.name: p for v, p in self._stored_positions()}
        self._folded = dict(self.positions)  # where the views are once the batch in flight is in
        self._taken = dict(self.positions)  # where the last transaction taken moves them to
        self._held: list[tuple[str, SetAside]] = []  # set aside in batches folded, not taken
        self._held_unreadable: list[SetAside] = []
        self._holding = False  # batches were folded with take=False since the last take
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

    def prepare_deliveries(
        self, batch: Sequence[Delivery], *, take: bool = True
    ) -> PreparedBatch | None:
        """Decode deliveries (in stream order) and fold them; see `prepare`."""
        with gc_paused():
            return self._prepare_deliveries(batch, take)

    def _prepare_deliveries(self, batch: Sequence[Delivery], take: bool) -> PreparedBatch | None:
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
        return self.prepare(events, last=last, unreadable=unreadable, take=take)

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
        self,
        events: Sequence[Event],
        *,
        last: int = 0,
        unreadable: Sequence[SetAside] = (),
        take: bool = True,
    ) -> PreparedBatch | None:
        """`apply`'s first half: fold the batch into the row caches and take its writes, while
        the batch before it may still be committing. `submit` commits it; `close` forgets it
        if it never was. None: nothing to commit (no events, or the batch went in one event
        at a time because a view failed on one of them).

        ``take=False`` folds the batch and keeps its writes in the caches with those of the
        batches folded before it, until a `prepare` that takes (or `take`): one transaction
        for all of them, where a row that many of them change is written once. Their appended
        rows (the audit log's) are written at once, through the committer, into the
        transaction left open for the take (`Store.stage`). When a view
        fails on an event of such a run of batches, nothing folded since the last take is
        kept, and `Refold` says so: the caller prepares them again as one batch that takes,
        which sets the event aside.
        """
        last = max(last, events[-1].seq if events else 0)
        if last == 0:
            return self.take() if take else None
        if not self._holding and self.over_limit():
            self.flush()  # the rows of the batch in flight must be in the store before a trim
            for rows in self.tx.tables.values():
                rows.trim()
        try:
            self._held += self._fold_batch(events, last, {}, unreadable)
        except ViewFailed:
            held = self._holding
            self._recover()
            if held:
                raise Refold from None
            for one, upto, before in one_by_one(events, last, unreadable):
                self._apply_setting_aside(one, upto, before)
            self._log_unreadable(unreadable)
            return None
        except BaseException:
            self._recover()
            raise
        self._held_unreadable += unreadable
        self._unsubmitted = self._holding = True
        if take:
            return self.take()
        appends = [w for w in (r.take_appends() for r in self.tx.tables.values()) if w.appends]
        if appends:  # into the transaction the take will commit, while the next batch folds
            self.committer.queue(lambda: self.store.stage(appends))
        return None

    def take(self) -> PreparedBatch | None:
        """What the batches folded since the last take write, as one transaction to `submit`
        (None: nothing was folded)."""
        if not self._holding:
            return None
        job = self._take(self._held)
        job.unreadable = self._held_unreadable
        self._held, self._held_unreadable, self._holding = [], [], False
        return job

    def over_limit(self) -> bool:
        """A table's cache holds more rows than it keeps between batches: time to take."""
        return any(rows.over_limit() for rows in self.tx.tables.values())

    def submit(self, job: PreparedBatch | None, *, wait: bool = True) -> None:
        """Commit a prepared batch (`committer.py`). With ``wait=False`` its failure is kept
        for the next `submit` or `flush` to raise; `positions` move once it has committed."""
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
        """Wait for the batch in flight, and forget one prepared and never submitted."""
        try:
            self.flush()
        finally:
            if self._unsubmitted:
                self._reload()

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
        self._commit(self._take(self._fold_batch(events, last, skip, unreadable)))
        for rows in self.tx.tables.values():
            rows.trim()

    def _fold_batch(
        self,
        events: Sequence[Event],
        last: int,
        skip: dict[tuple[int, str], SetAside],
        unreadable: Sequence[SetAside],
    ) -> list[tuple[str, SetAside]]:
        """Fold a batch into the row caches; returns what it set aside (view, event)."""
        for rows, key_of, view in self._prefetchers:
            if not rows.complete:
                rows.prefetch({as_key(key_of(ev)) for ev in events if view.wants(ev.type)})
        active = [(v, self._folded[v.name]) for v in self.views if self._folded[v.name] < last]
        if skip or any(pos >= events[0].seq for _, pos in active if events):
            self._fold_carefully(events, active, skip)
        else:
            self._fold(events, [v for v, _ in active])
        aside = [(view, r) for (_, view), r in skip.items()]
        aside += [(v.name, r) for r in unreadable for v, pos in active if r.seq > pos]
        if aside:
            audit_set_aside(self.tx, self.views, aside, active)
        for v, _ in active:
            self._folded[v.name] = last
        return aside

    def _take(self, aside: list[tuple[str, SetAside]]) -> PreparedBatch:
        """What the transaction writes (encoded: the caches may change under the next batch
        while this one commits), and the positions it moves from the last take's."""
        writes = [rows.take_writes() for rows in self.tx.tables.values()]
        for w in writes:
            w.encode()
        moves = {n: (self._taken[n], p) for n, p in self._folded.items() if p > self._taken[n]}
        self._taken = dict(self._folded)
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


@dataclass
class PreparedBatch:
    """One batch's transaction: rows (encoded), position moves, events set aside."""

    writes: list[TableWrites]
    moves: dict[str, tuple[int, int]]
    aside: list[tuple[str, SetAside]]
    unreadable: Sequence[SetAside] = ()  # to log once committed
