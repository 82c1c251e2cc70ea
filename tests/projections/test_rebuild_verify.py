"""`projections rebuild` is resumable; `projections verify` finds any difference."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from streamgen import Appender, servicetype_history

from splice.natsserver import NatsServer
from splice.projections.maintenance import REBUILD_MARK, rebuild, verify
from splice.projections.reading import Progress
from splice.projections.store import open_store


class Interrupted(Exception):
    pass


@pytest.fixture
async def js(fresh_nats: NatsServer) -> AsyncIterator[Any]:
    appender = Appender(fresh_nats.url)
    try:
        appender.append(list(servicetype_history(300, 4)))  # 1530 events
    finally:
        appender.close()
    nc = await nats.connect(fresh_nats.url)
    yield nc.jetstream()
    await nc.close()


async def test_an_interrupted_rebuild_resumes_where_it_stopped_and_verifies_identical(
    js: Any, db_url: str
) -> None:
    seen: list[int] = []

    def stop_after_two_batches(p: Progress) -> None:
        seen.append(p.position)
        if len(seen) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        await rebuild(js, db_url, batch_size=400, on_batch=stop_after_two_batches)
    store = open_store(db_url)
    try:
        assert store.get_meta(REBUILD_MARK) == "1530"
        assert min(store.positions().values()) == seen[-1] == 800
    finally:
        store.close()

    resumed_from: list[int] = []
    position, resumed = await rebuild(
        js, db_url, batch_size=400, on_batch=lambda p: resumed_from.append(p.position)
    )
    assert resumed and position == 1530
    assert resumed_from[0] == 1200  # carried on after 800, did not start over
    report = await asyncio.wait_for(verify(js, db_url), 60)
    assert report["identical"], report
    assert report["tables"]["audit"]["rows"] == 1530
    assert (report["behind"], report["stream_position"]) == (0, 1530)


async def test_verify_reports_rows_that_differ_from_a_rebuild(js: Any, db_url: str) -> None:
    await rebuild(js, db_url)
    store = open_store(db_url)
    try:
        with store._lock:
            conn = store._write_conn()
            cur = conn.cursor()
            store._begin(conn)
            cur.execute("UPDATE servicetypes SET description = 'tampered' WHERE name = 'type-7'")
            cur.execute("DELETE FROM audit WHERE seq = 5")
            conn.commit()
    finally:
        store.close()
    report = await verify(js, db_url)
    assert report["identical"] is False
    st = report["tables"]["servicetypes"]
    assert st["changed"] == 1 and st["missing"] == 0 and st["extra"] == 0
    change = st["examples"]["changed"][0]["live_vs_rebuilt"]
    assert change["description"][0] == "tampered"
    assert report["tables"]["audit"]["missing"] == 1
    assert report["tables"]["audit"]["examples"]["missing"] == [[5]]
    assert report["tables"]["resources"]["identical"] is True


@pytest.mark.trust
async def test_verify_says_how_far_behind_the_stream_the_read_models_are(
    js: Any, db_url: str, fresh_nats: NatsServer
) -> None:
    await rebuild(js, db_url)
    appender = Appender(fresh_nats.url)
    try:
        appender.append(list(servicetype_history(2, 1)))  # stored after the rebuild
    finally:
        appender.close()
    report = await verify(js, db_url)
    assert report["behind"] > 0 and report["stream_position"] == 1530 + report["behind"]
    assert report["identical"] is False  # the rows match, but not the stream
    assert all(t["identical"] for t in report["tables"].values())
