"""A rebuild folding in a child process makes the rows a one-process projection makes.

`project_until` (rebuild, verify, the replay benchmark) reads in this process and folds and
commits in a forked child; `run_projection` does all of it here. Over the same stream, with an
event nobody can read in the middle and batch boundaries that fall anywhere, both give the same
tables, set-aside records included. A child that fails says why, in the parent.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import nats
import pytest
from streamgen import UNREADABLE_ACTOR, Appender, publish_unreadable, servicetype_history

from splice.natsserver import NatsServer
from splice.projections.maintenance import scratch_database, snapshot
from splice.projections.parallel import project_until
from splice.projections.projector import Projector
from splice.projections.reading import Progress, last_event_seq, run_projection
from splice.projections.store import open_store
from splice.projections.views import VIEWS


async def test_the_child_folds_the_same_rows_as_one_process(
    fresh_nats: NatsServer, db_url: str
) -> None:
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    history = list(servicetype_history(40, 4))
    appender = Appender(fresh_nats.url)
    try:
        appender.append(history[:70])
        unreadable = await publish_unreadable(js)  # set aside by every view, in both
        appender.append(history[70:])
    finally:
        appender.close()
    try:
        end = await last_event_seq(js)
        seen: list[int] = []

        def on_batch(p: Progress) -> None:
            seen.append(p.position)

        assert await asyncio.wait_for(
            project_until(js, db_url, end, batch_size=23, on_batch=on_batch), 60) == end
        assert seen == sorted(seen) and seen[-1] == end  # each batch once it is in
        with scratch_database(db_url) as one_url:
            one = open_store(one_url)
            try:
                await asyncio.wait_for(run_projection(
                    js, Projector(one), asyncio.Event(), until=end, batch_size=31), 60)
                expected = snapshot(one, VIEWS)
            finally:
                one.close()
    finally:
        await nc.close()
    child = open_store(db_url)
    try:
        got = snapshot(child, VIEWS)
    finally:
        child.close()
    assert got == expected
    positions, rows = got
    assert min(positions.values()) == end and len(rows["audit"]) == end
    # the child gets only the headers the read side reads, and those it does
    [noted] = [r for r in rows["audit"] if r["seq"] == unreadable]
    assert noted["actor"] == UNREADABLE_ACTOR and "was set aside" in noted["summary"]


async def test_a_child_that_fails_says_why(fresh_nats: NatsServer, tmp_path: Path) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        with pytest.raises(RuntimeError, match="fold process failed"):  # a directory, no file
            await asyncio.wait_for(project_until(nc.jetstream(), str(tmp_path), 10), 30)
    finally:
        await nc.close()


@pytest.mark.parametrize("batch_size, chunk", [(10, 10), (20, 5)])
async def test_a_run_stopped_by_on_batch_ends_its_child_at_once(
    fresh_nats: NatsServer, db_url: str, batch_size: int, chunk: int
) -> None:
    """Stopped at the first transaction reported; with transactions of several chunks, the
    chunks folded after it (their audit rows staged, `Store.stage`) leave nothing behind."""
    appender = Appender(fresh_nats.url)
    try:
        appender.append(list(servicetype_history(30, 3)))
    finally:
        appender.close()

    class Stop(Exception):
        pass

    def stop(p: Progress) -> None:
        raise Stop

    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        with pytest.raises(Stop):  # the child must not be waited for: 30 s would fail this
            await asyncio.wait_for(project_until(js, db_url, await last_event_seq(js),
                                                 batch_size=batch_size, chunk=chunk,
                                                 on_batch=stop), 10)
    finally:
        await nc.close()
    assert not multiprocessing.active_children()
    store = open_store(db_url)
    try:  # the first transaction, reported, is in; nothing after it
        assert min(store.positions().values()) == batch_size
        assert store.select("SELECT count(*), max(seq) FROM audit") == [(batch_size, batch_size)]
    finally:
        store.close()
