"""How Splice's domain events are written to and read from the stream.

An event's payload is its wire Struct (`splice.events.contracts`) encoded as JSON; its topic is
the Struct's stable type name (`ServiceTypeCreated`), not a Python path. An aggregate's first
event names the aggregate's kind (`aggregate`), which is how the reader knows what to build.
Events stored in an older schema are upcast on read with the one table of steps,
`splice.events.upcasting`, before they are decoded (the read side uses the same table).

A stored payload that cannot be read as its type (an unknown type, bytes that are not its
schema) raises `UnreadableEventError` saying which type and why; the application
(`common_handlers.SpliceApplication`) then finds the event in the stream and refuses to decide
on its aggregate (`PoisonedError`) instead of failing with an internal error.
"""

from __future__ import annotations

from typing import Any

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import get_topic

from splice.events.contracts import EVENT_TYPES, EventMeta
from splice.events.upcasting import current_version, upcast

from .domain import SpliceAggregate
from .registry import AGGREGATES

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_typed_decoders = {name: msgspec.json.Decoder(t) for name, t in EVENT_TYPES.items()}
_AGG_TOPICS = {name: get_topic(cls) for name, cls in AGGREGATES.items()}

_NAMES: dict[type[EventMeta], str] = {cls: name for name, cls in EVENT_TYPES.items()}


def type_name(payload: EventMeta) -> str:
    """The stable type name of an event payload (its Struct's tag)."""
    return _NAMES[type(payload)]


class _Unused(Transcoder):
    def encode(self, obj: Any) -> bytes:  # pragma: no cover - the mapper does its own
        return _encoder.encode(obj)

    def decode(self, data: bytes) -> Any:  # pragma: no cover
        return _decoder.decode(data)


class UnreadableEventError(ValueError):
    """A stored event's payload cannot be read as its type."""


def decode_payload(topic: str, data: bytes) -> EventMeta:
    """A stored payload as its wire Struct, upcast to the current schema first if needed."""
    decoder = _typed_decoders.get(topic)
    if decoder is None:
        raise UnreadableEventError(f"unknown event type {topic!r}")
    try:
        if current_version(topic) == 1:
            return decoder.decode(data)
        state = _decoder.decode(data)
        if not isinstance(state, dict):
            raise UnreadableEventError(f"a stored {topic} is not a JSON object")
        return msgspec.convert(upcast(topic, state), EVENT_TYPES[topic])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise UnreadableEventError(f"a stored {topic} does not match its schema: {e}") from e


class SpliceMapper(Mapper[str]):
    """Maps domain events to JSON payloads with stable type names, and back."""

    def __init__(self, transcoder: Transcoder | None = None, **kwargs: Any) -> None:
        super().__init__(transcoder=transcoder or _Unused(), **kwargs)

    def to_stored_event(self, domain_event: DomainEventProtocol[str]) -> StoredEvent:
        payload = domain_event.payload  # type: ignore[attr-defined]
        data = _encoder.encode(payload)
        if self.compressor:
            data = self.compressor.compress(data)
        if self.cipher:
            data = self.cipher.encrypt(data)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=type_name(payload),
            state=data,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[str]:
        data = stored_event.state
        if self.cipher:
            data = self.cipher.decrypt(data)
        if self.compressor:
            data = self.compressor.decompress(data)
        payload = decode_payload(stored_event.topic, data)
        state: dict[str, Any] = {
            "originator_id": stored_event.originator_id,
            "originator_version": stored_event.originator_version,
            "timestamp": payload.timestamp,
            "payload": payload,
        }
        cls: type[Any] = SpliceAggregate.Event
        if payload.aggregate is not None:
            cls = SpliceAggregate.Created
            state["originator_topic"] = _AGG_TOPICS[payload.aggregate]
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return event  # type: ignore[no-any-return,unused-ignore]
