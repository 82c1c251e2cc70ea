"""The JetStream recorders: aggregate, application (with its subscription), tracking, process.

Concurrency: the first message of each aggregate in a write carries
``Nats-Expected-Last-Subject-Sequence`` over that aggregate's subjects; the server rejects the
write when another one got there first (err 10071), and the recorder raises `IntegrityError`.
Several messages go as one atomic batch (ADR-50): all of them are stored, or none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from . import subjects
from .natswire import OutMsg, StoredMsg
from .store_commands import CommandResult, CommandWrite, read_claim
from .store_datastore import (
    BATCH_READ,
    EXPECTED_LAST_SEQ,
    EXPECTED_LAST_SEQ_SUBJECT,
    JetStreamDatastore,
    walk_pays,
)


class JetStreamAggregateRecorder(AggregateRecorder):
    def __init__(self, datastore: JetStreamDatastore) -> None:
        self.datastore = datastore

    # -- writing ---------------------------------------------------------------------------

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._insert(stored_events, **kwargs)
        return None

    def _expected_for(self, originator_id: UUID | str, first_version: int) -> int:
        """The stream sequence of this aggregate's newest event, checked against the version."""
        ds = self.datastore
        known = ds.recall(originator_id)
        if known is not None:
            if known[0] >= first_version:
                raise IntegrityError(f"version {first_version} of {originator_id} already exists")
            if known[0] == first_version - 1:
                return known[1]
        if first_version <= 1 and known is None:
            return 0  # a new aggregate: the server rejects it if the subject is not empty
        last = ds.last(ds.aggregate_filter(originator_id))
        if last is None:
            return 0
        version = int(last.headers[subjects.H_VERSION])
        ds.remember(originator_id, version, last.seq)
        if version >= first_version:
            raise IntegrityError(f"version {first_version} of {originator_id} already exists")
        return last.seq

    def _build(
        self, stored_events: Sequence[StoredEvent], extra_headers: Mapping[str, str] | None
    ) -> list[OutMsg]:
        ds = self.datastore
        msgs: list[OutMsg] = []
        newest: dict[UUID | str, int] = {}
        for ev in stored_events:
            prev = newest.get(ev.originator_id)
            headers = {subjects.H_VERSION: str(ev.originator_version), subjects.H_TOPIC: ev.topic}
            if extra_headers:
                headers.update(extra_headers)
            if prev is None:
                expected = self._expected_for(ev.originator_id, ev.originator_version)
                headers[EXPECTED_LAST_SEQ] = str(expected)
                headers[EXPECTED_LAST_SEQ_SUBJECT] = ds.aggregate_filter(ev.originator_id)
            elif ev.originator_version <= prev:
                raise IntegrityError(
                    f"version {ev.originator_version} of {ev.originator_id} given twice"
                )
            newest[ev.originator_id] = ev.originator_version
            if not isinstance(ev.state, bytes):
                raise DataError("stored event state must be bytes")
            msgs.append(OutMsg(ds.event_subject(ev.originator_id, ev.topic), ev.state, headers))
        return msgs

    def _insert(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        tracking: Tracking | None = None,
        command: CommandWrite | None = None,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> list[int]:
        """Append events (and a tracking record, and a command's claim) atomically.

        `command` stamps every event with who acted and, when it asks for one, ends the write
        with the claim of its command id (see `store_commands`). Returns the events' stream
        sequences.
        """
        ds = self.datastore
        if command is not None:
            headers = {**command.headers(), **(headers or {})}
        claim = command is not None and command.claim
        if not stored_events and tracking is None and not claim:
            return []
        msgs = self._build(stored_events, headers)
        if tracking is not None:
            msgs.append(ds.tracking_msg(tracking))
        if command is not None and claim:
            subject = ds.claim_subject(command.tenant, command.command_id)
            msgs.append(command.claim_msg(subject, stored_events))
        # (On failure the sequences remembered for these aggregates stay true: versions are
        # never rewritten, and a later write checks its own expectations on the server.)
        last_seq, count = ds.commit(msgs)
        first_seq = last_seq - count + 1
        seqs = list(range(first_seq, first_seq + len(stored_events)))
        for ev, seq in zip(stored_events, seqs, strict=True):
            ds.remember(ev.originator_id, ev.originator_version, seq)
        return seqs

    # -- reading ---------------------------------------------------------------------------

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        ds = self.datastore
        subject = ds.aggregate_filter(originator_id)
        if desc and limit == 1 and lte is None:
            last = ds.last(subject)
            if last is None:
                return []
            ev, seq = ds.to_event(last)
            ds.remember(originator_id, ev.originator_version, seq)
            return [ev] if gt is None or ev.originator_version > gt else []
        start = 1
        if lte is None and limit is None:  # all after `gt`: bounded by how many there are
            walked = self._walk(originator_id, subject, gt)
            if walked is not None:
                return walked[::-1] if desc else walked
        if gt is not None and gt > 0:
            # nothing at or below `gt` is wanted: read only what follows (a bounded search
            # finds where `gt` is when this process does not know it)
            known_seq = ds.find_seq(originator_id, gt)
            if known_seq is not None:
                start = known_seq + 1
        events: list[StoredEvent] = []
        newest: tuple[int, int] | None = None
        for m in ds.read(subject, start, None):
            ev, seq = ds.to_event(m)
            newest = (ev.originator_version, seq)
            if gt is not None and ev.originator_version <= gt:
                continue
            if lte is not None and ev.originator_version > lte:
                continue
            events.append(ev)
        if newest is not None:
            ds.remember(originator_id, *newest)
        if desc:
            events.reverse()
        if limit is not None:
            events = events[:limit]
        return events

    def _walk(self, originator_id: UUID | str, subject: str,
              gt: int | None) -> list[StoredEvent] | None:
        """The aggregate's events after version `gt` (None: all), by back-pointers from its
        newest (see `walk_back`); None when a scan of the stream costs less (`walk_pays`) or
        the chain breaks."""
        ds = self.datastore
        last = ds.last(subject)
        if last is None:
            return []
        newest = int(last.headers[subjects.H_VERSION])
        ds.remember(originator_id, newest, last.seq)
        if gt is not None and newest <= gt:
            return []
        from_seq = (ds.seq_of(originator_id, gt) or 0) if gt else 0  # where a scan would start
        if not walk_pays(newest - (gt or 0), last.seq - from_seq):
            return None
        msgs = ds.walk_back(last, subject, None if gt is None else gt + 1)
        if msgs is None:
            return None
        return [ds.to_event(m)[0] for m in msgs]


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self._insert(stored_events, **kwargs)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        first = 1 if start is None else (start if inclusive_of_start else start + 1)
        if limit <= 0 or (stop is not None and stop < first):
            return []
        ds = self.datastore
        filters = [ds.topic_filter(None)] if not topics else [ds.topic_filter(t) for t in topics]
        msgs: list[StoredMsg] = []
        for f in filters:
            msgs.extend(ds.read(f, first, limit))
        if len(filters) > 1:
            msgs.sort(key=lambda m: m.seq)
        out: list[Notification] = []
        for m in msgs:
            if stop is not None and m.seq > stop:
                break
            ev, seq = ds.to_event(m)
            out.append(
                Notification(
                    id=seq,
                    originator_id=ev.originator_id,
                    originator_version=ev.originator_version,
                    topic=ev.topic,
                    state=ev.state,
                )
            )
            if len(out) >= limit:
                break
        return out

    def seq_of_version(self, originator_id: UUID | str, version: int) -> int | None:
        """The stream sequence of one stored event of an aggregate (a bounded search: never a
        read of the aggregate's events)."""
        return self.datastore.find_seq(originator_id, version)

    def command_result(self, tenant: str, command_id: str) -> CommandResult | None:
        """What the first claim of this command id recorded, if one was stored."""
        ds = self.datastore
        first = ds.first(ds.claim_subject(tenant, command_id))
        return None if first is None else read_claim(first)

    def record_unchanged(self, command: CommandWrite) -> None:
        """Claim a command that changed nothing (see `store_commands`). Raises IntegrityError
        when its reply's aggregate changed since the decision (decide again)."""
        ds = self.datastore
        target_seq = ds.find_seq(command.target_id, command.target_version)
        if target_seq is None:
            raise IntegrityError(
                f"version {command.target_version} of {command.target_id} is not stored"
            )
        subject = ds.claim_subject(command.tenant, command.command_id)
        ds.commit(
            [
                command.unchanged_claim_msg(
                    subject, ds.aggregate_filter(command.target_id), target_seq
                )
            ]
        )

    def max_notification_id(self) -> int | None:
        ds = self.datastore
        last = ds.last(ds.topic_filter(None))
        return None if last is None else last.seq

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return JetStreamSubscription(self, gt=gt, topics=topics)


class JetStreamSubscription(ListenNotifySubscription[JetStreamApplicationRecorder]):
    """Pulls notifications with batched direct gets; new messages on the stream wake it up."""

    def __init__(
        self,
        recorder: JetStreamApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        self._sub: Any = None
        ds = recorder.datastore
        self._ds = ds

        async def wake(_msg: Any) -> None:
            self._has_been_notified.set()

        async def subscribe() -> Any:
            return await ds.conn.nc.subscribe(ds.topic_filter(None), cb=wake)

        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._select_limit = BATCH_READ
        self._sub = ds.call(subscribe())
        self._has_been_notified.set()  # catch anything written before the wake-up subscription

    def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                self._ds.call(sub.unsubscribe())
            except Exception:  # noqa: S110 - the connection may already be closed
                pass
        super().stop()


class JetStreamTrackingRecorder(TrackingRecorder):
    def __init__(self, datastore: JetStreamDatastore) -> None:
        self.datastore = datastore

    def insert_tracking(self, tracking: Tracking) -> None:
        ds = self.datastore
        ds.commit([ds.tracking_msg(tracking)])

    def max_tracking_id(self, application_name: str) -> int | None:
        ds = self.datastore
        last = ds.last(ds.tracking_subject(application_name))
        return None if last is None else int(last.headers[subjects.H_TRACKING])


class JetStreamProcessRecorder(
    JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder
):
    def __init__(self, datastore: JetStreamDatastore) -> None:
        self.datastore = datastore
