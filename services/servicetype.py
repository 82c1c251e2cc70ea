"""ServiceType: which provider serves each kind of advanced service; exactly one is the default.

Three aggregates keep the invariants without serialising unrelated commands:

* `ServiceType` — one per type (name, description, providers, default flag, deleted flag);
* `ServiceTypeName` — one per name, claimed by at most one live type: two creates with the same
  name race on the claim's subject and the server lets only one of them through;
* `ServiceTypeDefault` — a singleton that names the default. Every change of default appends to
  it, so concurrent changes are serialised by the server's concurrency check on its subject; the
  old default's `DefaultCleared`, the new one's `DefaultSet` and the singleton's `Changed` are
  committed in one atomic batch.

Policy where the issue is silent: the first type created becomes the default; the default
cannot be deleted (make another the default first), so once a type exists one is the default.
"""

from __future__ import annotations

from typing import Any

from .domain import DefaultRequiredError, SpliceAggregate

ADMIN = "_admin"


class ServiceType(SpliceAggregate):
    AGGREGATE = "servicetype"

    class Created(SpliceAggregate.Created):
        name: str
        description: str
        providers: dict[str, str]

    class Updated(SpliceAggregate.Event):
        name: str
        description: str
        providers: dict[str, str]

        def apply(self, aggregate: Any) -> None:
            aggregate.name = self.name
            aggregate.description = self.description
            aggregate.providers = dict(self.providers)

    class DefaultSet(SpliceAggregate.Event):
        def apply(self, aggregate: Any) -> None:
            aggregate.is_default = True

    class DefaultCleared(SpliceAggregate.Event):
        def apply(self, aggregate: Any) -> None:
            aggregate.is_default = False

    class Deleted(SpliceAggregate.Event):
        def apply(self, aggregate: Any) -> None:
            aggregate.deleted = True

    def __init__(
        self,
        name: str,
        description: str,
        providers: dict[str, str],
        actor: str,
        command_id: str,
        correlation_id: str,
    ) -> None:
        self.name = name
        self.description = description
        self.providers = dict(providers)
        self.is_default = False
        self.deleted = False

    def update(self, name: str, description: str, providers: dict[str, str], **meta: str) -> None:
        self.trigger_event(
            self.Updated, name=name, description=description, providers=providers, **meta
        )

    def set_default(self, **meta: str) -> None:
        self.trigger_event(self.DefaultSet, **meta)

    def clear_default(self, **meta: str) -> None:
        self.trigger_event(self.DefaultCleared, **meta)

    def delete(self, **meta: str) -> None:
        if self.is_default:
            raise DefaultRequiredError(
                "the default service type cannot be deleted: make another one the default first",
                field="id",
            )
        self.trigger_event(self.Deleted, **meta)


class ServiceTypeName(SpliceAggregate):
    """A claim on a name: held by one live service type at a time."""

    AGGREGATE = "servicetypename"

    class Created(SpliceAggregate.Created):
        name: str

    class Claimed(SpliceAggregate.Event):
        name: str
        service_type_id: str

        def apply(self, aggregate: Any) -> None:
            aggregate.holder = self.service_type_id

    class Released(SpliceAggregate.Event):
        name: str

        def apply(self, aggregate: Any) -> None:
            aggregate.holder = ""

    def __init__(self, name: str, actor: str, command_id: str, correlation_id: str) -> None:
        self.name = name
        self.holder = ""

    def claim(self, service_type_id: str, **meta: str) -> None:
        self.trigger_event(self.Claimed, name=self.name, service_type_id=service_type_id, **meta)

    def release(self, **meta: str) -> None:
        self.trigger_event(self.Released, name=self.name, **meta)


class ServiceTypeDefault(SpliceAggregate):
    """The singleton that names the default service type."""

    AGGREGATE = "servicetypedefault"
    SINGLETON = "00000000-0000-0000-0000-000000000000"

    class Created(SpliceAggregate.Created):
        pass

    class Changed(SpliceAggregate.Event):
        service_type_id: str
        previous_id: str

        def apply(self, aggregate: Any) -> None:
            aggregate.current = self.service_type_id

    def __init__(self, actor: str, command_id: str, correlation_id: str) -> None:
        self.current = ""

    def change(self, service_type_id: str, **meta: str) -> None:
        self.trigger_event(
            self.Changed, service_type_id=service_type_id, previous_id=self.current, **meta
        )
