"""The group committer (events/committer.py) against a real nats-server: what a lost connection
leaves behind must not block later writes."""

from __future__ import annotations

import concurrent.futures

import pytest

from splice.events.committer import ConnectionLostError, GroupCommitter
from splice.events.natsio import NatsThread
from splice.events.natswire import OutMsg
from splice.events.store_datastore import (
    EXPECTED_LAST_SEQ,
    EXPECTED_LAST_SEQ_SUBJECT,
    stream_config,
)
from splice.natsserver import NatsServer


def write(subject: str) -> list[OutMsg]:
    return [OutMsg(subject, b"{}", {EXPECTED_LAST_SEQ: "0", EXPECTED_LAST_SEQ_SUBJECT: subject})]


@pytest.mark.parametrize("direct", [64, 0], ids=["plain publishes", "atomic batches"])
def test_commits_abandoned_before_they_start_free_their_subjects_and_fail_their_writes(
        fresh_nats: NatsServer, direct: int) -> None:
    conn = NatsThread(fresh_nats.url)
    try:
        conn.call(conn.api("$JS.API.STREAM.CREATE.TC", stream_config("TC", "tc")))
        committer = GroupCommitter(conn, direct=direct, inflight=1, timeout=5)
        subjects = [f"tc.evt.a{i}" for i in range(6)]
        writes = [write(s) for s in subjects] + [write("tc.evt.b") + write("tc.evt.c")]

        async def start_then_lose() -> list[concurrent.futures.Future[tuple[int, int]]]:
            futures = [committer.submit(w) for w in writes]
            committer._take_incoming()  # the commits start (their tasks are made) ...
            committer.abandon()  # ... and the connection is lost before any of them ran
            return futures

        futures = conn.call(start_then_lose())
        for fut in futures:
            with pytest.raises(ConnectionLostError):
                fut.result(5)
        # the same subjects take writes again: nothing was left holding them
        again = [committer.submit(w) for w in writes]
        results = [fut.result(5) for fut in again]
        assert [count for _, count in results] == [1] * 6 + [2]
        assert len({seq for seq, _ in results}) == len(results)
    finally:
        conn.close()


async def test_inline_writes_publish_themselves_and_a_lost_connection_fails_them_as_lost(
        fresh_nats: NatsServer) -> None:
    """From inline code on the connection's loop, a one-message write is published by the
    command itself; a lost connection fails it with ConnectionLostError (an outcome unknown,
    which the executor waits out), never a cancellation of the command."""
    import asyncio
    import os
    import signal

    from splice.events.inline import run_inline

    conn = await NatsThread.on_this_loop(fresh_nats.url)
    assert fresh_nats.proc is not None
    try:
        await conn.api("$JS.API.STREAM.CREATE.TI", stream_config("TI", "ti"))
        committer = GroupCommitter(conn, direct=64, inflight=1, timeout=30)
        first = await run_inline(committer.write, write("ti.evt.a"), 10)
        assert first == (1, 1) and committer.commits == 0  # no commit task: the write's own
        os.kill(fresh_nats.proc.pid, signal.SIGSTOP)  # no answer comes while it is stopped
        try:
            pending = asyncio.create_task(run_inline(committer.write, write("ti.evt.b"), 10))
            await asyncio.sleep(0)  # its first step: decided, published, waiting for the answer
            assert committer._here, "the write never went out"
            committer.abandon()
            with pytest.raises(ConnectionLostError):
                await asyncio.wait_for(pending, 5)
        finally:
            os.kill(fresh_nats.proc.pid, signal.SIGCONT)
        assert not committer._busy and committer._singles == 0  # nothing left held
        again = await run_inline(committer.write, write("ti.evt.c"), 10)
        assert again[1] == 1
    finally:
        await asyncio.to_thread(conn.close)


async def test_inline_writes_go_out_as_they_are_decided_not_a_loop_turn_later(
        fresh_nats: NatsServer) -> None:
    """Decisions started one after another in the same turn of the loop (as a burst of
    requests is) hand their writes to the server three at a time as they are decided, the
    rest at the end of the turn, so the server stores the first while the loop decides the
    rest."""
    import asyncio

    from splice.events.inline import start_inline

    conn = await NatsThread.on_this_loop(fresh_nats.url)
    try:
        await conn.api("$JS.API.STREAM.CREATE.TW", stream_config("TW", "tw"))
        committer = GroupCommitter(conn, direct=64, inflight=1, timeout=10)
        answers: list[tuple[int, int] | None] = []

        async def then(result: tuple[int, int] | None, error: Exception | None) -> None:
            assert error is None
            answers.append(result)

        assert conn.nc._transport is not None
        writer = conn.nc._transport._io_writer  # type: ignore[attr-defined]
        sent = conn.nc.stats["out_msgs"]
        decided, unwritten = [], []
        tasks = []
        for i in range(4):
            tasks.append(start_inline(committer.write, (write(f"tw.evt.{i}"), 10), then))
            decided.append(conn.nc.stats["out_msgs"] - sent)  # no loop turn since the start
            unwritten.append(conn.nc._pending_data_size + writer.transport.get_write_buffer_size())
        assert decided == [1, 2, 3, 4]
        assert [n > 0 for n in unwritten] == [True, True, False, True]
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert sorted(answers) == [(1, 1), (2, 1), (3, 1), (4, 1)]  # type: ignore[type-var]
    finally:
        await asyncio.to_thread(conn.close)
