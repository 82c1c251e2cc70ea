"""How Splice's domain events are written to and read from the stream.

The payload is a plain JSON object of the event's fields (timestamp in RFC 3339, ids as strings)
and its schema version; the topic is the event's stable, language-neutral type name
(`ServiceTypeCreated`), not a Python path. The table below maps type names to classes; it is
the one place that does, so a class may move or be renamed without changing the wire.
Events stored in an older schema are upcast on read (`upcast_v<N>_v<N+1>` on the class).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import get_topic, resolve_topic

from .servicetype import ServiceType, ServiceTypeDefault, ServiceTypeName

EVENT_CLASSES: dict[str, type[Any]] = {
    "ServiceTypeCreated": ServiceType.Created,
    "ServiceTypeUpdated": ServiceType.Updated,
    "ServiceTypeDefaultSet": ServiceType.DefaultSet,
    "ServiceTypeDefaultCleared": ServiceType.DefaultCleared,
    "ServiceTypeDeleted": ServiceType.Deleted,
    "ServiceTypeNameCreated": ServiceTypeName.Created,
    "ServiceTypeNameClaimed": ServiceTypeName.Claimed,
    "ServiceTypeNameReleased": ServiceTypeName.Released,
    "DefaultServiceTypeCreated": ServiceTypeDefault.Created,
    "DefaultServiceTypeChanged": ServiceTypeDefault.Changed,
}
AGGREGATE_CLASSES: dict[str, type[Any]] = {
    "servicetype": ServiceType,
    "servicetypename": ServiceTypeName,
    "servicetypedefault": ServiceTypeDefault,
}
_TYPE_NAMES = {cls: name for name, cls in EVENT_CLASSES.items()}
_AGG_NAMES = {cls: name for name, cls in AGGREGATE_CLASSES.items()}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def type_name(cls: type[Any]) -> str:
    return _TYPE_NAMES.get(cls) or get_topic(cls)


class _Unused(Transcoder):
    def encode(self, obj: Any) -> bytes:  # pragma: no cover
        return _encoder.encode(obj)

    def decode(self, data: bytes) -> Any:  # pragma: no cover
        return _decoder.decode(data)


class SpliceMapper(Mapper[str]):
    """Maps domain events to JSON payloads with stable type names, and back."""

    def __init__(self, transcoder: Transcoder | None = None, **kwargs: Any) -> None:
        super().__init__(transcoder=transcoder or _Unused(), **kwargs)

    def to_stored_event(self, domain_event: DomainEventProtocol[str]) -> StoredEvent:
        cls = type(domain_event)
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        topic = state.pop("originator_topic", None)
        if topic is not None:
            # A Created event names the aggregate's class: by its stable name when it has one.
            agg = resolve_topic(topic)
            state["aggregate"] = _AGG_NAMES.get(agg, topic)
        state["schema"] = getattr(cls, "class_version", 1)
        data = _encoder.encode(state)
        if self.compressor:
            data = self.compressor.compress(data)
        if self.cipher:
            data = self.cipher.encrypt(data)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=type_name(cls),
            state=data,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[str]:
        cls = EVENT_CLASSES.get(stored_event.topic) or resolve_topic(stored_event.topic)
        data = stored_event.state
        if self.cipher:
            data = self.cipher.decrypt(data)
        if self.compressor:
            data = self.compressor.decompress(data)
        state: dict[str, Any] = _decoder.decode(data)
        from_version = state.pop("schema", 1)
        class_version = getattr(cls, "class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        agg = state.pop("aggregate", None)
        if agg is not None:
            agg_cls = AGGREGATE_CLASSES.get(agg)
            state["originator_topic"] = get_topic(agg_cls) if agg_cls else agg
        if isinstance(state.get("timestamp"), str):
            state["timestamp"] = datetime.fromisoformat(state["timestamp"])
        state["originator_id"] = stored_event.originator_id
        state["originator_version"] = stored_event.originator_version
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", state)
        return domain_event
