"""A rebuild's transaction spans many folded batches, and a row is written once per transaction.

`Projector.prepare(take=False)` folds a batch and keeps its writes in the row caches with those
of the batches before it; `take` hands them over as one transaction. `project_until` folds the
chunks its child receives that way and commits every `batch_size` events, or sooner when a
table's cache is full. The rows must be those of a one-process projection whatever happens in
between: an event a view refuses in the middle of such a run, an event nobody can read, a
cache that overflows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from boomview import WITH_BOOM
from streamgen import Appender, Ev, publish_unreadable, servicetype_history

from splice.natsserver import NatsServer
from splice.projections.envelope import Event
from splice.projections.folding import Refold
from splice.projections.maintenance import scratch_database, snapshot
from splice.projections.parallel import project_until
from splice.projections.projector import Projector
from splice.projections.reading import Progress, last_event_seq, run_projection
from splice.projections.store import Store, open_store
from splice.projections.views import VIEWS
from splice.projections.views import base as views_base


def servicetype(seq: int, ident: str, version: int, typ: str, description: str) -> Event:
    payload = {"actor": "t", "command_id": f"c{seq}", "correlation_id": f"c{seq}", "schema": 1,
               "name": "one", "description": description, "providers": {"loadbalancer": "x"}}
    return Event(seq, seq * 1000, "_admin", "servicetype", ident, typ, version, payload)


def history_of_one(n: int, boom_at: int = 0) -> list[Event]:
    """One service type created, then updated n - 1 times (the update at `boom_at` refused)."""
    ident = str(uuid.uuid4())
    return [servicetype(1, ident, 1, "ServiceTypeCreated", "first")] + [
        servicetype(s, ident, s, "ServiceTypeUpdated", "boom" if s == boom_at else f"rev {s}")
        for s in range(2, n + 1)
    ]


def test_batches_folded_without_taking_write_each_row_once_in_one_transaction(
    db_url: str, tmp_path: Any
) -> None:
    events = history_of_one(9)
    store = open_store(db_url)
    try:
        projector = Projector(store)
        for i in range(0, 9, 3):
            assert projector.prepare(events[i : i + 3], take=False) is None
        projector.flush()  # the audit rows are staged: written, not committed
        assert store.select("SELECT count(*) FROM audit") == [(0,)]
        assert min(store.positions().values()) == 0  # nothing is in before the take
        job = projector.take()
        assert job is not None and projector.take() is None
        writes = {w.table.name: w for w in job.writes}
        assert len(writes["servicetypes"].upserts) == 1  # nine events, one row, one write
        assert len(writes["resources"].upserts) == 1
        assert writes["audit"].appends == []  # staged already
        assert set(job.moves.values()) == {(0, 9)}
        projector.submit(job)
        assert store.select("SELECT count(*) FROM audit") == [(9,)]
        got = snapshot(store, VIEWS)
    finally:
        store.close()
    one = open_store(str(tmp_path / "batch_by_batch.sqlite"))
    try:
        by_batch = Projector(one)
        for i in range(0, 9, 3):
            by_batch.apply(events[i : i + 3])
        assert snapshot(one, VIEWS) == got
    finally:
        one.close()


def test_a_full_cache_keeps_the_rows_of_untaken_batches_until_they_are_taken(
    db_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views_base, "ROW_CACHE_LIMIT", 1)
    events = [ev for i in range(4) for ev in history_of_one(3)]
    for seq, ev in enumerate(events, 1):
        ev.seq = seq
    store = open_store(db_url)
    try:
        projector = Projector(store)
        projector.prepare(events[:6], take=False)
        assert projector.over_limit()
        projector.prepare(events[6:], take=False)  # past the limit: no trim while holding
        projector.submit(projector.take())
        assert len(store.select("SELECT id FROM servicetypes")) == 4
        got = snapshot(store, VIEWS)
    finally:
        store.close()
    one = open_store(str(tmp_path / "one.sqlite"))
    try:
        Projector(one).apply(events)
        assert snapshot(one, VIEWS) == got
    finally:
        one.close()


def test_a_view_failing_in_a_run_of_untaken_batches_keeps_nothing_of_them(
    db_url: str,
) -> None:
    events = history_of_one(8, boom_at=6)
    store = open_store(db_url)
    try:
        projector = Projector(store, WITH_BOOM)
        projector.prepare(events[:4], take=False)
        with pytest.raises(Refold):
            projector.prepare(events[4:], take=False)
        assert min(store.positions().values()) == 0
        assert projector.take() is None  # the first batch's writes are gone, too
        projector.submit(projector.prepare(events))  # again, as one batch that takes
        assert min(store.positions().values()) == 8
        assert store.select("SELECT count(*) FROM audit") == [(8,)]  # none staged twice
        [aside] = store.set_aside()
        assert (aside["view"], aside["seq"]) == ("boom", 6)
        rows = {r[0]: r[1] for r in store.select("SELECT id, seq FROM boom")}
        assert rows == {events[0].aggregate_id: 8}
    finally:
        store.close()


@pytest.fixture
async def mixed_stream(fresh_nats: NatsServer) -> AsyncIterator[tuple[Any, int]]:
    """Service types changed over and over, with an event the boom view refuses and one
    nobody can read in the middle."""
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    history = list(servicetype_history(12, 6))
    appender = Appender(fresh_nats.url)
    try:
        appender.append(history[:50])
        appender.append([Ev("_admin", "servicetype", str(uuid.uuid4()), 1, "ServiceTypeCreated",
                            {"name": "boom", "description": "boom"})])
        await publish_unreadable(js)
        appender.append(history[50:])
    finally:
        appender.close()
    yield js, await last_event_seq(js)
    await nc.close()


async def same_as_one_process(js: Any, db_url: str, end: int) -> Any:
    """The rows at `db_url`, checked equal to those `run_projection` makes of the stream,
    batch by batch, in a scratch database."""
    store = open_store(db_url)
    try:
        got = snapshot(store, WITH_BOOM)
    finally:
        store.close()
    with scratch_database(db_url) as url:
        one = open_store(url)
        try:
            await asyncio.wait_for(run_projection(
                js, Projector(one, WITH_BOOM), asyncio.Event(), until=end, batch_size=31), 60)
            assert got == snapshot(one, WITH_BOOM)
        finally:
            one.close()
    return got


async def test_transactions_spanning_chunks_make_the_rows_of_one_process(
    mixed_stream: tuple[Any, int], db_url: str
) -> None:
    js, end = mixed_stream
    seen: list[int] = []

    def on_batch(p: Progress) -> None:
        seen.append(p.position)

    assert await asyncio.wait_for(project_until(
        js, db_url, end, views=WITH_BOOM, batch_size=40, chunk=7, on_batch=on_batch), 60) == end
    assert seen == sorted(seen) and seen[-1] == end
    assert 2 <= len(seen) <= -(-end // 40) + 1  # one report per transaction, not per chunk
    got = await same_as_one_process(js, db_url, end)
    aside = {(r["view"], r["seq"]) for r in got[1]["projection_set_aside"]}
    assert ("boom", 51) in aside and {v for v, s in aside if s == 52} == {
        v.name for v in WITH_BOOM}


async def test_a_full_row_cache_ends_the_transaction_early(
    mixed_stream: tuple[Any, int], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    js, end = mixed_stream
    monkeypatch.setattr(views_base, "ROW_CACHE_LIMIT", 5)  # the forked child inherits it
    seen: list[int] = []
    assert await asyncio.wait_for(project_until(
        js, db_url, end, views=WITH_BOOM, batch_size=10_000, chunk=4,
        on_batch=lambda p: seen.append(p.position)), 60) == end
    assert len(seen) > 2  # committed as caches filled, though one transaction could hold all
    await same_as_one_process(js, db_url, end)


async def test_a_child_failing_mid_stream_says_why_while_chunks_are_still_coming(
    fresh_nats: NatsServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    appender = Appender(fresh_nats.url)
    try:
        appender.append(list(servicetype_history(200, 9)))
    finally:
        appender.close()

    def on_fire(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(Store, "commit", on_fire)  # the forked child inherits it
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        with pytest.raises(RuntimeError, match="the disk is on fire"):
            await asyncio.wait_for(project_until(js, db_url, await last_event_seq(js),
                                                 batch_size=50, chunk=25), 60)
    finally:
        await nc.close()

