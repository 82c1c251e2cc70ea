"""The nats-py client Splice's processes connect with: nats-py's own, with a faster reading of
message headers.

Every stored event carries a header block (the event's own headers and those the stream keeps
from its publish: up to nine lines), and a reader of the stream gets each one parsed by nats-py
into a dict before its callback runs: about 8 us a message, a third of a replay reader's CPU.
`parse_header_lines` gives the same dict for every input, in about a third of the time for a
block that is valid UTF-8 (all of Splice's); any other block is nats-py's to parse. Only the
parsing changes: status lines, control messages and everything else stay nats-py's.

A subscription may also take its messages as they are read (`take_raw`): the stream follower
does, and keeps them for a reader task of its own. nats-py makes a message object of each, puts
it in the subscription's queue, and a task of the subscription takes it out and awaits the
callback: about a fifth of a rebuild reader's CPU (21-22 vs 27-28 us an event). Or it may take
only the messages it can handle at once (`take_first`), the rest going nats-py's way: the
answers to a connection's own publishes do (`NatsThread`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

_WS = " \t\n\r\x0b\x0c"  # what bytes.strip() strips, as nats-py strips a header's bytes


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's `Client._parse_header_lines`, the same result for every `raw`: the block's
    ``Name: Value`` lines as a dict, a line without a colon or with a name that is not ASCII
    or holds white space skipped, the last of a name winning."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:  # invalid UTF-8: nats-py's value decoding replaces it
        return Client._parse_header_lines(raw)
    out: dict[str, str] = {}
    for line in text.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip(_WS)
        # An ASCII name of printable characters and no space holds no white space (the usual
        # case, checked in C); anything else gets nats-py's own test.
        if not (key.isascii() and key.isprintable() and " " not in key) and (
            not key.isascii() or any(c.isspace() for c in key)
        ):
            continue
        out[key] = value.strip(_WS)
    return out


# A subscription's messages as they are read: subject, reply subject, data, raw header block.
RawTake = Callable[[bytes, bytes, bytes, bytes | None], None]
# The same, for a message it may take (True) or leave to nats-py's path (False).
FirstTake = Callable[[bytes, bytes, bytes, bytes | None], bool]


class SpliceClient(Client):
    """nats-py's client, reading header blocks with `parse_header_lines`; and a subscription
    may take its messages as they are read (`take_raw`)."""

    _parse_header_lines = staticmethod(parse_header_lines)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        sub = self._subs.get(sid)
        take: RawTake | None = getattr(sub, "splice_take", None)
        if take is not None:
            take(subject, reply, data, headers)
        else:
            first: FirstTake | None = getattr(sub, "splice_first", None)
            if first is None or not first(subject, reply, data, headers):
                await super()._process_msg(sid, subject, reply, data, headers)
                return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sub._received += 1  # type: ignore[union-attr]


def take_raw(sub: Any, take: RawTake) -> bool:
    """Hand `sub`'s messages to `take`, as they are read, instead of to its callback: no
    message object, no queue and no task step per message (a stream reader's messages come by
    the thousand). `take` must not block: it keeps them for a reader of its own. False: `sub`
    is not a `SpliceClient`'s, or ends after a number of messages (nats-py's to count), and its
    callback goes on getting them."""
    if not isinstance(sub._conn, SpliceClient) or sub._max_msgs > 0:
        return False
    sub.splice_take = take
    return True


def take_first(sub: Any, first: FirstTake) -> bool:
    """Offer `sub`'s messages to `first` as they are read: those it takes (True) skip the
    message object, queue and task step of nats-py's path; the others take that path to the
    callback. `first` must not block. False: as for `take_raw`, and nothing is offered."""
    if not isinstance(sub._conn, SpliceClient) or sub._max_msgs > 0:
        return False
    sub.splice_first = first
    return True


async def read_headers(nc: Any, raw: bytes | None) -> dict[str, str] | None:
    """A raw header block as nats-py's message would carry it (status lines included)."""
    headers: dict[str, str] | None = await nc._process_headers(raw)
    return headers


async def connect(servers: str | list[str], **options: Any) -> SpliceClient:
    """`nats.connect`, with a `SpliceClient`. `servers`: a list, or comma-separated URLs."""
    if isinstance(servers, str):
        servers = [u.strip() for u in servers.split(",") if u.strip()]
    nc = SpliceClient()
    await nc.connect(servers, **options)
    return nc
