"""What every command handler shares: the decision it returns, the application it loads from.

Each handler is a plain function of (application, tenant, command) → Decision. It raises a
`DomainError` to refuse. It does no I/O beyond loading aggregates through the application; the
executor saves the decision atomically (every aggregate it touched, in one batch) and re-runs the
handler on fresh state after a concurrency conflict. Tenant isolation is structural: every id a
command names is looked up under the command's own tenant, so another tenant's resource is
simply not found.

Poison: an aggregate whose stored events cannot all be decoded and applied (a forged or broken
event) is not loaded: `SpliceApplication.get_or_none` finds the first such event in the stream
and raises `PoisonedError` (code ``poisoned``, naming the aggregate and the event's stream
sequence), so every command that would decide on it is refused, deletes included — its state
is not known, and what a delete releases (address, quota, host) comes from that state. Commands
that do not read it, and other aggregates, are unaffected. The event is counted once per
process in ``splice_events_set_aside_total{reader="command"}``. An administrator repairs the
aggregate by making the event readable (an upcaster, a fixed applier); history is never
rewritten. A poisoned aggregate is never cached, so a repair takes effect at the next command.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    Recording,
)
from eventsourcing.persistence import PersistenceError, StoredEvent

from splice.events import subjects
from splice.events.metrics import count_set_aside
from splice.events.natswire import JetStreamAPIError

from .codec import UnreadableEventError
from .domain import NotFoundError, PoisonedError, SpliceAggregate, public_id
from .network import DEFAULT_QUOTAS

log = structlog.get_logger("splice.cmd")

MAX_ERROR = 200  # characters of a poisoned event's error in a refusal


@dataclass(frozen=True)
class Poison:
    """The first stored event of an aggregate that cannot be decoded or applied."""

    agg_id: str
    seq: int | None  # its stream sequence (None: a store without one)
    subject: str | None
    topic: str
    version: str  # as stored (a forged header need not be a number)
    error: str

    def refusal(self) -> PoisonedError:
        kind, _, public = self.agg_id.rpartition(".")
        kind = kind.partition(".")[2] or "aggregate"
        at = f"stream seq {self.seq}" if self.seq is not None else f"version {self.version}"
        error = " ".join(self.error.split())
        if len(error) > MAX_ERROR:
            error = error[: MAX_ERROR - 1] + "…"
        return PoisonedError(
            f"{kind} {public} holds an event that cannot be read ({at}, {self.topic}): {error}; "
            f"no change is decided on it until an administrator repairs that event",
            field=None,
        )


@dataclass
class Decision:
    subject: SpliceAggregate  # the aggregate the reply's version is about
    save: list[SpliceAggregate] = field(default_factory=list)
    result_id: str | None = None  # the reply's id when it is not the subject's (a listener, ...)


class SpliceApplication(Application[str]):
    """The command side's eventsourcing application (one per command-service process)."""

    name = "splice"

    def __init__(self, env: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(env=env, **kwargs)
        self.quota_defaults = dict(DEFAULT_QUOTAS)
        for item in filter(None, (self.env.get("SPLICE_QUOTAS") or "").split(",")):
            kind, _, n = item.partition("=")
            self.quota_defaults[kind.strip()] = int(n)
        self.pending_timeout = float(self.env.get("SPLICE_PENDING_TIMEOUT") or 300)
        self._poisons_seen: set[tuple[str, int | None, str]] = set()
        self._poisons_lock = threading.Lock()

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[str]]:
        """The library's `save` for Splice's aggregates only: it collects their pending events
        without the library's runtime protocol checks (a tenth of a command's time), which
        tell an event from an aggregate — here every object is a `SpliceAggregate`."""
        processing: ProcessingEvent[str] = ProcessingEvent()
        for agg in objs:
            if not isinstance(agg, SpliceAggregate):
                raise TypeError(f"not a Splice aggregate: {type(agg).__name__}")
            processing.events.extend(agg.collect_events())
            processing.aggregates[agg.id] = agg
        processing.saved_kwargs.update(kwargs)
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)
        return recordings

    def get_or_none(self, agg_id: str) -> Any:
        """The aggregate, None if it has no events; `PoisonedError` if one cannot be read."""
        loaded = _LOADED.get()
        if loaded is not None:
            loaded.add(agg_id)
        try:
            return self.repository.get(agg_id)
        except AggregateNotFoundError:
            return None
        except (PersistenceError, JetStreamAPIError):
            raise  # the store's (unavailable, conflict): not the events' fault
        except Exception as e:
            poison = self.find_poison(agg_id)
            if poison is None:
                raise
            self._seen(poison)
            raise poison.refusal() from e

    def find_poison(self, agg_id: str) -> Poison | None:
        """Read the aggregate's stored events again, one by one: the first that cannot be
        decoded or applied, or None when all of them can. Errors of the store propagate."""
        agg: Any = None
        for seq, subject, version, topic, to_stored in self._stored(agg_id):
            try:
                event: Any = self.mapper.to_domain_event(to_stored())
                agg = event.mutate(agg)
            except UnreadableEventError as e:
                return Poison(agg_id, seq, subject, topic, version, str(e))
            except Exception as e:
                return Poison(agg_id, seq, subject, topic, version, f"{type(e).__name__}: {e}")
        return None

    def _stored(
        self, agg_id: str
    ) -> Iterator[tuple[int | None, str | None, str, str, Callable[[], StoredEvent]]]:
        """(seq, subject, version, topic, a function making its StoredEvent) of each stored
        event: from the stream itself with the JetStream store (a broken header is one more
        way to be unreadable), else from the recorder."""
        ds = getattr(self.recorder, "datastore", None)
        if ds is None:
            for ev in self.recorder.select_events(agg_id):
                yield None, None, str(ev.originator_version), ev.topic, _given(ev)
            return
        for m in ds.read(ds.aggregate_filter(agg_id), 1, None):
            topic = subjects.topic_of(m.subject, m.headers)
            version = str(m.headers.get(subjects.H_VERSION, ""))
            yield m.seq, m.subject, version, topic, _reading(ds, m)

    def _seen(self, poison: Poison) -> None:
        """Log and count a poisoned event once per process (it refuses every command on it)."""
        key = (poison.agg_id, poison.seq, poison.version)
        with self._poisons_lock:
            if key in self._poisons_seen:
                return
            if len(self._poisons_seen) > 10_000:
                self._poisons_seen.clear()
            self._poisons_seen.add(key)
        count_set_aside("command")
        log.warning("event set aside: its aggregate's commands are refused", reader="command",
                    aggregate=poison.agg_id, seq=poison.seq, subject=poison.subject,
                    topic=poison.topic, version=poison.version, error=poison.error)

    def get_live(self, agg_id: str, what: str, field: str = "$.id") -> Any:
        agg = self.get_or_none(agg_id)
        if agg is None or getattr(agg, "deleted", False):
            raise NotFoundError(f"{what} {public_id(agg_id)} not found", field=field)
        return agg


def _given(ev: StoredEvent) -> Callable[[], StoredEvent]:
    return lambda: ev


def _reading(ds: Any, m: Any) -> Callable[[], StoredEvent]:
    """A stored message as a StoredEvent, when called (its headers may not be readable)."""
    return lambda: ds.to_event(m)[0]


Handler = Callable[[SpliceApplication, str, Any], Decision]

# The ids of the aggregates one decision read (so a refusal can be re-checked on fresh state).
_LOADED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("splice_loaded", default=None)


def tracking_loads() -> set[str]:
    """Start recording the aggregates loaded in this context; returns the set that fills."""
    loaded: set[str] = set()
    _LOADED.set(loaded)
    return loaded


class Touched:
    """The aggregates one decision changed, each once, in the order first touched."""

    def __init__(self) -> None:
        self._by_id: dict[str, SpliceAggregate] = {}

    def add(self, *aggs: SpliceAggregate | None) -> None:
        for agg in aggs:
            if agg is not None:
                self._by_id.setdefault(agg.id, agg)

    def get(self, app: SpliceApplication, agg_id: str, what: str, field: str) -> Any:
        """Load once per decision: a second load of the same id returns the same object."""
        if agg_id in self._by_id:
            agg = self._by_id[agg_id]
            if getattr(agg, "deleted", False):
                raise NotFoundError(f"{what} {public_id(agg_id)} not found", field)
            return agg
        agg = app.get_live(agg_id, what, field)
        return agg

    def touched(self, agg_id: str) -> SpliceAggregate | None:
        return self._by_id.get(agg_id)

    def load_or_create(
        self, app: SpliceApplication, agg_id: str, create: Callable[[], SpliceAggregate]
    ) -> Any:
        """The aggregate this decision already touched, else the stored one, else a new one."""
        agg = self._by_id.get(agg_id) or app.get_or_none(agg_id) or create()
        self.add(agg)
        return agg

    def list(self) -> list[SpliceAggregate]:
        return [a for a in self._by_id.values() if a.pending_events]
