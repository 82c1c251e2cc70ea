"""Domain building blocks: the aggregate base class, the event base class, domain errors.

Aggregate ids are strings ``<tenant>.<aggregate>.<uuid>`` so that the event store can put each
aggregate on its own subject ``splice.evt.<tenant>.<aggregate>.<uuid>.<EventType>``. The public
id of a resource (in replies, in the CLI) is the uuid part.

Events carry every value that was decided (name, providers, ...) plus who decided it (actor),
in answer to which command (command_id) and conversation (correlation_id). Appliers only apply.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from eventsourcing.domain import (
    BaseAggregate,
    CanCreateTimestamp,
    CanInitAggregate,
    CanMutateAggregate,
    MetaDomainEvent,
)

# -- errors -------------------------------------------------------------------------------


class DomainError(Exception):
    """A command was refused by the domain. `code` is stable; `field` names the input."""

    code: ClassVar[str] = "invalid"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFoundError(DomainError):
    code = "not_found"


class ForbiddenError(DomainError):
    code = "forbidden"


class NameTakenError(DomainError):
    code = "name_taken"


class DefaultRequiredError(DomainError):
    code = "default_required"


class InvalidError(DomainError):
    code = "invalid"


# -- ids ----------------------------------------------------------------------------------


def aggregate_id(tenant: str, aggregate: str, public_id: str) -> str:
    return f"{tenant}.{aggregate}.{public_id}"


def public_id(agg_id: str) -> str:
    return agg_id.rsplit(".", 1)[-1]


def new_public_id() -> str:
    return str(uuid.uuid4())


_NS = uuid.UUID("5b1c6f0e-8d0a-4c57-9a7c-2f4f0c0de5a1")


def name_id(*parts: str) -> str:
    """A deterministic id for a name (a uniqueness claim lives on it)."""
    return str(uuid.uuid5(_NS, "\x1f".join(parts)))


# -- aggregate and events -----------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """Who, why, when: travels with every event."""

    actor: str
    command_id: str
    correlation_id: str

    def kwargs(self) -> dict[str, str]:
        return {
            "actor": self.actor,
            "command_id": self.command_id,
            "correlation_id": self.correlation_id,
        }


class SpliceAggregate(BaseAggregate[str]):
    """Base class of Splice's aggregates (string ids, events with actor and command ids)."""

    TENANT_SCOPED: ClassVar[bool] = True
    AGGREGATE: ClassVar[str] = ""

    @staticmethod
    def create_id(*_: Any, **__: Any) -> str:  # pragma: no cover - ids are always given
        raise NotImplementedError("Splice aggregates are created with an explicit id")

    @dataclass(frozen=True)
    class Event(CanMutateAggregate[str], CanCreateTimestamp, metaclass=MetaDomainEvent):
        originator_id: str
        originator_version: int
        timestamp: datetime
        actor: str
        command_id: str
        correlation_id: str

    @dataclass(frozen=True)
    class Created(CanInitAggregate[str], Event):
        originator_topic: str
