"""The one stream follower (events/follow.py) against a real nats-server: resuming from a
sequence, setting a poison message aside while going on, and a server restart mid-follow.

Each test runs on nats-py's own client (messages through the subscription's callback) and on
Splice's (messages taken as they are read, `natsclient.take_raw`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from helpers import stream_messages, wait_for
from nats.js.api import StorageType

from splice.events import natsclient, subjects
from splice.events.eventlog import read_events
from splice.events.follow import Delivery, Follower, SetAside
from splice.natsserver import NatsServer


@pytest.fixture(params=["nats-py", "splice"])
async def nc(fresh_nats: NatsServer, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    connect = nats.connect if request.param == "nats-py" else natsclient.connect
    conn = await connect(fresh_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    await conn.jetstream().add_stream(
        name=subjects.STREAM, subjects=[subjects.EVENTS], storage=StorageType.FILE, allow_direct=True
    )
    yield conn
    await conn.close()


async def publish(js: Any, tenant: str, n: int, topic: str = "ThingHappened") -> list[int]:
    """`n` events of one tenant; their stream sequences."""
    seqs = []
    for i in range(n):
        ack = await js.publish(
            subjects.event(tenant, "thing", f"t{i}", topic),
            json.dumps({"n": i}).encode(),
            headers={subjects.H_TOPIC: topic},
        )
        seqs.append(ack.seq)
    return seqs


class Recorder:
    """A handler that keeps what it was given (and refuses what is not JSON)."""

    def __init__(self) -> None:
        self.seen: list[Delivery] = []

    async def __call__(self, d: Delivery) -> None:
        json.loads(d.data)
        self.seen.append(d)

    @property
    def seqs(self) -> list[int]:
        return [d.seq for d in self.seen]


@contextlib.asynccontextmanager
async def running(follower: Follower) -> AsyncIterator[asyncio.Task[int]]:
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_resumes_after_a_sequence_on_its_filter_and_says_when_it_caught_up(nc: Any) -> None:
    js = nc.jetstream()
    acme = await publish(js, "acme", 6)
    await publish(js, "other", 3)  # not on the filter
    rec = Recorder()
    ends: list[int] = []
    follower = Follower(js, subjects.events_of("thing", tenant="acme"), rec, after=acme[2],
                        name="test", on_caught_up=ends.append)
    async with running(follower):
        await asyncio.wait_for(follower.caught_up.wait(), 10)
        assert rec.seqs == acme[3:]
        assert ends == [acme[-1]] and follower.position == acme[-1]
        first = rec.seen[0]
        assert (first.topic, first.subject) == ("ThingHappened", "splice.evt.acme.thing.t3.ThingHappened")
        assert first.time_ns > 0 and rec.seen[-1].pending == 0
        later = await publish(js, "acme", 2, topic="ThingChanged")  # live, after catching up
        await wait_for(lambda: rec.seqs[-1:] == later[-1:], timeout=10)
    assert rec.seqs == acme[3:] + later
    assert [d.topic for d in rec.seen[-2:]] == ["ThingChanged", "ThingChanged"]


async def test_a_poison_message_is_set_aside_and_recorded_and_the_next_ones_are_handled(
    nc: Any,
) -> None:
    js = nc.jetstream()
    before = await publish(js, "acme", 2)
    bad = await js.publish(subjects.event("acme", "thing", "x", "ThingHappened"), b"{not json")
    after = await publish(js, "acme", 2)
    rec = Recorder()
    recorded: list[SetAside] = []
    follower = Follower(js, subjects.EVENTS, rec, name="poison", on_set_aside=recorded.append)
    async with running(follower) as task:
        await wait_for(lambda: rec.seqs[-1:] == after[-1:], timeout=10)
        more = await publish(js, "acme", 1)
        await wait_for(lambda: rec.seqs[-1:] == more, timeout=10)
        assert not task.done()
    assert rec.seqs == before + after + more
    assert [r.seq for r in recorded] == [bad.seq] == [r.seq for r in follower.set_aside]
    assert follower.set_aside_total == 1
    assert recorded[0].subject.endswith(".x.ThingHappened") and "JSONDecodeError" in recorded[0].error


async def test_until_stops_at_that_sequence(nc: Any) -> None:
    js = nc.jetstream()
    seqs = await publish(js, "acme", 5)
    rec = Recorder()
    follower = Follower(js, [subjects.events_of("thing", tenant="acme"), "splice.evt.b.>"], rec)
    assert await asyncio.wait_for(follower.run(until=seqs[2]), 10) == seqs[2]
    assert rec.seqs == seqs[:3]


async def test_a_slow_handler_holds_the_reader_back_without_losing_or_repeating(nc: Any) -> None:
    js = nc.jetstream()
    seqs = await publish(js, "acme", 300)
    seen: list[int] = []

    async def slow(d: Delivery) -> None:
        if d.seq % 50 == 0:
            await asyncio.sleep(0.3)  # longer than the stall limit below: not a stall
        seen.append(d.seq)

    follower = Follower(js, subjects.EVENTS, slow, batch=20, heartbeat=0.05)
    assert await asyncio.wait_for(follower.run(until=seqs[-1]), 30) == seqs[-1]
    assert seen == seqs and follower.resets == 0


async def test_a_server_restart_mid_follow_loses_and_repeats_nothing(
    fresh_nats: NatsServer, nc: Any
) -> None:
    js = nc.jetstream()
    first = await publish(js, "acme", 5)
    rec = Recorder()
    follower = Follower(js, subjects.EVENTS, rec, name="restart", heartbeat=0.2)
    async with running(follower) as task:
        await wait_for(lambda: rec.seqs == first, timeout=10)
        fresh_nats.stop()
        fresh_nats.start()  # same port and store: the stream is back, the consumer is not

        async def published() -> bool:
            with contextlib.suppress(Exception):
                await publish(js, "acme", 5)
                return True
            return False

        await wait_for(published, timeout=20, every=0.2)
        stored = [m["seq"] for m in await stream_messages(fresh_nats.url)]
        await wait_for(lambda: rec.seqs[-1:] == stored[-1:], timeout=20)
        assert not task.done()
    assert rec.seqs == stored  # every stored event once, in order (a timed-out publish too)
    assert follower.resets >= 1


async def test_the_event_log_reads_from_a_sequence_to_the_end_or_a_limit(
    fresh_nats: NatsServer, nc: Any
) -> None:
    seqs = await publish(nc.jetstream(), "acme", 4)
    shown: list[dict[str, Any]] = []
    assert await read_events(fresh_nats.url, shown.append, from_seq=seqs[1]) == 3
    assert [e["seq"] for e in shown] == seqs[1:]
    assert shown[0]["tenant"] == "acme" and shown[0]["aggregate_id"] == "t1"
    assert shown[0]["type"] == "ThingHappened" and shown[0]["payload"] == {"n": 1}
    assert await read_events(fresh_nats.url, shown.append, limit=2) == 2
