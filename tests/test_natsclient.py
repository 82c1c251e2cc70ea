"""Splice's nats-py client (`splice.events.natsclient`): its header parsing gives what nats-py's
gives, for any header block, and a stored event read through it arrives with the same headers."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from splice.events.natsclient import (
    SpliceClient,
    connect,
    parse_header_lines,
    read_headers,
    take_first,
    take_raw,
)
from splice.natsserver import NatsServer

# pieces a header block is made of, hostile ones included: separators, every kind of white
# space (str.isspace's ASCII separators \x1c-\x1f too), non-ASCII letters and spaces, bytes
# that are not UTF-8
PIECES = st.sampled_from([
    b"Name", b"Splice-Topic", b"Nats-Batch-Id", b"x", b":", b": ", b"\r\n", b"\r", b"\n", b" ",
    b"\t", b"\x0b", b"\x0c", b"\x1c", b"\x1f", b"\x00", b"\x7f", "é".encode(), "\u00a0".encode(),
    "\u2003".encode(), b"\xff", b"\xc3", b"value", b"12", b"-", b"_",
])


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=40).map(b"".join))
def test_any_block_of_header_pieces_parses_as_nats_py_parses_it(raw: bytes) -> None:
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_as_nats_py_parses_them(raw: bytes) -> None:
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=20)), max_size=10))
def test_any_lines_of_text_parse_as_nats_py_parses_them(lines: list[tuple[str, str]]) -> None:
    raw = "".join(f"{k}: {v}\r\n" for k, v in lines).encode("utf-8", "surrogatepass") + b"\r\n"
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


async def test_a_message_arrives_with_the_headers_nats_py_would_give(
    fresh_nats: NatsServer,
) -> None:
    sent = {"Splice-Topic": "ServiceTypeUpdated", "Splice-Version": "3", "Note": "é \u00a0x",
            "Nats-Batch-Sequence": "2"}
    mine = await connect(fresh_nats.url)
    theirs = await nats.connect(fresh_nats.url)
    got: list[asyncio.Queue[nats.aio.msg.Msg]] = [asyncio.Queue(), asyncio.Queue()]
    try:
        assert isinstance(mine, SpliceClient)
        await mine.subscribe("h.>", cb=got[0].put)
        await theirs.subscribe("h.>", cb=got[1].put)
        await mine.flush()
        await theirs.flush()
        await theirs.publish("h.a", b"x", headers=sent)
        a, b = [await asyncio.wait_for(q.get(), 5) for q in got]
        assert a.headers == b.headers == sent
    finally:
        await mine.close()
        await theirs.close()


async def test_a_subscription_can_take_its_messages_raw_as_they_are_read(
    fresh_nats: NatsServer,
) -> None:
    """With `take_raw`, a SpliceClient subscription's messages go to the taker (subject,
    reply, data and header block as read, in order), not to its callback; a nats-py
    client's subscription cannot take them so, and its callback goes on getting them."""
    mine = await connect(fresh_nats.url)
    theirs = await nats.connect(fresh_nats.url)
    taken: list[tuple[bytes, bytes, bytes, bytes | None]] = []
    three = asyncio.Event()

    def take(*m: Any) -> None:
        taken.append(m)
        if len(taken) == 3:
            three.set()

    called: list[nats.aio.msg.Msg] = []
    other: asyncio.Queue[nats.aio.msg.Msg] = asyncio.Queue()

    async def cb(msg: nats.aio.msg.Msg) -> None:
        called.append(msg)

    try:
        sub = await mine.subscribe("r.>", cb=cb)
        assert take_raw(sub, take)
        assert not take_raw(await theirs.subscribe("r.>", cb=other.put), lambda *m: None)
        await mine.flush()
        await theirs.flush()
        for i in range(3):
            await theirs.publish(f"r.{i}", f"m{i}".encode(), reply=f"to.{i}",
                                 headers={"Splice-Topic": f"T{i}"} if i else None)
        await theirs.flush()
        for _ in range(3):
            await asyncio.wait_for(other.get(), 5)  # the nats-py subscription's callback
        await asyncio.wait_for(three.wait(), 5)
        assert [(s, r, d) for s, r, d, _ in taken] == [
            (f"r.{i}".encode(), f"to.{i}".encode(), f"m{i}".encode()) for i in range(3)]
        assert not taken[0][3]
        assert await read_headers(mine, taken[1][3]) == {"Splice-Topic": "T1"}
        assert called == [] and sub._received == 3
    finally:
        await mine.close()
        await theirs.close()


async def test_a_subscription_can_take_the_messages_it_can_as_they_are_read(
    fresh_nats: NatsServer,
) -> None:
    """With `take_first`, the messages the taker takes (True) do not reach the callback; the
    others do, in order and as nats-py makes them; the client and the subscription count both.
    A nats-py client's subscription offers none."""
    mine = await connect(fresh_nats.url)
    theirs = await nats.connect(fresh_nats.url)
    taken: list[tuple[bytes, bytes, bytes, bytes | None]] = []
    called: asyncio.Queue[nats.aio.msg.Msg] = asyncio.Queue()

    def first(*m: Any) -> bool:
        if not m[2].startswith(b"take"):
            return False
        taken.append(m)
        return True

    try:
        sub = await mine.subscribe("f.>", cb=called.put)
        assert take_first(sub, first)
        assert not take_first(await theirs.subscribe("f.>"), lambda *m: True)
        await mine.flush()
        sent = [(b"take0", None), (b"leave1", {"Splice-Topic": "T1"}), (b"take2", None),
                (b"leave3", None), (b"take4", {"K": "v"})]
        for i, (data, headers) in enumerate(sent):
            await theirs.publish(f"f.{i}", data, reply=f"to.{i}", headers=headers)
        await theirs.flush()
        left = [await asyncio.wait_for(called.get(), 5) for _ in range(2)]
        assert [(m.subject, m.reply, m.data, m.headers) for m in left] == [
            ("f.1", "to.1", b"leave1", {"Splice-Topic": "T1"}), ("f.3", "to.3", b"leave3", None)]
        assert [(s, r, d) for s, r, d, _ in taken] == [
            (f"f.{i}".encode(), f"to.{i}".encode(), sent[i][0]) for i in (0, 2, 4)]
        assert await read_headers(mine, taken[2][3]) == {"K": "v"}
        assert sub._received == 5 and mine.stats["in_msgs"] == 5
        assert mine.stats["in_bytes"] == sum(len(d) for d, _ in sent)
    finally:
        await mine.close()
        await theirs.close()
