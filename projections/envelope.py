"""One stored event as the read side sees it: where it sits in the log, what it says.

The read side never builds the command side's aggregate classes: it reads the payload as a
plain JSON object (msgspec's decoder, fast and allocation-light) and the facts the stream adds
(stream sequence, store time). Parsing is done once per message, here, so that every view and
the audit log share it; a projector reads a few hundred thousand of these per second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from splice.events import subjects
from splice.events.upcasting import CURRENT, upcast

# Keys every payload carries besides the event's own fields (events/wire.EventMeta; "type" is
# the tag msgspec writes for the tagged Struct).
META_KEYS = frozenset(
    {"type", "timestamp", "actor", "command_id", "correlation_id", "schema", "aggregate"}
)

_META_ORDER = tuple(sorted(META_KEYS))
# The headers the read side reads of a delivery (a rebuild hands its fold process only these).
READ_HEADERS = (
    subjects.H_TOPIC, subjects.H_VERSION, subjects.H_ACTOR, subjects.H_COMMAND_ID,
    subjects.H_CORRELATION_ID,
)

_decode = msgspec.json.Decoder(dict[str, Any]).decode


class Event(msgspec.Struct, gc=False):
    """A stored event: stream position and time, the aggregate it belongs to, its payload.

    A msgspec Struct (a rebuild makes one per event: in C, and out of the cyclic collector's
    sight; a payload of plain JSON values can never lead back to its event)."""

    seq: int
    time_ns: int  # when the stream stored it (nanoseconds since the epoch, UTC)
    tenant: str
    aggregate: str
    aggregate_id: str  # the public id (the uuid part of the subject)
    type: str
    version: int
    payload: dict[str, Any]

    @property
    def actor(self) -> str:
        return str(self.payload.get("actor", ""))

    @property
    def command_id(self) -> str:
        return str(self.payload.get("command_id", ""))

    @property
    def correlation_id(self) -> str:
        return str(self.payload.get("correlation_id", ""))

    @property
    def key(self) -> str:
        """The aggregate's full key, unique across tenants and kinds."""
        return f"{self.tenant}.{self.aggregate}.{self.aggregate_id}"

    def fields(self) -> dict[str, Any]:
        """The event's own fields, without the metadata every event carries (in the payload's
        order: a copy without those keys, cheaper than a comprehension over every key)."""
        own = self.payload.copy()
        for k in _META_ORDER:
            if k in own:
                del own[k]
        return own


def decode_payload(topic: str, data: bytes) -> dict[str, Any]:
    """The payload as a dict, upcast to the newest schema the read side knows.

    An undecodable payload does not stop the projector: it becomes ``{"_raw": ...}`` and still
    gets its audit row (the log is the truth; the read side reports what it could not read).
    """
    try:
        payload = _decode(data) if data else {}
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {"_raw": data.decode(errors="replace")}
    return upcast(topic, payload)


class Part(Protocol):
    """What `from_batch` reads of a delivery (`splice.events.follow.Delivery` has it)."""

    @property
    def seq(self) -> int: ...
    @property
    def time_ns(self) -> int: ...
    @property
    def subject(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def data(self) -> bytes: ...


def from_batch(batch: Sequence[Part]) -> list[Event | Exception]:
    """`from_parts` for a whole batch, in order: an Event, or why there is none.

    The same results as one `from_parts` per delivery, in one loop with its lookups hoisted
    (a rebuild spends a good part of its time here).
    """
    out: list[Event | Exception] = []
    append = out.append
    version_header, topic_header, prefix = subjects.H_VERSION, subjects.H_TOPIC, subjects.PREFIX
    decode, errors = _decode, (msgspec.DecodeError, msgspec.ValidationError)
    for d in batch:
        parts = d.subject.split(".")
        if len(parts) != 6 or parts[0] != prefix or parts[1] != "evt":
            append(ValueError(f"not an event subject: {d.subject!r}"))
            continue
        hdrs = d.headers or {}
        topic = hdrs.get(topic_header) or parts[5]
        try:
            version = int(hdrs.get(version_header) or 0)
        except ValueError as e:
            append(e)
            continue
        data = d.data
        try:
            payload = decode(data) if data else {}
        except errors:
            payload = {"_raw": data.decode(errors="replace")}
        else:
            if topic in CURRENT:
                payload = upcast(topic, payload)
        append(Event(d.seq, d.time_ns, parts[2], parts[3], parts[4], topic, version, payload))
    return out


def from_parts(
    seq: int, time_ns: int, subject: str, headers: Mapping[str, str] | None, data: bytes
) -> Event:
    """Build an Event from what a follower or a direct get delivers."""
    parts = subjects.parse_event(subject)
    if parts is None:
        raise ValueError(f"not an event subject: {subject!r}")
    hdrs = headers or {}
    topic = hdrs.get(subjects.H_TOPIC) or parts.topic
    return Event(
        seq=seq,
        time_ns=time_ns,
        tenant=parts.tenant,
        aggregate=parts.aggregate,
        aggregate_id=parts.ident,
        type=topic,
        version=int(hdrs.get(subjects.H_VERSION) or 0),
        payload=decode_payload(topic, data),
    )


def parse_rfc3339_ns(value: str) -> int:
    """Nanoseconds since the epoch from an RFC 3339 time with up to 9 fractional digits."""
    text = value.strip().replace("Z", "+00:00")
    frac_ns = 0
    if "." in text:
        head, rest = text.split(".", 1)
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        frac_ns = int((digits + "000000000")[:9])
        text = head + rest[i:]
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + frac_ns


def format_ns(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds and a `Z`: exact (it parses back to the same instant, so a
    time copied from an answer is a precise `--at`), fixed width (text order is time order)."""
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"
