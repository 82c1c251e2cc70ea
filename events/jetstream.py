"""The JetStream event store: an `eventsourcing` persistence module.

Select it as the library's own modules are selected::

    PERSISTENCE_MODULE=splice.events.jetstream
    NATS_URL=nats://127.0.0.1:4222          # where the server is
    JETSTREAM_STREAM=SPLICE_EVENTS          # the stream (created when missing)
    JETSTREAM_REPLICAS=1                    # 3 on a cluster
    JETSTREAM_DUPLICATE_WINDOW=120          # seconds of Nats-Msg-Id de-duplication
    JETSTREAM_SUBJECT_PREFIX=splice         # subjects live under <prefix>.evt / .trk / .idem

Layout of the stream (file storage, `allow_atomic`, `allow_direct`, `deny_delete`, `deny_purge`,
no age or count limits, so stream sequences are gap-free and permanent):

* ``<prefix>.evt.<tenant>.<aggregate>.<id>.<type>`` — one message per domain event; the first four
  tokens name the aggregate, the last one the event's topic (so that selecting notifications by
  topic is a subject filter served by the server). Splice's aggregate ids are strings
  ``<tenant>.<aggregate>.<uuid>``; any other id (a UUID, as in the library's tests) is stored
  under tenant ``_`` and aggregate ``uuid`` or ``str``.
* ``<prefix>.trk.<application>`` — tracking records of process applications.
* ``<prefix>.idem.<tenant>.<command id>`` — the result of a handled command (see `claim`).

Concurrency: the first message of each aggregate in a write carries
``Nats-Expected-Last-Subject-Sequence`` over that aggregate's subjects; the server rejects the
write when another one got there first (err 10071), and the recorder raises `IntegrityError`.
Several messages go as one atomic batch (ADR-50): all of them are stored, or none.

Durability is the server's: run it with ``jetstream { sync_interval: always }`` (what `splice up`
and the tests do) so an acknowledged event has been fsynced before the acknowledgement.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote
from uuid import UUID

import nats.errors
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import Environment, resolve_topic, strtobool

from .natsio import GroupCommitter, JetStreamAPIError, NatsThread, OutMsg, StoredMsg

# Header names written on every event message.
H_VERSION = "Splice-Version"
H_TOPIC = "Splice-Topic"
H_TRACKING = "Splice-Tracking-Id"

# JetStream error codes that mean "someone else wrote first".
_CONFLICT_CODES = {10071, 10164, 10077}

_TOKEN_OK = re.compile(r"^[A-Za-z0-9_-]+$")
_BATCH_READ = 1000
MAX_BATCH = 1000  # nats-server's default limit of messages in one atomic batch


def encode_token(value: str) -> str:
    """Encode any string as one subject token, reversibly (percent-encoding)."""
    if _TOKEN_OK.match(value):
        return value
    out = []
    for ch in value:
        if ch.isascii() and (ch.isalnum() or ch in "_-:~!@$^&()+=,;[]{}|<'\"`/?"):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out) or "%00"


def decode_token(token: str) -> str:
    return "" if token == "%00" else unquote(token)


def aggregate_path(originator_id: UUID | str) -> str:
    """The three subject tokens naming an aggregate: tenant.aggregate.id."""
    if isinstance(originator_id, UUID):
        return f"_.uuid.{originator_id}"
    parts = originator_id.split(".")
    if len(parts) == 3 and all(_TOKEN_OK.match(p) for p in parts) and parts[0] != "_":
        return originator_id
    return f"_.str.{encode_token(originator_id)}"


def originator_from_path(tenant: str, aggregate: str, ident: str) -> UUID | str:
    if tenant == "_":
        if aggregate == "uuid":
            return UUID(ident)
        return decode_token(ident)
    return f"{tenant}.{aggregate}.{ident}"


class _Settings:
    def __init__(self, env: Environment) -> None:
        self.url = env.get("NATS_URL") or "nats://127.0.0.1:4222"
        self.stream = env.get("JETSTREAM_STREAM") or "SPLICE_EVENTS"
        self.replicas = int(env.get("JETSTREAM_REPLICAS") or 1)
        self.duplicate_window_s = float(env.get("JETSTREAM_DUPLICATE_WINDOW") or 120)
        self.prefix = env.get("JETSTREAM_SUBJECT_PREFIX") or "splice"
        self.create = strtobool(env.get("CREATE_TABLE") or "yes")
        self.timeout = float(env.get("JETSTREAM_TIMEOUT") or 10)
        # commits in flight at once (each an atomic batch of the writes that queued meanwhile)
        self.inflight = int(env.get("JETSTREAM_COMMIT_INFLIGHT") or 1)


def stream_config(
    name: str, prefix: str, replicas: int = 1, duplicate_window_s: float = 120.0
) -> dict[str, Any]:
    """The stream's configuration, as sent to $JS.API.STREAM.CREATE."""
    return {
        "name": name,
        "subjects": [f"{prefix}.evt.>", f"{prefix}.trk.>", f"{prefix}.idem.>"],
        "storage": "file",
        "num_replicas": replicas,
        "retention": "limits",
        "discard": "old",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "duplicate_window": int(duplicate_window_s * 1_000_000_000),
        "allow_atomic": True,
        "allow_direct": True,
        "deny_delete": True,
        "deny_purge": True,
    }


class JetStreamDatastore:
    """What the recorders share: the connection, the stream's name and subject layout."""

    def __init__(self, settings: _Settings, conn: NatsThread | None = None) -> None:
        self.settings = settings
        self.stream = settings.stream
        self.prefix = settings.prefix
        self.timeout = settings.timeout
        self._own_conn = conn is None
        self.conn = conn or NatsThread(settings.url, name=f"splice-store-{settings.stream}")
        self.committer = GroupCommitter(
            self.conn, max_msgs=MAX_BATCH, timeout=settings.timeout, inflight=settings.inflight
        )
        # originator id -> {version: stream seq} of the newest events this process has seen
        # (a few per aggregate: a fast-forward asks for events after a version it held).
        self._last: OrderedDict[UUID | str, dict[int, int]] = OrderedDict()
        self._last_lock = threading.Lock()

    def ensure_stream(self) -> None:
        cfg = stream_config(
            self.stream, self.prefix, self.settings.replicas, self.settings.duplicate_window_s
        )
        try:
            self.call(self.conn.api(f"$JS.API.STREAM.INFO.{self.stream}", None))
        except JetStreamAPIError as e:
            if e.err_code != 10059:  # stream not found
                raise OperationalError(str(e)) from e
            try:
                self.call(self.conn.api(f"$JS.API.STREAM.CREATE.{self.stream}", cfg))
            except JetStreamAPIError as e2:
                if e2.err_code != 10058:  # created meanwhile by another process
                    raise OperationalError(str(e2)) from e2

    def call(self, coro: Any) -> Any:
        try:
            return self.conn.call(coro, timeout=self.timeout + 5)
        except JetStreamAPIError as e:
            if e.code == 503:  # no JetStream (or no quorum) behind the API right now
                raise OperationalError(str(e)) from e
            raise
        except TimeoutError as e:
            raise OperationalError(f"JetStream did not answer in time: {e}") from e
        except (OSError, ConnectionError, nats.errors.Error) as e:
            raise OperationalError(f"{type(e).__name__}: {e}") from e

    # subjects
    def event_subject(self, originator_id: UUID | str, topic: str) -> str:
        return f"{self.prefix}.evt.{aggregate_path(originator_id)}.{encode_token(topic)}"

    def aggregate_filter(self, originator_id: UUID | str) -> str:
        return f"{self.prefix}.evt.{aggregate_path(originator_id)}.*"

    def topic_filter(self, topic: str | None) -> str:
        if topic is None:
            return f"{self.prefix}.evt.>"
        return f"{self.prefix}.evt.*.*.*.{encode_token(topic)}"

    def tracking_subject(self, application_name: str) -> str:
        return f"{self.prefix}.trk.{encode_token(application_name)}"

    # cache of newest known (version, seq) per aggregate
    def remember(self, originator_id: UUID | str, version: int, seq: int) -> None:
        with self._last_lock:
            known = self._last.get(originator_id)
            if known is None:
                known = self._last[originator_id] = {}
            known[version] = seq
            if len(known) > 8:
                del known[min(known)]
            self._last.move_to_end(originator_id)
            if len(self._last) > 100_000:
                self._last.popitem(last=False)

    def recall(self, originator_id: UUID | str) -> tuple[int, int] | None:
        """The newest (version, seq) known for the aggregate."""
        with self._last_lock:
            known = self._last.get(originator_id)
            if not known:
                return None
            v = max(known)
            return v, known[v]

    def seq_of(self, originator_id: UUID | str, version: int) -> int | None:
        """The stream sequence of the aggregate's event `version`, if this process knows it."""
        with self._last_lock:
            known = self._last.get(originator_id)
            return None if not known else known.get(version)

    def forget(self, originator_id: UUID | str) -> None:
        with self._last_lock:
            self._last.pop(originator_id, None)

    def tracking_msg(self, tracking: Tracking) -> OutMsg:
        """The next tracking record, checked against the last one recorded (on the server)."""
        ds = self
        subject = ds.tracking_subject(tracking.application_name)
        last = ds.call(ds.conn.direct_get_last(ds.stream, subject))
        expected = 0
        if last is not None:
            if int(last.headers[H_TRACKING]) >= tracking.notification_id:
                raise IntegrityError(
                    f"tracking {tracking.application_name}@{tracking.notification_id} "
                    "is not after the last one recorded"
                )
            expected = last.seq
        return OutMsg(
            subject,
            b"",
            {
                H_TRACKING: str(tracking.notification_id),
                "Nats-Expected-Last-Subject-Sequence": str(expected),
            },
        )

    def to_event(self, m: StoredMsg) -> tuple[StoredEvent, int]:
        parts = m.subject.split(".")
        # prefix may itself hold dots: the last five tokens are evt-relative.
        tenant, aggregate, ident, topic_token = parts[-4], parts[-3], parts[-2], parts[-1]
        originator_id = originator_from_path(tenant, aggregate, ident)
        topic = m.headers.get(H_TOPIC) or decode_token(topic_token)
        ev = StoredEvent(
            originator_id=originator_id,
            originator_version=int(m.headers[H_VERSION]),
            topic=topic,
            state=m.data,
        )
        return ev, m.seq

    def close(self) -> None:
        if self._own_conn:
            self.conn.close()


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
        last = ds.call(ds.conn.direct_get_last(ds.stream, ds.aggregate_filter(originator_id)))
        if last is None:
            return 0
        version = int(last.headers[H_VERSION])
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
            headers = {H_VERSION: str(ev.originator_version), H_TOPIC: ev.topic}
            if extra_headers:
                headers.update(extra_headers)
            if prev is None:
                expected = self._expected_for(ev.originator_id, ev.originator_version)
                headers["Nats-Expected-Last-Subject-Sequence"] = str(expected)
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = ds.aggregate_filter(
                    ev.originator_id
                )
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
        claim: tuple[str, bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> list[int]:
        """Append events (and a tracking record, and a command claim) atomically.

        `claim` is (subject suffix, payload): a message on ``<prefix>.idem.<suffix>`` that must
        be the first on its subject, so a command id is handled once, atomically with its events.
        Returns the stream sequences of the events.
        """
        ds = self.datastore
        if not stored_events and tracking is None and claim is None:
            return []
        msgs = self._build(stored_events, headers)
        if tracking is not None:
            msgs.append(ds.tracking_msg(tracking))
        if claim is not None:
            msgs.append(
                OutMsg(
                    f"{ds.prefix}.idem.{claim[0]}",
                    claim[1],
                    {"Nats-Expected-Last-Subject-Sequence": "0"},
                )
            )
        if len(msgs) > MAX_BATCH:
            raise DataError(f"one write may hold at most {MAX_BATCH} messages, not {len(msgs)}")
        try:
            last_seq, count = ds.call(ds.committer.submit(msgs))
        except JetStreamAPIError as e:
            for ev in stored_events:
                ds.forget(ev.originator_id)
            if e.err_code in _CONFLICT_CODES:
                raise IntegrityError(e.description) from e
            if e.code == 503:
                raise OperationalError(str(e)) from e
            raise DataError(str(e)) from e
        first_seq = last_seq - count + 1
        seqs = list(range(first_seq, first_seq + len(stored_events)))
        for ev, seq in zip(stored_events, seqs, strict=True):
            ds.remember(ev.originator_id, ev.originator_version, seq)
        return seqs

    # -- reading ---------------------------------------------------------------------------

    def _read_subject(self, subject: str, start: int, limit: int | None) -> list[StoredMsg]:
        ds = self.datastore
        out: list[StoredMsg] = []
        seq = start
        while True:
            want = _BATCH_READ if limit is None else min(_BATCH_READ, limit - len(out))
            if want <= 0:
                break
            msgs, pending = ds.call(
                ds.conn.direct_get_batch(ds.stream, seq, subject, want, timeout=ds.timeout)
            )
            out.extend(msgs)
            if not msgs or pending == 0:
                break
            seq = msgs[-1].seq + 1
        return out

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
            last = ds.call(ds.conn.direct_get_last(ds.stream, subject))
            if last is None:
                return []
            ev, seq = ds.to_event(last)
            ds.remember(originator_id, ev.originator_version, seq)
            return [ev] if gt is None or ev.originator_version > gt else []
        start = 1
        if gt is not None:
            known_seq = ds.seq_of(originator_id, gt)
            if known_seq is not None:
                start = known_seq + 1  # nothing at or below `gt` is wanted: read only what follows
        events: list[StoredEvent] = []
        newest: tuple[int, int] | None = None
        for m in self._read_subject(subject, start, None):
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
            msgs.extend(self._read_subject(f, first, limit))
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
        """The stream sequence of one stored event of an aggregate."""
        ds = self.datastore
        known = ds.seq_of(originator_id, version)
        if known is not None:
            return known
        for m in self._read_subject(ds.aggregate_filter(originator_id), 1, None):
            if int(m.headers[H_VERSION]) == version:
                ds.remember(originator_id, version, m.seq)
                return m.seq
        return None

    def get_claim(self, suffix: str) -> tuple[int, bytes] | None:
        """The claim stored on ``<prefix>.idem.<suffix>`` by an earlier write: (seq, payload)."""
        ds = self.datastore
        last = ds.call(ds.conn.direct_get_last(ds.stream, f"{ds.prefix}.idem.{suffix}"))
        return None if last is None else (last.seq, last.data)

    def max_notification_id(self) -> int | None:
        ds = self.datastore
        last = ds.call(ds.conn.direct_get_last(ds.stream, ds.topic_filter(None)))
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
        self._select_limit = _BATCH_READ
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
        msg = ds.tracking_msg(tracking)
        try:
            ds.call(ds.committer.submit([msg]))
        except JetStreamAPIError as e:
            if e.err_code in _CONFLICT_CODES:
                raise IntegrityError(e.description) from e
            raise DataError(str(e)) from e

    def max_tracking_id(self, application_name: str) -> int | None:
        ds = self.datastore
        last = ds.call(ds.conn.direct_get_last(ds.stream, ds.tracking_subject(application_name)))
        return None if last is None else int(last.headers[H_TRACKING])


class JetStreamProcessRecorder(
    JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder
):
    def __init__(self, datastore: JetStreamDatastore) -> None:
        self.datastore = datastore


class JetStreamFactory(InfrastructureFactory[JetStreamTrackingRecorder]):
    """Builds JetStream recorders from the environment (see the module's docstring)."""

    def __init__(self, env: Environment | Mapping[str, str] | None) -> None:
        super().__init__(env)
        self.settings = _Settings(self.env)
        self._datastores: dict[str, JetStreamDatastore] = {}
        self._conn: NatsThread | None = None

    def _datastore(self, purpose: str) -> JetStreamDatastore:
        ds = self._datastores.get(purpose)
        if ds is None:
            if self._conn is None:
                self._conn = NatsThread(self.settings.url, name="splice-store")
            settings = _Settings(self.env)
            if purpose != "events":
                settings.stream = f"{settings.stream}_{purpose.upper()}"
                settings.prefix = f"{settings.prefix}.{purpose}"
            ds = JetStreamDatastore(settings, conn=self._conn)
            if settings.create:
                ds.ensure_stream()
            self._datastores[purpose] = ds
        return ds

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return JetStreamAggregateRecorder(self._datastore(purpose))

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        cls: type[JetStreamApplicationRecorder] = (
            resolve_topic(topic) if topic else JetStreamApplicationRecorder
        )
        return cls(self._datastore("events"))

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = resolve_topic(topic) if topic else JetStreamTrackingRecorder
        assert tracking_recorder_class is not None
        return tracking_recorder_class(self._datastore("events"))

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        cls: type[JetStreamProcessRecorder] = (
            resolve_topic(topic) if topic else JetStreamProcessRecorder
        )
        return cls(self._datastore("events"))

    def close(self) -> None:
        self._datastores.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


__all__ = [
    "JetStreamAggregateRecorder",
    "JetStreamApplicationRecorder",
    "JetStreamDatastore",
    "JetStreamFactory",
    "JetStreamProcessRecorder",
    "JetStreamTrackingRecorder",
    "stream_config",
]
