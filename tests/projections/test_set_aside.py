"""One bad event does not stop the projector: it is set aside (per view, with a record in the
same transaction) and the events after it are applied; `verify` then reports it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from boomview import BOOM_VIEW, WITH_BOOM
from streamgen import Appender, Ev, publish_unreadable, servicetype_history

from splice.natsserver import NatsServer
from splice.projections.envelope import Event
from splice.projections.maintenance import verify
from splice.projections.projector import Projector
from splice.projections.reading import run_projection
from splice.projections.store import open_store


@pytest.fixture
async def history(fresh_nats: NatsServer) -> AsyncIterator[tuple[Any, dict[str, int]]]:
    """Service types with, in the middle, one event a view refuses and one nobody can read."""
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    good = [e for e in servicetype_history(3, 1) if e.type != "ServiceTypeDeleted"]
    first = good[0]
    appender = Appender(fresh_nats.url)
    try:
        appender.append(good[:4])
        boom = Ev("_admin", "servicetype", first.ident, 3, "ServiceTypeUpdated",
                  {"name": "type-0", "description": "boom"})
        [seqs_boom] = appender.append([boom])
        unreadable = await publish_unreadable(js)
        after = Ev("_admin", "servicetype", first.ident, 4, "ServiceTypeUpdated",
                   {"name": "type-0", "description": "after"})
        rest = appender.append([*good[4:], after])
    finally:
        appender.close()
    yield js, {"boom": seqs_boom, "unreadable": unreadable, "after": rest[-1]}
    await nc.close()


@pytest.mark.trust
async def test_a_bad_event_is_set_aside_with_a_record_and_the_next_ones_are_applied(
    history: tuple[Any, dict[str, int]], db_url: str
) -> None:
    js, seq = history
    store = open_store(db_url)
    try:
        projector = Projector(store, WITH_BOOM)
        end = seq["after"]
        await asyncio.wait_for(
            run_projection(js, projector, asyncio.Event(), until=end, batch_size=3), 30
        )
        assert set(store.positions().values()) == {end}
        aside = store.set_aside()
        assert {(r["view"], r["seq"]) for r in aside} == {
            ("boom", seq["boom"]),
            *((v.name, seq["unreadable"]) for v in WITH_BOOM),
        }
        refused = next(r for r in aside if r["view"] == "boom")
        assert refused["type"] == "ServiceTypeUpdated" and "cannot take a boom" in refused["error"]
        assert refused["subject"].startswith("splice.evt._admin.servicetype.")
        # the other views applied the event the boom view refused; every view went on after it
        [(description,)] = store.select(
            "SELECT description FROM servicetypes WHERE name = 'type-0'"
        )
        assert description == "after"
        assert (seq["after"],) in store.select("SELECT seq FROM boom")
        audited = {s for (s,) in store.select("SELECT seq FROM audit")}
        # both are in the audit log: the one a view refused, and the unreadable one as a note
        assert seq["boom"] in audited and seq["unreadable"] in audited
    finally:
        store.close()

    report = await asyncio.wait_for(verify(js, db_url, views=WITH_BOOM), 60)
    assert report["identical"] is False  # the rows agree, but the views skipped events
    assert all(t["identical"] for t in report["tables"].values())
    assert report["set_aside"]["live"] == report["set_aside"]["rebuilt"] == len(WITH_BOOM) + 1
    assert {r["seq"] for r in report["set_aside"]["examples"]} == {seq["boom"], seq["unreadable"]}


@pytest.mark.trust
def test_a_batch_of_bad_events_is_set_aside_event_by_event(db_url: str) -> None:
    def event(seq: int, description: str) -> Event:
        return Event(seq, seq, "_admin", "servicetype", f"st{seq % 7}", "ServiceTypeUpdated",
                     seq, {"description": description})

    events = [event(seq, "boom" if seq % 3 else "fine") for seq in range(1, 301)]
    store = open_store(db_url)
    try:
        projector = Projector(store, (BOOM_VIEW,))
        assert projector.apply(events[:150]) == 150
        assert projector.apply(events[150:]) == 300
        aside = store.set_aside()
        assert [r["seq"] for r in aside] == [e.seq for e in events if e.seq % 3]
        rows = dict(store.select("SELECT id, seq FROM boom"))
        assert rows == {f"st{s % 7}": s for s in range(3, 301, 3)}  # the last fine one of each
    finally:
        store.close()
