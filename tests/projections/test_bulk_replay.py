"""Replay's fast paths keep their promises: indexes of a bulk load come once it has caught up,
a batch in flight is committed or forgotten (never half), and the collector is given back."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from typing import Any

import nats
from streamgen import Appender, Ev

from splice.natsserver import NatsServer
from splice.projections.folding import gc_paused
from splice.projections.maintenance import verify
from splice.projections.projector import Projector
from splice.projections.reading import Progress, last_event_seq, run_projection
from splice.projections.store import open_store

N_TYPES = 150  # 3 events each: 450 events, several batches of 64 rows and more (COPY path)


def _events() -> list[Ev]:
    ids = [str(uuid.uuid4()) for _ in range(N_TYPES)]
    out = [Ev("_admin", "servicetype", i, 1, "ServiceTypeCreated",
              {"name": f"t{n}", "description": "d", "providers": {"loadbalancer": "haproxy"}})
           for n, i in enumerate(ids)]
    out += [Ev("_admin", "servicetype", i, 2, "ServiceTypeUpdated",
               {"name": f"t{n}", "description": "e", "providers": {"firewall": "nftables"}})
            for n, i in enumerate(ids)]
    out += [Ev("_admin", "servicetype", i, 3, "ServiceTypeDeleted", {}) for i in ids]
    return out


def _index_names(store: Any) -> set[str]:
    if store.dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
    return {r[0] for r in store.select(sql) if r[0].startswith("ix_")}


async def test_a_bulk_load_indexes_its_tables_once_caught_up_and_matches_a_rebuild(
    fresh_nats: NatsServer, db_url: str
) -> None:
    appender = Appender(fresh_nats.url)
    try:
        appender.append(_events())
    finally:
        appender.close()
    nc = await nats.connect(fresh_nats.url)
    store = open_store(db_url)
    try:
        js = nc.jetstream()
        end = await last_event_seq(js)
        projector = Projector(store)
        wanted = {f"ix_{t.name}_{'_'.join(i)}" for v in projector.views for t in v.tables
                  for i in t.indexes}
        assert set(store.deferred) >= {"audit", "servicetypes"}  # empty: indexes wait
        assert not _index_names(store) & wanted
        seen: list[tuple[int, set[str]]] = []

        def on_batch(p: Progress) -> None:
            seen.append((p.position, _index_names(store) & wanted))

        position = await asyncio.wait_for(run_projection(
            js, projector, asyncio.Event(), until=end, batch_size=100, on_batch=on_batch), 60)
        assert position == end == 3 * N_TYPES
        assert [p for p, _ in seen] == [100, 200, 300, 400, 450]  # each once it is in
        assert seen[0][1] == set()  # none while loading
        assert _index_names(store) >= wanted and store.deferred == {}
        rows = store.select("SELECT count(*) FROM servicetypes WHERE deleted = "
                            + ("1" if store.dialect == "sqlite" else "true"))
        assert rows == [(N_TYPES,)]
    finally:
        store.close()
    try:
        report = await asyncio.wait_for(verify(nc.jetstream(), db_url, batch_size=37), 60)
    finally:
        await nc.close()
    assert report["identical"], report
    assert report["tables"]["audit"]["rows"] == 3 * N_TYPES


async def test_a_batch_prepared_and_never_submitted_is_forgotten(
    fresh_nats: NatsServer, db_url: str
) -> None:
    appender = Appender(fresh_nats.url)
    try:
        appender.append(_events()[:N_TYPES])
    finally:
        appender.close()
    nc = await nats.connect(fresh_nats.url)
    store = open_store(db_url)
    try:
        js = nc.jetstream()
        projector = Projector(store)

        class Interrupted(Exception):
            pass

        def stop_at_first(p: Progress) -> None:
            raise Interrupted

        try:
            await run_projection(js, projector, asyncio.Event(), until=N_TYPES, batch_size=50,
                                 on_batch=stop_at_first)
        except Interrupted:
            pass
        # Batch 2 was folded into the caches when batch 1 was reported: it is not in the
        # store, and the projector forgot it (its next run starts from 50 and gets it right).
        assert store.positions()["servicetypes"] == projector.position == 50
        assert store.select("SELECT count(*) FROM servicetypes") == [(50,)]
        assert await run_projection(js, projector, asyncio.Event(), until=N_TYPES) == N_TYPES
        assert store.select("SELECT count(*) FROM servicetypes") == [(N_TYPES,)]
    finally:
        store.close()
    try:
        report = await asyncio.wait_for(verify(nc.jetstream(), db_url), 60)
    finally:
        await nc.close()
    assert report["identical"], report


def test_the_collector_is_paused_while_any_batch_folds_and_given_back_after() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with gc_paused():
        assert not gc.isenabled()
        t.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the other thread's batch still folds
    release.set()
    t.join(10)
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # off before: stays off
    finally:
        gc.enable()
