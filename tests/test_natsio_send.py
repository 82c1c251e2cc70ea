"""The command path's publish (`NatsThread.send`): the PUB/HPUB command it writes is the one
nats-py's `publish` would write for the same message, and what it sends arrives as sent, over
a real nats-server. Where nats-py must decide (a payload over the limit, a closed
connection), it is nats-py's own `publish` that answers."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.errors import ConnectionClosedError, MaxPayloadError

from splice.events import subjects
from splice.events.natsio import NatsThread, pub_command
from splice.natsserver import NatsServer

HEADERS = [
    None,
    {},
    {subjects.H_TOPIC: "ServiceTypeUpdated", subjects.H_VERSION: "3"},
    {"Nats-Msg-Id": "c-1", "Nats-Expected-Last-Subject-Sequence": "12",
     "Splice-Note": "  two\r\nlines\n "},
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
        await other.flush()
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
