"""ServiceType: which provider serves each kind of advanced service; exactly one is the default.

Three aggregates keep the invariants without serialising unrelated commands:

* `ServiceType` — one per type (name, description, providers, default flag, users, deleted);
* `ServiceTypeName` — one per name, claimed by at most one live type: two creates with the same
  name race on the claim's subject and the server lets only one of them through;
* `ServiceTypeDefault` — a singleton that names the default. Every change of default appends to
  it, so concurrent changes are serialised by the server's concurrency check on its subject; the
  old default's `DefaultCleared`, the new one's `DefaultSet` and the singleton's `Changed` are
  committed in one atomic batch.

Policy where the issue is silent: the first type created becomes the default; the default
cannot be deleted (make another the default first), so once a type exists one is the default.
A type that a router or a service uses cannot be deleted (`in_use`) nor lose the provider a
user of it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splice.events.contracts import (
    DefaultServiceTypeChanged,
    DefaultServiceTypeCreated,
    ServiceTypeCreated,
    ServiceTypeDefaultCleared,
    ServiceTypeDefaultSet,
    ServiceTypeDeleted,
    ServiceTypeNameClaimed,
    ServiceTypeNameCreated,
    ServiceTypeNameReleased,
    ServiceTypeReleased,
    ServiceTypeUpdated,
    ServiceTypeUsed,
)

from .domain import DefaultRequiredError, InUseError, SpliceAggregate, stamp

ADMIN = "_admin"


class ServiceType(SpliceAggregate):
    AGGREGATE = "servicetype"

    if TYPE_CHECKING:
        name: str
        description: str
        providers: dict[str, str]
        is_default: bool
        users: set[str]

    @classmethod
    def create(cls, agg_id: str, name: str, description: str, providers: dict[str, str]) -> ServiceType:
        return cls.start(
            agg_id,
            stamp(ServiceTypeCreated, name=name, description=description, providers=providers),
        )

    def update(self, name: str, description: str, providers: dict[str, str]) -> None:
        if (name, description, providers) == (self.name, self.description, self.providers):
            return  # nothing changes: no event
        self.emit(stamp(ServiceTypeUpdated, name=name, description=description, providers=providers))

    def set_default(self) -> None:
        self.emit(stamp(ServiceTypeDefaultSet))

    def clear_default(self) -> None:
        self.emit(stamp(ServiceTypeDefaultCleared))

    def use(self, user_id: str) -> None:
        self.emit(stamp(ServiceTypeUsed, user_id=user_id))

    def release(self, user_id: str) -> None:
        if user_id in self.users:
            self.emit(stamp(ServiceTypeReleased, user_id=user_id))

    def delete(self) -> None:
        if self.is_default:
            raise DefaultRequiredError(
                "the default service type cannot be deleted: make another one the default first",
                field="$.id",
            )
        if self.users:
            raise InUseError(
                f"the service type is used by {len(self.users)} router(s) or service(s)",
                field="$.id",
            )
        self.emit(stamp(ServiceTypeDeleted))

    # -- appliers
    def when_ServiceTypeCreated(self, e: ServiceTypeCreated) -> None:
        self.name, self.description, self.providers = e.name, e.description, dict(e.providers)
        self.is_default = False
        self.users = set()

    def when_ServiceTypeUpdated(self, e: ServiceTypeUpdated) -> None:
        self.name, self.description, self.providers = e.name, e.description, dict(e.providers)

    def when_ServiceTypeDefaultSet(self, e: ServiceTypeDefaultSet) -> None:
        self.is_default = True

    def when_ServiceTypeDefaultCleared(self, e: ServiceTypeDefaultCleared) -> None:
        self.is_default = False

    def when_ServiceTypeUsed(self, e: ServiceTypeUsed) -> None:
        self.users.add(e.user_id)

    def when_ServiceTypeReleased(self, e: ServiceTypeReleased) -> None:
        self.users.discard(e.user_id)

    def when_ServiceTypeDeleted(self, e: ServiceTypeDeleted) -> None:
        self.deleted = True


class ServiceTypeName(SpliceAggregate):
    """A claim on a name: held by one live service type at a time."""

    AGGREGATE = "servicetypename"

    if TYPE_CHECKING:
        name: str
        holder: str

    @classmethod
    def create(cls, agg_id: str, name: str) -> ServiceTypeName:
        return cls.start(agg_id, stamp(ServiceTypeNameCreated, name=name))

    def claim(self, service_type_id: str) -> None:
        self.emit(stamp(ServiceTypeNameClaimed, name=self.name, service_type_id=service_type_id))

    def release(self) -> None:
        self.emit(stamp(ServiceTypeNameReleased, name=self.name))

    def when_ServiceTypeNameCreated(self, e: ServiceTypeNameCreated) -> None:
        self.name = e.name
        self.holder = ""

    def when_ServiceTypeNameClaimed(self, e: ServiceTypeNameClaimed) -> None:
        self.holder = e.service_type_id

    def when_ServiceTypeNameReleased(self, e: ServiceTypeNameReleased) -> None:
        self.holder = ""


class ServiceTypeDefault(SpliceAggregate):
    """The singleton that names the default service type."""

    AGGREGATE = "servicetypedefault"

    if TYPE_CHECKING:
        current: str

    @classmethod
    def create(cls, agg_id: str) -> ServiceTypeDefault:
        return cls.start(agg_id, stamp(DefaultServiceTypeCreated))

    def change(self, service_type_id: str) -> None:
        self.emit(
            stamp(DefaultServiceTypeChanged, service_type_id=service_type_id, previous_id=self.current)
        )

    def when_DefaultServiceTypeCreated(self, e: DefaultServiceTypeCreated) -> None:
        self.current = ""

    def when_DefaultServiceTypeChanged(self, e: DefaultServiceTypeChanged) -> None:
        self.current = e.service_type_id
