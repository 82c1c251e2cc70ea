"""What the JetStream recorders share: settings, the stream, its subjects, the connection.

The datastore also remembers, per aggregate, the stream sequences of the newest versions this
process has written or read, so that a write's concurrency check and a fast-forward read need
no extra round trip in the common case; an older version's sequence is found by a bounded
search (a few direct gets), never by reading the aggregate from its start.

A request in flight when the connection to NATS is lost is never answered (its reply went to a
server that is gone, or never reached it): the datastore fails such requests at once with
`OperationalError` ("outcome unknown") instead of letting each wait for its timeout, so that
the callers decide again as soon as the server is back. Requests made while the client is
reconnecting wait for the new connection (nats-py holds them until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
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
from .committer import GroupCommitter
from .natsio import NatsThread
from .natswire import JetStreamAPIError, OutMsg, StoredMsg
from .store_tokens import aggregate_path, decode_token, encode_token, originator_from_path

# NATS headers of JetStream's optimistic concurrency.
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"

# JetStream error codes that mean "someone else wrote first".
CONFLICT_CODES = {10071, 10164, 10077}

BATCH_READ = 1000  # messages asked for in one batched direct get
# Reading an aggregate's events: by its back-pointers, one direct get by sequence each (about
# 0.2 ms), or by its subject filter, a server-side scan from where it starts (about 2 ms, plus
# 0.07 ms per 1,000 messages scanned) — measured with bench/log_growth.py. The walk is taken
# when it costs less: for up to WALK_FREE events, plus one per WALK_SPAN messages of the scan,
# and never more than WALK_MAX (a walk is one call to the store's loop, bounded in time). It
# makes as many gets as the aggregate has events, whatever the stream's length (on a server
# just restarted, each may still read a block back from disk).
WALK_FREE = 8
WALK_SPAN = 2500
WALK_MAX = 512

MAX_BATCH = 1000  # nats-server's default limit of messages in one atomic batch


def walk_pays(events: int, span: int) -> bool:
    """Whether `events` direct gets cost less than a scan of `span` messages."""
    return events <= min(WALK_MAX, WALK_FREE + span // WALK_SPAN)


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """JetStream's silence, a lost connection or a 503 (no JetStream, or no quorum, behind the
    API right now) as `OperationalError`: the caller waits and decides again."""
    try:
        yield
    except JetStreamAPIError as e:
        if e.code == 503:
            raise OperationalError(str(e)) from e
        raise
    except TimeoutError as e:
        raise OperationalError(f"JetStream did not answer in time: {e}") from e
    except (OSError, ConnectionError, nats.errors.Error) as e:
        raise OperationalError(f"{type(e).__name__}: {e}") from e


class StoreSettings:
    """The store's environment (see `splice.events.jetstream`)."""

    def __init__(self, env: Environment) -> None:
        self.url = env.get("NATS_URL") or "nats://127.0.0.1:4222"
        self.stream = env.get("JETSTREAM_STREAM") or subjects.STREAM
        self.replicas = int(env.get("JETSTREAM_REPLICAS") or 1)
        self.duplicate_window_s = float(env.get("JETSTREAM_DUPLICATE_WINDOW") or 120)
        self.prefix = env.get("JETSTREAM_SUBJECT_PREFIX") or subjects.PREFIX
        self.create = strtobool(env.get("CREATE_TABLE") or "yes")
        # How long a write or read waits for JetStream's answer. An ack takes milliseconds; a
        # write whose answer was lost (a server restarting mid-batch) has an unknown outcome and
        # is decided again on fresh state, so a long wait only stalls every commit behind it.
        self.timeout = float(env.get("JETSTREAM_TIMEOUT") or 3)
        # commits in flight at once (each an atomic batch of the writes that queued meanwhile)
        self.inflight = int(env.get("JETSTREAM_COMMIT_INFLIGHT") or 1)
        # one-message writes in flight as plain publishes (beyond: they join the batches). On
        # R1 with fsync always, 32 concurrent single publishes outrun atomic batches of them
        # (~3,350 vs ~2,800 writes/s, same CPU per write): a batch's commit costs ~4.5 ms
        self.direct = int(env.get("JETSTREAM_COMMIT_DIRECT") or 64)


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
            self.conn, max_msgs=MAX_BATCH, timeout=settings.timeout, inflight=settings.inflight,
            direct=settings.direct,
        )
        # requests waiting for an answer (tasks on the connection's loop), and those of them
        # that a lost connection doomed
        self._waiting: set[asyncio.Task[Any]] = set()
        self._lost: set[asyncio.Task[Any]] = set()
        self.connection_losses = 0
        self.conn.on_disconnect(self._connection_lost)
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

    def _connection_lost(self) -> None:
        """On the loop: fail every request in flight, they will not be answered."""
        self.connection_losses += 1
        self._lost |= self._waiting
        for task in self._waiting:
            task.cancel()
        self.committer.abandon()

    async def _guarded(self, coro: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            return await coro
        except asyncio.CancelledError:
            if task not in self._lost:
                raise
            task.uncancel()
            raise ConnectionError(
                "the connection to NATS was lost before the answer came (outcome unknown)"
            ) from None
        finally:
            self._waiting.discard(task)
            self._lost.discard(task)

    def call(self, coro: Any) -> Any:
        with _unavailable():
            return self.conn.call(self._guarded(coro), timeout=self.timeout + 5)

    def commit(self, msgs: Sequence[OutMsg]) -> tuple[int, int]:
        """Store `msgs` atomically: (last seq, count). A failed check raises IntegrityError."""
        if len(msgs) > MAX_BATCH:
            raise DataError(f"one write may hold at most {MAX_BATCH} messages, not {len(msgs)}")
        try:
            with _unavailable():
                result: tuple[int, int] = self.committer.write(msgs, self.timeout + 5)
        except JetStreamAPIError as e:
            if e.err_code in CONFLICT_CODES:
                raise IntegrityError(e.description) from e
            raise DataError(str(e)) from e
        return result

    def last(self, subject: str) -> StoredMsg | None:
        """The newest message on `subject` (a filter), by direct get."""
        found: StoredMsg | None = self.call(self.conn.direct_get_last(self.stream, subject))
        return found

    def first(self, subject: str, start: int = 1) -> StoredMsg | None:
        """The first message on `subject` (a filter) at or after stream sequence `start`."""
        found: StoredMsg | None = self.call(
            self._direct_get({"seq": max(start, 1), "next_by_subj": subject})
        )
        return found

    async def _direct_get(self, request: dict[str, Any]) -> StoredMsg | None:
        """One message by direct get (on the connection's loop); None when there is none."""
        return await self.conn.direct_get(self.stream, request, self.timeout)

    def find_seq(self, originator_id: UUID | str, version: int) -> int | None:
        """The stream sequence of the aggregate's event `version`, or None if it has none.

        Known versions answer at once; any other is found by bisecting the stream between
        sequences that bound it (the versions of one aggregate grow with the sequence), with
        one direct get per step: about log2(stream length) round trips, whatever the length of
        the aggregate.
        """
        known = self.seq_of(originator_id, version)
        if known is not None:
            return known
        subject = self.aggregate_filter(originator_id)
        newest = self.recall(originator_id)
        if newest is None or newest[0] < version:
            last = self.last(subject)
            if last is None:
                return None
            newest = (int(last.headers[subjects.H_VERSION]), last.seq)
            self.remember(originator_id, *newest)
        if version > newest[0] or version < 1:
            return None
        # seq(version) lies in [lo, hi]: each version of the aggregate takes one sequence
        lo, hi = version, newest[1] - (newest[0] - version)
        with self._last_lock:
            for v, seq in (self._last.get(originator_id) or {}).items():
                if v == version:
                    return seq
                if v > version:
                    hi = min(hi, seq - (v - version))
                else:
                    lo = max(lo, seq + (version - v))
        while lo <= hi:
            mid = (lo + hi) // 2
            m = self.first(subject, mid)
            if m is None:  # nothing of the aggregate at or after mid: it is before
                hi = mid - 1
                continue
            v = int(m.headers[subjects.H_VERSION])
            if v == version:
                return m.seq
            if v < version:
                lo = m.seq + (version - v)
            else:
                hi = min(mid - 1, m.seq - (v - version))
        return None

    def walk_back(self, last: StoredMsg, subject: str,
                  down_to: int | None = None) -> list[StoredMsg] | None:
        """The messages of the aggregate whose newest is `last` (on `subject`, its filter) from
        version `down_to` on (None: from its first), in order, by following its writes'
        back-pointers: one direct get by sequence per event, no scan of the stream.
        None when the chain breaks (a message missing, not the aggregate's, or not the version
        expected): the caller then reads by the filter.

        A write's first message of an aggregate carries the sequence of the aggregate's newest
        message before it (``Nats-Expected-Last-Subject-Sequence``, the concurrency check the
        server made; 0 for its first write); its other messages follow that one in the same
        atomic write.
        """
        found: list[StoredMsg] | None = self.call(self._walk_back(last, subject, down_to))
        return found

    async def _walk_back(self, last: StoredMsg, subject: str,
                         down_to: int | None) -> list[StoredMsg] | None:
        own = subject.rsplit(".", 1)[0]  # the aggregate's subjects, without the event's token
        out = [last]
        m, version = last, int(last.headers[subjects.H_VERSION])
        while down_to is None or version > down_to:
            pointer = m.headers.get(EXPECTED_LAST_SEQ)
            if pointer == "0":  # the aggregate's first write: its first version, or not ours
                if version != 1:
                    return None
                break
            prev_seq = m.seq - 1 if pointer is None else int(pointer)
            prev = await self.conn.direct_get(self.stream, {"seq": prev_seq}, self.timeout) \
                if prev_seq > 0 else None
            if (prev is None or prev.subject.rsplit(".", 1)[0] != own
                    or int(prev.headers.get(subjects.H_VERSION, -1)) != version - 1):
                return None
            out.append(prev)
            m, version = prev, version - 1
        out.reverse()
        return out

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
