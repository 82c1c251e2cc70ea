"""A batch through the views: which handlers an event type goes to, what a failing view
raises, the one-event pieces a batch is applied in when a view fails, and how the audit log
says so (`projector.py`)."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from splice.events import subjects
from splice.events.follow import SetAside

from .envelope import Event
from .views import Tx, View
from .views.audit import AUDIT_VIEW, note_set_aside

Step = Callable[[Event, Tx], None]


class ViewFailed(Exception):
    """A view's handler raised on one event (the batch is then applied again without it)."""

    def __init__(self, view: str, event: Event, error: Exception) -> None:
        super().__init__(f"{view} failed on seq {event.seq}: {error!r}")
        self.view = view
        self.record = SetAside(event.seq, event_subject(event), event.type, describe(error),
                               event.time_ns, event_headers(event))


class Refold(Exception):
    """A view failed on an event of a run of batches folded without taking their writes:
    nothing of them is kept, and they must be prepared again as one batch that takes."""


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


def one_by_one(
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


def steps_for(views: Sequence[View], event_type: str) -> list[tuple[str, Step]]:
    """The handlers an event of `event_type` goes through, in `View.apply`'s order."""
    steps: list[tuple[str, Step]] = []
    for view in views:
        if view.any_event is not None:
            steps.append((view.name, view.any_event))
        handler = view.handlers.get(event_type)
        if handler is not None:
            steps.append((view.name, handler))
    return steps


def audit_set_aside(
    tx: Tx,
    views: Sequence[View],
    aside: Sequence[tuple[str, SetAside]],
    active: Sequence[tuple[View, int]],
) -> None:
    """Say in the audit log (when it is applying these events now) which views set what
    aside: the same rows in this transaction as in any rebuild, so `verify` agrees."""
    audit_at = next((pos for v, pos in active if v.name == AUDIT_VIEW.name), None)
    if audit_at is None:
        return
    order = {v.name: i for i, v in enumerate(views)}
    notes: dict[int, tuple[SetAside, list[str]]] = {}
    for view, r in aside:
        if r.seq > audit_at:
            notes.setdefault(r.seq, (r, []))[1].append(view)
    for _, names in notes.values():
        names.sort(key=lambda name: order.get(name, len(order)))
    note_set_aside(tx, [notes[seq] for seq in sorted(notes)])


def as_key(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_on = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is decoded and folded.

    A batch allocates a few hundred thousand short-lived objects (payload dicts, rows, tuples)
    next to a large, long-lived heap (the row caches, the deliveries read ahead): the collector
    then walks that heap again and again, for about a fifth of a rebuild's CPU. What a batch
    leaves behind is freed by reference counting; cycles wait for the next collection after it.
    Nested and concurrent uses are counted: the collector runs again when the last one ends
    (and only if it was on before the first).
    """
    global _gc_pausers, _gc_was_on
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_on = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_on:
                gc.enable()

