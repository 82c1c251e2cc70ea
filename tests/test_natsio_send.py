"""The command path's publish (`NatsThread.send`): the PUB/HPUB command it writes is the one
nats-py's `publish` would write for the same message, and what it sends arrives as sent, over
a real nats-server. Where nats-py must decide (a payload over the limit, a closed
connection), it is nats-py's own `publish` that answers. A write (`NatsThread.publishing`) is on
the socket when the call returns, or with the next two, or at the end of the loop's turn."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.errors import ConnectionClosedError, MaxPayloadError

from splice.events import subjects
from splice.events.natsio import NatsThread, settled
from splice.events.natswire import OutMsg, pub_command
from splice.natsserver import NatsServer

HEADERS = [
    None,
    {},
    {subjects.H_TOPIC: "ServiceTypeUpdated", subjects.H_VERSION: "3"},
    {"Nats-Msg-Id": "c-1", "Nats-Expected-Last-Subject-Sequence": "12",
     "Splice-Note": "  two\r\nlines\n "},
    # no line end anywhere (the quicker way), white space of every kind at the edges
    {"A": " v ", "B": "\u00a0w\u2003", "C": "\tx\x0b", "D": "", "E": " ", "F": "a\x1cb\x1f",
     "G": "é"},
    # a lone \r or \n, or one at an edge only
    {"A": "x\ry"}, {"A": "x\ny"}, {"A": "x\r"}, {"A": "\nx"}, {"A": "ok", "B": "\r\n"},
]


@pytest.mark.parametrize("headers", HEADERS)
@pytest.mark.parametrize(("subject", "reply", "data"), [
    ("splice.evt._admin.servicetype.x.ServiceTypeUpdated", "_INBOX.abc.a12", b'{"name":"n"}'),
    ("_INBOX.abc.7", "", b""),
    ("s", "r", bytes(range(256)) * 3),
])
async def test_the_command_written_is_nats_pys_own(
    nc: nats.NATS, subject: str, reply: str, data: bytes, headers: dict[str, str] | None
) -> None:
    await nc.flush()  # nothing pending of ours; the publish below stays in the buffer
    await nc.publish(subject, data, reply=reply, headers=headers)
    assert nc._pending[-1] == pub_command(subject, reply, data, headers)


async def test_what_is_sent_arrives_as_sent(fresh_nats: NatsServer) -> None:
    conn = await NatsThread.on_this_loop(fresh_nats.url, name="send-test")
    other = await nats.connect(fresh_nats.url)
    got: asyncio.Queue[nats.aio.msg.Msg] = asyncio.Queue()
    try:
        sub = await other.subscribe("send.>", cb=got.put)
        await settled(other)  # the subscriptions are in the server (one flush is not proof)
        await conn.send("send.a", b"one", {"K": " v\r\nw "}, "reply.to")
        await conn.send("send.b", b"")
        first = await asyncio.wait_for(got.get(), 5)
        second = await asyncio.wait_for(got.get(), 5)
        assert (first.subject, first.data, first.reply, dict(first.headers or {})) == (
            "send.a", b"one", "reply.to", {"K": "v  w"})
        assert (second.subject, second.data, second.reply, second.headers) == (
            "send.b", b"", "", None)
        assert conn.nc.stats["out_msgs"] >= 2
        with pytest.raises(MaxPayloadError):  # nats-py's own check, as its publish has it
            await conn.send("send.c", b"x" * (conn.nc.max_payload + 1))
        await sub.unsubscribe()
    finally:
        await other.close()
        await asyncio.to_thread(conn.close)
    with pytest.raises(ConnectionClosedError):
        await conn.send("send.d", b"late")


def _unwritten(conn: NatsThread) -> int:
    """Bytes of messages not yet in the kernel: in nats-py's buffer or the transport's."""
    assert conn.nc._transport is not None
    writer = conn.nc._transport._io_writer  # type: ignore[attr-defined]
    return int(conn.nc._pending_data_size + writer.transport.get_write_buffer_size())


@pytest.mark.parametrize("count", [1, 3])
async def test_a_write_is_on_the_socket_before_it_is_awaited(
    fresh_nats: NatsServer, count: int
) -> None:
    """Handed over one by one (`write_every` 1), the decision that ends in a write hands it to
    the server in the same turn of the loop: the server's fsync then overlaps what the loop
    decides next (sent on the coroutine's first step instead, a turn's worth of decisions went
    out together, after it)."""
    conn = await NatsThread.on_this_loop(fresh_nats.url, name="publishing-test")
    conn.write_every = 1
    try:
        js = conn.nc.jetstream()
        await conn.api("$JS.API.STREAM.CREATE.SENT",
                       {"name": "SENT", "subjects": ["sent.>"], "allow_atomic": True})
        before = conn.nc.stats["out_msgs"]
        msgs = [OutMsg(f"sent.{i}", b"x%d" % i, {"K": str(i)}) for i in range(count)]
        answer = conn.publishing(msgs, timeout=5)
        # no await since the call: nothing else ran, and the messages are in the kernel
        assert conn.nc.stats["out_msgs"] == before + count
        assert _unwritten(conn) == 0
        assert await answer == (count, count)
        stored = [await js.get_msg("SENT", seq) for seq in range(1, count + 1)]
        assert [(m.subject, m.data) for m in stored] == [(m.subject, m.data) for m in msgs]
    finally:
        await asyncio.to_thread(conn.close)


async def test_writes_go_to_the_socket_in_threes_and_the_rest_at_the_turns_end(
    fresh_nats: NatsServer,
) -> None:
    """By default (`write_every` 3) every third write takes the two before it to the socket at
    once; writes left over go when the loop has run the callbacks that were ready, before any
    callback made after them. Each write, an atomic batch included, counts once."""
    conn = await NatsThread.on_this_loop(fresh_nats.url, name="grouped-test")
    assert conn.write_every == 3
    try:
        await conn.api("$JS.API.STREAM.CREATE.GROUP",
                       {"name": "GROUP", "subjects": ["group.>"], "allow_atomic": True})
        loop = asyncio.get_running_loop()
        unwritten = []
        answers = []
        for i in range(5):
            msgs = [OutMsg(f"group.{i}.{j}", b"x", {}) for j in range(1 + (i == 1))]
            answers.append(conn.publishing(msgs, timeout=5))
            unwritten.append(_unwritten(conn) > 0)
        assert unwritten == [True, True, False, True, True]
        seen: list[bool] = []
        loop.call_soon(lambda: seen.append(_unwritten(conn) > 0))  # made after the writes
        await asyncio.sleep(0)
        assert seen == [False]
        got = [await a for a in answers]
        assert got == [(1, 1), (3, 2), (4, 1), (5, 1), (6, 1)]
    finally:
        await asyncio.to_thread(conn.close)


async def test_a_write_with_no_answer_times_out_and_is_forgotten(fresh_nats: NatsServer) -> None:
    """Deadlines are swept (one timer for all the writes in flight, not one each): a write
    that gets no answer fails at its deadline, a little after at most, and nothing of it is
    kept; the answered ones around it are not touched."""
    conn = await NatsThread.on_this_loop(fresh_nats.url, name="deadline-test")
    other = await nats.connect(fresh_nats.url)
    try:
        async def never(msg: nats.aio.msg.Msg) -> None:
            pass

        async def echo(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b'{"seq": 7}')

        await other.subscribe("quiet.>", cb=never)
        await other.subscribe("echo.>", cb=echo)
        await settled(other)  # the subscriptions are in the server (one flush is not proof)
        loop = asyncio.get_running_loop()
        started = loop.time()
        quiet = asyncio.ensure_future(conn.publishing([OutMsg("quiet.a", b"", {})], timeout=0.5))
        answered = await conn.publishing([OutMsg("echo.a", b"", {})], timeout=0.5)
        assert answered == (7, 1)
        with pytest.raises(TimeoutError):
            await quiet
        waited = loop.time() - started
        assert 0.5 <= waited < 0.5 + 1.0, waited
        assert conn._answers == {} and conn._deadlines == []
        assert conn._sweeper is None  # no timer left running for nothing
    finally:
        await other.close()
        await asyncio.to_thread(conn.close)


def test_close_leaves_no_task_pending_even_one_that_swallows_a_cancel(
    fresh_nats: NatsServer,
) -> None:
    """A connection on a thread of its own cancels its loop's tasks when it closes, and cancels
    again one that swallowed the first cancellation (as nats-py's reconnect loop can), so that
    none is left pending on a stopped loop."""
    conn = NatsThread(fresh_nats.url, name="close-test")
    cancels = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) > 1:
                    raise

    async def start() -> asyncio.Task[None]:
        return asyncio.ensure_future(stubborn())

    task = conn.call(start())
    started = time.monotonic()
    conn.close()
    assert task.done() and task.cancelled()
    assert len(cancels) == 2
    assert time.monotonic() - started < 5  # not the give-up timeout of the whole close


async def test_a_write_nobody_stores_is_refused_at_once(fresh_nats: NatsServer) -> None:
    """The answer to a write comes as read (`NatsThread._answered`) unless it has headers: the
    server's "no responders" status for a subject no stream holds goes nats-py's way, and the
    write fails with it at once, not when its time is up."""
    conn = await NatsThread.on_this_loop(fresh_nats.url, name="no-stream")
    try:
        started = time.monotonic()
        with pytest.raises(nats.errors.NoRespondersError):
            await conn.publish([OutMsg("nostream.x", b"x", {"A": "b"})], timeout=5)
        assert time.monotonic() - started < 2
        assert not conn._answers  # forgotten once answered
    finally:
        await asyncio.to_thread(conn.close)
