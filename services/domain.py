"""Domain building blocks: the aggregate base class, the acting context, domain errors.

Splice's events ARE its wire contracts: an aggregate decides, then `emit`s a msgspec Struct from
`splice.events` (e.g. `NetworkCreated`); its `when_<Type>` method applies it. Appliers only
apply: no checks, no clocks, no randomness. The eventsourcing library keeps the versions and
the concurrency; the mapper (`codec.py`) writes the Struct as the message payload.

Aggregate ids are strings ``<tenant>.<aggregate>.<uuid>`` so that the event store puts each
aggregate on its own subject ``splice.evt.<tenant>.<aggregate>.<uuid>.<EventType>``. The public
id of a resource (in replies, in the CLI) is the uuid part.

Who acts (actor, command id, correlation id, and the tenant whose command it is) is set once
per command with `acting(...)`; every event payload made by `stamp()` during that command
carries it, with the decision's time.
"""

from __future__ import annotations

import contextvars
import copy
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypeVar

import msgspec
from eventsourcing.domain import (
    BaseAggregate,
    CanCreateTimestamp,
    CanInitAggregate,
    CanMutateAggregate,
    MetaDomainEvent,
)
from immutables import Map

from splice.events.contracts import EventMeta

E = TypeVar("E", bound=EventMeta)

# -- errors -------------------------------------------------------------------------------


# Values a copy may share: immutable all the way down (a Struct is not: it may be mutable).
_IMMUTABLE = (str, int, float, bool, bytes, type(None), datetime, uuid.UUID, frozenset)

# The commands an aggregate remembers: a persistent map, shared by every copy of the aggregate
# (the repository hands out a copy per command) and extended in O(log n) by the event a
# command adds, so that neither grows with the number of commands the aggregate has seen.
CommandKey = str | tuple[str, str]
_NO_COMMANDS: Map[CommandKey, int] = Map()


def _copied(value: Any, memo: dict[int, Any]) -> Any:
    """`value` for a copy of an aggregate: shared if immutable, a shallow copy for a list, set
    or dict of immutable items, else a deep copy."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is dict and all(type(k) in _IMMUTABLE and type(v) in _IMMUTABLE
                            for k, v in value.items()):
        return dict(value)
    if (kind is list or kind is set) and all(type(v) in _IMMUTABLE for v in value):
        return kind(value)
    if kind is tuple and all(type(v) in _IMMUTABLE for v in value):
        return value
    return copy.deepcopy(value, memo)


class DomainError(Exception):
    """A command was refused by the domain. `code` is stable; `field` names the input."""

    code: ClassVar[str] = "invalid"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class AlreadyAppliedError(Exception):
    """This command was applied to this aggregate before (a repeat): not a refusal."""

    def __init__(self, agg_id: str, version: int) -> None:
        super().__init__(f"{agg_id} already has this command's events (version {version})")
        self.agg_id, self.version = agg_id, version


class InvalidError(DomainError):
    code = "invalid"


class NotFoundError(DomainError):
    code = "not_found"


class NameTakenError(DomainError):
    code = "name_taken"


class DefaultRequiredError(DomainError):
    code = "default_required"


class InUseError(DomainError):
    code = "in_use"


class AddressInUseError(DomainError):
    code = "address_in_use"


class ExhaustedError(DomainError):
    code = "exhausted"


class QuotaExceededError(DomainError):
    code = "quota_exceeded"


class PoisonedError(DomainError):
    """The aggregate holds a stored event that cannot be decoded or applied (set aside): no
    decision is made on it until an administrator repairs it. Never `internal`."""

    code = "poisoned"


# -- who acts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    actor: str
    command_id: str
    correlation_id: str
    tenant: str | None = None  # the command's tenant (its subject's); None: not a tenant's


_SYSTEM = Meta("system", "-", "-")  # frozen: safe to share
_ACTING: contextvars.ContextVar[Meta] = contextvars.ContextVar(
    "splice_acting",
    default=_SYSTEM,
)


@contextmanager
def acting(meta: Meta) -> Iterator[Meta]:
    token = _ACTING.set(meta)
    try:
        yield meta
    finally:
        _ACTING.reset(token)


def stamp(cls: type[E], **fields: Any) -> E:
    """An event payload of type `cls`, with the acting context and the time of the decision."""
    m = _ACTING.get()
    return cls(
        timestamp=datetime.now(UTC),
        actor=m.actor,
        command_id=m.command_id,
        correlation_id=m.correlation_id,
        command_tenant=m.tenant,
        **fields,
    )


# -- ids ----------------------------------------------------------------------------------


def aggregate_id(tenant: str, aggregate: str, public: str) -> str:
    return f"{tenant}.{aggregate}.{public}"


def public_id(agg_id: str) -> str:
    return agg_id.rsplit(".", 1)[-1]


def new_public_id() -> str:
    return str(uuid.uuid4())


_NS = uuid.UUID("5b1c6f0e-8d0a-4c57-9a7c-2f4f0c0de5a1")


def name_id(*parts: str) -> str:
    """A deterministic id for a name (a uniqueness claim lives on it)."""
    return str(uuid.uuid5(_NS, "\x1f".join(parts)))


SINGLETON = "00000000-0000-0000-0000-000000000000"

# -- aggregate ----------------------------------------------------------------------------


class SpliceAggregate(BaseAggregate[str]):
    """Base class of Splice's aggregates: events are wire Structs applied by `when_<Type>`."""

    AGGREGATE: ClassVar[str] = ""  # the subject token and the stable aggregate name
    # (A Created event is applied like any other, by `when`: the library calls the generated
    # no-argument __init__, then the event's `apply`.)

    @staticmethod
    def create_id(*_: Any, **__: Any) -> str:  # pragma: no cover - ids are always given
        raise NotImplementedError("Splice aggregates are created with an explicit id")

    @dataclass(frozen=True)
    class Event(CanMutateAggregate[str], CanCreateTimestamp, metaclass=MetaDomainEvent):
        originator_id: str
        originator_version: int
        timestamp: datetime
        payload: Any

        def apply(self, aggregate: Any) -> None:
            aggregate.when(self.payload)
            payload = self.payload
            aggregate.remember_command(
                payload.command_tenant, payload.command_id, self.originator_version
            )

    @dataclass(frozen=True)
    class Created(CanInitAggregate[str], Event):
        originator_topic: str

    # Set on the instance when a Deleted event is applied. Not annotated at class level: the
    # library would take an annotated attribute for a field of the Created event.
    deleted = False

    # deciding
    @classmethod
    def start(cls, agg_id: str, payload: EventMeta) -> Self:
        payload = msgspec.structs.replace(payload, aggregate=cls.AGGREGATE)
        return cls._create(cls.Created, id=agg_id, payload=payload, timestamp=payload.timestamp)

    def emit(self, payload: EventMeta) -> None:
        done = self.applied_version(payload.command_tenant, payload.command_id)
        if done is not None:
            raise AlreadyAppliedError(self.id, done)
        self.trigger_event(self.Event, payload=payload, timestamp=payload.timestamp)

    # applying
    # each class's appliers by event tag, filled as the tags arrive (see `when`)
    _appliers: ClassVar[dict[str | int | None, Callable[[Any, Any], None]]]

    def when(self, payload: EventMeta) -> None:
        """Apply `payload` with ``when_<tag>``: chosen by the event's wire name, not its class."""
        cls = type(self)
        appliers = cls.__dict__.get("_appliers")
        if appliers is None:
            appliers = cls._appliers = {}
        tag = type(payload).__struct_config__.tag
        applier = appliers.get(tag)
        if applier is None:
            applier = appliers[tag] = getattr(cls, f"when_{tag}")
        applier(self, payload)

    # -- remembered commands: every command that changed this aggregate, with the version its
    # events left it at. This is how a repeat of a one-event change is recognised without a
    # claim message, for as long as the stream keeps the events: no bound, a command id is
    # remembered exactly as long as the events that name it (a bound of the last N commands
    # let a retry after N other changes apply a second time). The cost is one small dict entry
    # per command of a loaded aggregate, read from the events that are read anyway.

    def _command_key(self, tenant: str | None, command_id: str) -> CommandKey:
        """How a command is remembered: a command id is scoped to its tenant.

        A shared aggregate (an admin service type, the host registry, a tenant's quota that the
        admin sets) is changed by many tenants' commands, and their ids may be equal. A command
        of the aggregate's own tenant (or of none, as on events stored before events named
        their command's tenant) is keyed by its id alone; another tenant's by (tenant, id). A
        string never equals a tuple, so the two kinds of key never meet.
        """
        if tenant is None:
            return command_id
        agg_id = self.id
        n = len(tenant)
        if agg_id.startswith(tenant) and agg_id[n : n + 1] == ".":
            return command_id
        return (tenant, command_id)

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        """The repository hands out copies of cached aggregates (a copy per command): the
        remembered commands (a persistent map) are shared; immutable values are shared and
        flat containers of them copied shallowly; only the rest is deep-copied."""
        new = object.__new__(type(self))
        state = new.__dict__
        for key, value in self.__dict__.items():
            state[key] = value if key == "_commands" else _copied(value, memo)
        return new

    def remember_command(self, tenant: str | None, command_id: str, version: int) -> None:
        done: Map[CommandKey, int] = self.__dict__.get("_commands", _NO_COMMANDS)
        self.__dict__["_commands"] = done.set(self._command_key(tenant, command_id), version)

    def applied_version(self, tenant: str | None, command_id: str) -> int | None:
        """The version at which a stored event of `tenant`'s `command_id` left this aggregate.

        Only events already stored count (not the ones this decision is adding); a command of
        another tenant with the same id is another command.
        """
        key = self._command_key(tenant, command_id)
        version = self.__dict__.get("_commands", _NO_COMMANDS).get(key)
        stored = self.version - len(self.pending_events)
        return version if version is not None and version <= stored else None
