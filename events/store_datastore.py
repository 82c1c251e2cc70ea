"""What the JetStream recorders share: settings, the stream, its subjects, the connection.

The datastore also remembers, per aggregate, the stream sequences of the newest versions this
process has written or read, so that a write's concurrency check and a fast-forward read need
no extra round trip in the common case.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import nats.errors
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    OperationalError,
    StoredEvent,
    Tracking,
)
from eventsourcing.utils import Environment, strtobool

from . import subjects
from .natsio import GroupCommitter, JetStreamAPIError, NatsThread, OutMsg, StoredMsg
from .store_tokens import aggregate_path, decode_token, encode_token, originator_from_path

# NATS headers of JetStream's optimistic concurrency.
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"

# JetStream error codes that mean "someone else wrote first".
CONFLICT_CODES = {10071, 10164, 10077}

BATCH_READ = 1000  # messages asked for in one batched direct get
MAX_BATCH = 1000  # nats-server's default limit of messages in one atomic batch


class StoreSettings:
    """The store's environment (see `splice.events.jetstream`)."""

    def __init__(self, env: Environment) -> None:
        self.url = env.get("NATS_URL") or "nats://127.0.0.1:4222"
        self.stream = env.get("JETSTREAM_STREAM") or subjects.STREAM
        self.replicas = int(env.get("JETSTREAM_REPLICAS") or 1)
        self.duplicate_window_s = float(env.get("JETSTREAM_DUPLICATE_WINDOW") or 120)
        self.prefix = env.get("JETSTREAM_SUBJECT_PREFIX") or subjects.PREFIX
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

    def __init__(self, settings: StoreSettings, conn: NatsThread | None = None) -> None:
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

    def commit(self, msgs: Sequence[OutMsg]) -> tuple[int, int]:
        """Store `msgs` atomically: (last seq, count). A failed check raises IntegrityError."""
        if len(msgs) > MAX_BATCH:
            raise DataError(f"one write may hold at most {MAX_BATCH} messages, not {len(msgs)}")
        try:
            result: tuple[int, int] = self.call(self.committer.submit(msgs))
        except JetStreamAPIError as e:
            if e.err_code in CONFLICT_CODES:
                raise IntegrityError(e.description) from e
            if e.code == 503:
                raise OperationalError(str(e)) from e
            raise DataError(str(e)) from e
        return result

    def last(self, subject: str) -> StoredMsg | None:
        """The newest message on `subject` (a filter), by direct get."""
        found: StoredMsg | None = self.call(self.conn.direct_get_last(self.stream, subject))
        return found

    def read(self, subject: str, start: int, limit: int | None) -> list[StoredMsg]:
        """Messages on `subject` (a filter) from stream sequence `start`, in order."""
        out: list[StoredMsg] = []
        seq = start
        while True:
            want = BATCH_READ if limit is None else min(BATCH_READ, limit - len(out))
            if want <= 0:
                break
            msgs, pending = self.call(
                self.conn.direct_get_batch(self.stream, seq, subject, want, timeout=self.timeout)
            )
            out.extend(msgs)
            if not msgs or pending == 0:
                break
            seq = msgs[-1].seq + 1
        return out

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

    def claim_subject(self, tenant: str, command_id: str) -> str:
        return f"{self.prefix}.idem.{tenant}.{command_id}"

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
        subject = self.tracking_subject(tracking.application_name)
        last = self.last(subject)
        expected = 0
        if last is not None:
            if int(last.headers[subjects.H_TRACKING]) >= tracking.notification_id:
                raise IntegrityError(
                    f"tracking {tracking.application_name}@{tracking.notification_id} "
                    "is not after the last one recorded"
                )
            expected = last.seq
        return OutMsg(
            subject,
            b"",
            {subjects.H_TRACKING: str(tracking.notification_id), EXPECTED_LAST_SEQ: str(expected)},
        )

    def to_event(self, m: StoredMsg) -> tuple[StoredEvent, int]:
        parts = m.subject.split(".")
        # prefix may itself hold dots: the last five tokens are evt-relative.
        tenant, aggregate, ident, topic_token = parts[-4], parts[-3], parts[-2], parts[-1]
        originator_id = originator_from_path(tenant, aggregate, ident)
        topic = m.headers.get(subjects.H_TOPIC) or decode_token(topic_token)
        ev = StoredEvent(
            originator_id=originator_id,
            originator_version=int(m.headers[subjects.H_VERSION]),
            topic=topic,
            state=m.data,
        )
        return ev, m.seq

    def close(self) -> None:
        if self._own_conn:
            self.conn.close()
