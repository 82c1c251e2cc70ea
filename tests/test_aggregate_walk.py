"""Loading an aggregate follows its writes' back-pointers: a direct get per event, not a scan.

Every write's first message of an aggregate carries the sequence of the aggregate's newest
message before it (the concurrency check's header); the rest of its messages follow in the same
write. A load reads the newest message, then walks back: its cost is the aggregate's length,
whatever the stream's. A chain that breaks (messages stored without the header), or an
aggregate long for the stream it is in (a scan costs less: `walk_pays`), is read by its subject
filter instead, with the same result.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from eventsourcing.persistence import InfrastructureFactory, StoredEvent
from eventsourcing.utils import Environment

from splice.events import subjects
from splice.events.jetstream import JetStreamApplicationRecorder, JetStreamFactory
from splice.events.natswire import OutMsg
from splice.events.store_datastore import WALK_FREE, WALK_MAX, WALK_SPAN, walk_pays


@pytest.fixture
def recorder(nats_server: Any) -> Iterator[JetStreamApplicationRecorder]:
    factory = InfrastructureFactory.construct(Environment(env={
        "PERSISTENCE_MODULE": "splice.events.jetstream",
        "NATS_URL": nats_server.url,
        "JETSTREAM_STREAM": "W" + uuid.uuid4().hex[:12].upper(),
        "JETSTREAM_SUBJECT_PREFIX": "w" + uuid.uuid4().hex[:12],
    }))
    assert isinstance(factory, JetStreamFactory)
    rec = factory.application_recorder()
    assert isinstance(rec, JetStreamApplicationRecorder)
    try:
        yield rec
    finally:
        factory.close()


def ev(agg: uuid.UUID, version: int) -> StoredEvent:
    return StoredEvent(agg, version, "tests:Changed", f"{agg}:{version}".encode())


class Counting:
    """The datastore's connection, counting its direct gets (a real connection under it)."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.gets = conn, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    async def direct_get(self, *args: Any, **kw: Any) -> Any:
        self.gets += 1
        return await self.conn.direct_get(*args, **kw)


def by_filter(rec: JetStreamApplicationRecorder, agg: uuid.UUID) -> list[bytes]:
    ds = rec.datastore
    return [m.data for m in ds.read(ds.aggregate_filter(agg), 1, None)]


def test_a_load_walks_back_one_get_per_event_through_multi_event_writes(
        recorder: JetStreamApplicationRecorder) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    others = [uuid.uuid4() for _ in range(50)]
    recorder.insert_events([ev(a, 1)])
    for o in others:  # other aggregates' writes between a's
        recorder.insert_events([ev(o, 1), ev(o, 2)])
    recorder.insert_events([ev(b, 1), ev(a, 2), ev(a, 3), ev(b, 2)])  # one write, two aggregates
    recorder.insert_events([ev(a, 4)])
    recorder.insert_events([ev(a, 5), ev(a, 6), ev(a, 7)])
    fresh = JetStreamApplicationRecorder(recorder.datastore)
    counting = Counting(fresh.datastore.conn)
    fresh.datastore.conn = counting
    try:
        loaded = fresh.select_events(a)
        whole = counting.gets
        newer = fresh.select_events(a, gt=4)  # a cached aggregate brought up to date
    finally:
        fresh.datastore.conn = counting.conn
    assert [e.originator_version for e in loaded] == list(range(1, 8))
    assert [e.state for e in loaded] == by_filter(recorder, a)
    assert whole == 7 - 1  # the newest came by its last-by-subject get; then one per event
    assert [e.originator_version for e in newer] == [5, 6, 7]
    assert counting.gets - whole == 2
    assert [e.originator_version for e in fresh.select_events(b)] == [1, 2]
    assert [e.originator_version for e in fresh.select_events(a, desc=True)] == list(range(7, 0, -1))


def test_a_broken_chain_or_a_long_aggregate_is_read_by_its_filter_with_the_same_result(
        recorder: JetStreamApplicationRecorder) -> None:
    ds = recorder.datastore
    old = uuid.uuid4()  # stored without the back-pointer header (as a raw publisher might)
    for version in (1, 2, 3):
        ds.commit([OutMsg(ds.event_subject(old, "tests:Changed"), f"{old}:{version}".encode(),
                          {subjects.H_VERSION: str(version), subjects.H_TOPIC: "tests:Changed"})])
        recorder.insert_events([ev(uuid.uuid4(), 1)])  # something else between them
    last = ds.last(ds.aggregate_filter(old))
    assert last is not None and ds.walk_back(last, ds.aggregate_filter(old)) is None
    assert [e.state for e in recorder.select_events(old)] == by_filter(recorder, old)
    assert len(recorder.select_events(old)) == 3

    long = uuid.uuid4()  # long for this short stream: a scan costs less than the gets
    n = WALK_FREE + 40
    recorder.insert_events([ev(long, v) for v in range(1, n + 1)])
    fresh = JetStreamApplicationRecorder(ds)
    counting = Counting(ds.conn)
    ds.conn = counting
    try:
        loaded = fresh.select_events(long)
    finally:
        ds.conn = counting.conn
    assert [e.originator_version for e in loaded] == list(range(1, n + 1))
    assert counting.gets == 0  # read by the filter, in batches


def test_the_walk_pays_for_short_aggregates_and_more_of_them_as_the_stream_grows() -> None:
    assert walk_pays(WALK_FREE, 0) and not walk_pays(WALK_FREE + 1, WALK_SPAN - 1)
    assert walk_pays(WALK_FREE + 400, 400 * WALK_SPAN)  # 1M messages: 400 more events
    assert not walk_pays(WALK_MAX + 1, 10**9)  # a walk stays one short call to the store
