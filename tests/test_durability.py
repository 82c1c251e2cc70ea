"""Durability of the JetStream event store across a SIGKILL of nats-server.

What these tests pin down (DESIGN.md §6: "no acknowledged event is ever lost"):

* every write the recorder acknowledged (returned its stream sequences) before, during or after a
  SIGKILL of the server is present after a restart on the same store, at the same sequence, with
  the same originator, version and state;
* writes that failed while the server was down are not acknowledged (they may or may not be
  stored: the ack can be lost after the write), and the stream stays gap-free and each aggregate's
  versions stay contiguous;
* an atomic batch (ADR-50) is stored whole or not at all, whether the kill comes before its commit
  or while batches are being committed;
* the recorder's own connection reconnects to the restarted server and goes on acknowledging.

A SIGKILL loses nothing the kernel already holds (the page cache survives the process); a power
loss is what `sync_interval: always` is for, and is out of reach of a test.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import ClassVar
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    InfrastructureFactory,
    Notification,
    StoredEvent,
)
from eventsourcing.utils import Environment

from splice.events.jetstream import JetStreamApplicationRecorder, JetStreamFactory
from splice.natsserver import NatsServer

STREAM = "DURABILITY"
PREFIX = "dur"
# Requests in flight at the kill are answered by nobody: keep their timeout short.
WRITE_TIMEOUT_S = "2"


def make_factory(url: str) -> JetStreamFactory:
    factory = InfrastructureFactory.construct(
        Environment(
            env={
                "PERSISTENCE_MODULE": "splice.events.jetstream",
                "NATS_URL": url,
                "JETSTREAM_STREAM": STREAM,
                "JETSTREAM_SUBJECT_PREFIX": PREFIX,
                "JETSTREAM_TIMEOUT": WRITE_TIMEOUT_S,
            }
        )
    )
    assert isinstance(factory, JetStreamFactory)
    return factory


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


@contextmanager
def restartable(server: NatsServer) -> Iterator[Callable[[], NatsServer]]:
    """Yields `kill_and_restart()`: SIGKILL the current server, start a new one on its store and
    port. Every server started here is stopped on the way out."""
    started: list[NatsServer] = []
    current = [server]

    def kill_and_restart() -> NatsServer:
        old = current[0]
        old.kill()
        new = NatsServer(store_dir=old.store_dir, port=old.port)
        started.append(new)
        new.start()
        current[0] = new
        return new

    try:
        yield kill_and_restart
    finally:
        for s in started:
            s.stop()


def read_all(url: str) -> list[Notification]:
    """Every event in the stream, read with a factory (and connection) of its own."""
    factory = make_factory(url)
    try:
        recorder = factory.application_recorder()
        return list(recorder.select_notifications(1, 10**9))
    finally:
        factory.close()


@dataclass(frozen=True)
class Acked:
    seq: int
    originator_id: UUID
    version: int
    state: bytes


@dataclass
class WriterThreads:
    """Threads writing through one recorder (one shared connection) until `join`: how many
    writes are in flight, and the failures. `_run(index)` is one thread's work."""

    NAME: ClassVar[str] = "writer"

    recorder: ApplicationRecorder
    threads: int
    _: KW_ONLY
    failures: list[BaseException] = field(default_factory=list)
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def in_flight_count(self) -> int:
        with self.lock:
            return self.in_flight

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"{self.NAME}-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def join(self, timeout: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
            assert not t.is_alive(), f"{t.name} did not stop"

    def _run(self, index: int) -> None:
        raise NotImplementedError


@dataclass
class Writers(WriterThreads):
    """Threads appending, recording what was acked.

    Each thread appends to an aggregate of its own, one to three events per write (several go as
    one atomic batch). After a failed write a thread cannot know whether the write was stored, so it
    moves on to a new aggregate.
    """

    events_per_aggregate: int = 25
    state_size: int = 300
    acked: list[Acked] = field(default_factory=list)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _run(self, index: int) -> None:
        rnd = random.Random(index)
        pad = b"x" * self.state_size
        while not self.stop.is_set():
            aggregate = uuid.uuid4()
            version = 1
            while version <= self.events_per_aggregate and not self.stop.is_set():
                n = min(rnd.choice((1, 1, 1, 2, 3)), self.events_per_aggregate - version + 1)
                events = [
                    StoredEvent(
                        originator_id=aggregate,
                        originator_version=v,
                        topic="durability:Appended",
                        state=f"{index}:{aggregate}:{v}:".encode() + pad,
                    )
                    for v in range(version, version + n)
                ]
                with self.lock:
                    self.in_flight += 1
                try:
                    seqs = self.recorder.insert_events(events)
                except Exception as e:
                    with self.lock:
                        self.in_flight -= 1
                        self.failures.append(e)
                    break  # unknown whether stored: continue on a new aggregate
                assert seqs is not None
                with self.lock:
                    self.in_flight -= 1
                    self.acked.extend(
                        Acked(seq, ev.originator_id, ev.originator_version, ev.state)
                        for seq, ev in zip(seqs, events, strict=True)
                    )
                version += n


def assert_gap_free(notifications: list[Notification]) -> None:
    ids = [n.id for n in notifications]
    assert ids == list(range(1, len(ids) + 1)), "stream sequences are not gap-free from 1"


def assert_acked_present(acked: list[Acked], notifications: list[Notification]) -> None:
    by_seq = {n.id: n for n in notifications}
    missing = [a for a in acked if a.seq not in by_seq]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    for a in acked:
        n = by_seq[a.seq]
        assert (n.originator_id, n.originator_version, n.state) == (
            a.originator_id,
            a.version,
            a.state,
        ), f"seq {a.seq} holds another event than the one acknowledged"
    assert len({a.seq for a in acked}) == len(acked), "one seq acknowledged twice"


def assert_versions_contiguous(notifications: list[Notification]) -> None:
    versions: dict[UUID | str, list[int]] = defaultdict(list)
    for n in notifications:
        versions[n.originator_id].append(n.originator_version)
    for originator, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), f"{originator} has versions {vs}"


def test_acknowledged_events_survive_sigkill_and_restart(fresh_nats: NatsServer) -> None:
    factory = make_factory(fresh_nats.url)
    recorder = factory.application_recorder()
    assert isinstance(recorder, JetStreamApplicationRecorder)
    writers = Writers(recorder, threads=8)
    try:
        with restartable(fresh_nats) as kill_and_restart:
            writers.start()
            wait_for(
                lambda: writers.acked_count() >= 1000 and writers.in_flight_count() > 0,
                60,
                "1000 acknowledged events with writes in flight",
            )
            kill_and_restart()
            acked_before_restart = writers.acked_count()
            # The recorder's connection reconnects by itself and goes on acknowledging.
            wait_for(
                lambda: writers.acked_count() >= max(2000, acked_before_restart + 500),
                60,
                "500 more acknowledged events after the restart",
            )
            writers.join(30)

            notifications = read_all(fresh_nats.url)
            # Writes in flight at the kill failed (timed out): not counted as acknowledged.
            assert writers.failures, "the kill interrupted no write"
            assert len(writers.acked) >= 2000
            assert_acked_present(writers.acked, notifications)
            assert_gap_free(notifications)
            assert_versions_contiguous(notifications)
            # Beyond the acknowledged events, only the failed writes' events may be there.
            assert len(notifications) - len(writers.acked) <= 3 * len(writers.failures)
            # Reads by aggregate agree with the acknowledgements, too.
            factory2 = make_factory(fresh_nats.url)
            try:
                rec2 = factory2.application_recorder()
                by_aggregate: dict[UUID, list[Acked]] = defaultdict(list)
                for a in writers.acked:
                    by_aggregate[a.originator_id].append(a)
                for originator, acks in list(by_aggregate.items())[:50]:
                    stored = rec2.select_events(originator)
                    assert [(e.originator_version, e.state) for e in stored][: len(acks)] == [
                        (a.version, a.state) for a in sorted(acks, key=lambda a: a.version)
                    ]
            finally:
                factory2.close()
    finally:
        writers.stop.set()
        factory.close()


def test_atomic_batch_not_committed_before_the_kill_leaves_nothing(
    fresh_nats: NatsServer,
) -> None:
    factory = make_factory(fresh_nats.url)
    try:
        with restartable(fresh_nats) as kill_and_restart:
            recorder = factory.application_recorder()
            assert isinstance(recorder, JetStreamApplicationRecorder)
            committed = uuid.uuid4()
            seqs = recorder.insert_events(
                [
                    StoredEvent(committed, v, "durability:Appended", f"c{v}".encode())
                    for v in range(1, 51)
                ]
            )
            assert seqs == list(range(1, 51))

            # Half a batch, as the recorder sends it, whose commit never comes: the server
            # holds it staged when it is killed.
            ds = recorder.datastore
            staged = uuid.uuid4()
            batch_id = uuid.uuid4().hex

            async def send_without_commit() -> None:
                for i in range(1, 101):
                    headers = {
                        "Splice-Version": str(i),
                        "Splice-Topic": "durability:Appended",
                        "Nats-Batch-Id": batch_id,
                        "Nats-Batch-Sequence": str(i),
                    }
                    if i == 1:
                        headers["Nats-Expected-Last-Subject-Sequence"] = "0"
                        headers["Nats-Expected-Last-Subject-Sequence-Subject"] = (
                            ds.aggregate_filter(staged)
                        )
                    await ds.conn.nc.publish(
                        ds.event_subject(staged, "durability:Appended"),
                        f"s{i}".encode(),
                        headers=headers,
                    )
                await ds.conn.nc.flush()

            ds.conn.call(send_without_commit())
            assert recorder.max_notification_id() == 50  # staged, not stored

            kill_and_restart()

            notifications = read_all(fresh_nats.url)
            assert [n.originator_id for n in notifications] == [committed] * 50
            assert [n.state for n in notifications] == [f"c{v}".encode() for v in range(1, 51)]

            # The old connection reconnected; the uncommitted aggregate is still empty, so its
            # first version can be written (a leftover message would make this a conflict).
            def reconnected_write() -> bool:
                try:
                    recorder.insert_events(
                        [StoredEvent(staged, 1, "durability:Appended", b"after")]
                    )
                except Exception:
                    return False
                return True

            wait_for(reconnected_write, 30, "a write through the reconnected recorder")
            assert [e.state for e in recorder.select_events(staged)] == [b"after"]
    finally:
        factory.close()


@dataclass
class BatchWriters(WriterThreads):
    """Threads each writing atomic batches of `size` events of one new aggregate per batch."""

    NAME: ClassVar[str] = "batch-writer"

    size: int
    state_size: int = 500
    acked: dict[UUID, list[int]] = field(default_factory=dict)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def state(self, aggregate: UUID, version: int) -> bytes:
        head = json.dumps({"batch": str(aggregate), "v": version}).encode()
        return head + b" " * (self.state_size - len(head))

    def _run(self, index: int) -> None:
        while not self.stop.is_set():
            aggregate = uuid.uuid4()
            events = [
                StoredEvent(aggregate, v, "durability:Batched", self.state(aggregate, v))
                for v in range(1, self.size + 1)
            ]
            with self.lock:
                self.in_flight += 1
            try:
                seqs = self.recorder.insert_events(events)
            except Exception as e:
                with self.lock:
                    self.failures.append(e)
                continue
            finally:
                with self.lock:
                    self.in_flight -= 1
            assert seqs is not None
            with self.lock:
                self.acked[aggregate] = list(seqs)


def test_kills_while_atomic_batches_are_committed_leave_each_batch_whole_or_absent(
    fresh_nats: NatsServer,
) -> None:
    size = 400
    kills = 4
    factory = make_factory(fresh_nats.url)
    recorder = factory.application_recorder()
    writers = BatchWriters(recorder, threads=3, size=size)
    rnd = random.Random(7)
    try:
        with restartable(fresh_nats) as kill_and_restart:
            writers.start()
            for k in range(kills):
                target = writers.acked_count() + 3
                wait_for(
                    lambda t=target: writers.acked_count() >= t and writers.in_flight_count() > 0,
                    60,
                    f"3 more acknowledged batches before kill {k + 1}",
                )
                # Somewhere within the next batch's transmission and commit.
                time.sleep(rnd.uniform(0, 0.05))
                kill_and_restart()
            target = writers.acked_count() + 3
            wait_for(
                lambda: writers.acked_count() >= target,
                60,
                "3 acknowledged batches after the last restart",
            )
            writers.join(30)

            assert writers.failures, "the kills interrupted no batch"
            notifications = read_all(fresh_nats.url)
            assert_gap_free(notifications)
            assert_versions_contiguous(notifications)
            per_batch = Counter(n.originator_id for n in notifications)
            torn = {b: c for b, c in per_batch.items() if c != size}
            assert not torn, f"batches stored in part: {torn}"
            by_seq = {n.id: n for n in notifications}
            for aggregate, seqs in writers.acked.items():
                assert seqs == list(range(seqs[0], seqs[0] + size))
                for v, seq in enumerate(seqs, 1):
                    n = by_seq.get(seq)
                    assert n is not None, f"acknowledged batch {aggregate} lost seq {seq}"
                    assert (n.originator_id, n.originator_version, n.state) == (
                        aggregate,
                        v,
                        writers.state(aggregate, v),
                    )
            # Only batches whose writes failed may be there unacknowledged.
            assert len(per_batch) - len(writers.acked) <= len(writers.failures)
    finally:
        writers.stop.set()
        factory.close()
