"""Writing known histories straight into the stream (no command service needed).

Events go in through the JetStream recorder (the event store the command side uses), in
atomic batches, with the same subjects, headers and payload shape the command side writes.
Fast enough to put tens of thousands of events in a test's stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from eventsourcing.persistence import StoredEvent

from splice.events import subjects
from splice.events.jetstream import JetStreamFactory

_encode = msgspec.json.Encoder().encode


@dataclass
class Ev:
    """One event to append: aggregate (tenant, kind, id), version, type, payload fields."""

    tenant: str
    kind: str
    ident: str
    version: int
    type: str
    fields: dict[str, Any]
    actor: str = "gen"
    command_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    schema: int = 1
    raw: bytes | None = None  # the payload exactly, instead of fields + metadata

    def stored(self) -> StoredEvent:
        if self.raw is not None:
            data = self.raw
        else:
            payload = {
                "timestamp": datetime.now(UTC).isoformat(),
                "actor": self.actor,
                "command_id": self.command_id,
                "correlation_id": self.command_id,
                "schema": self.schema,
                **self.fields,
            }
            if self.version == 1:
                payload["aggregate"] = self.kind
            data = _encode(payload)
        return StoredEvent(
            originator_id=f"{self.tenant}.{self.kind}.{self.ident}",
            originator_version=self.version,
            topic=self.type,
            state=data,
        )


class Appender:
    """The event store's recorder on a server; appends batches of `Ev` atomically."""

    def __init__(self, url: str) -> None:
        self.factory = JetStreamFactory({"NATS_URL": url})
        self.recorder = self.factory.application_recorder()

    def append(self, events: list[Ev], batch: int = 500) -> list[int]:
        seqs: list[int] = []
        for i in range(0, len(events), batch):
            chunk = events[i : i + batch]
            first = chunk[0]
            headers = {
                "Splice-Actor": first.actor,
                "Splice-Command-Id": first.command_id,
                "Splice-Correlation-Id": first.command_id,
            }
            seqs.extend(self.recorder.insert_events([e.stored() for e in chunk], headers=headers))
        return seqs

    def close(self) -> None:
        self.factory.close()


def servicetype_history(
    n_types: int, updates: int, tenant: str = "_admin", actor: str = "gen"
) -> Iterator[Ev]:
    """Realistic service-type events: create, `updates` updates each, every 10th deleted."""
    ids = [str(uuid.uuid4()) for _ in range(n_types)]
    versions = dict.fromkeys(ids, 0)

    def ev(i: str, typ: str, **fields: Any) -> Ev:
        versions[i] += 1
        return Ev(tenant, "servicetype", i, versions[i], typ, fields, actor=actor)

    for n, i in enumerate(ids):
        yield ev(
            i,
            "ServiceTypeCreated",
            name=f"type-{n}",
            description=f"generated type {n}",
            providers={"loadbalancer": "haproxy" if n % 2 else "nftables-l4"},
        )
    for u in range(updates):
        for n, i in enumerate(ids):
            yield ev(
                i,
                "ServiceTypeUpdated",
                name=f"type-{n}",
                description=f"generated type {n}, revision {u + 1}",
                providers={"loadbalancer": "haproxy", "firewall": "nftables"}
                if (n + u) % 3 == 0
                else {"loadbalancer": "nftables-l4"},
            )
    for n, i in enumerate(ids):
        if n % 10 == 0:
            yield ev(i, "ServiceTypeDeleted")


UNREADABLE_ACTOR = "operator-unreadable"


async def publish_unreadable(js: Any) -> int:
    """An event nobody can read (its version header is not a number); returns its seq. It
    says who sent it (`UNREADABLE_ACTOR`), beside a header the read side does not read."""
    ack = await js.publish(
        subjects.event("_admin", "servicetype", str(uuid.uuid4()), "ServiceTypeUpdated"),
        b"{}", headers={subjects.H_TOPIC: "ServiceTypeUpdated", subjects.H_VERSION: "x",
                        subjects.H_ACTOR: UNREADABLE_ACTOR, "X-Not-Read": "by anyone"})
    return int(ack.seq)
