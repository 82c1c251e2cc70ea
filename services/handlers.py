"""Command handlers: load the aggregates a command needs, decide, return what to save.

Each handler is a plain function of (application, tenant, command, meta) → Decision. It raises
a `DomainError` to refuse. It does no I/O of its own beyond loading aggregates through the
application; the caller saves the decision atomically and retries the whole handler on a
concurrency conflict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.application import AggregateNotFoundError, Application

from splice.events.contracts import (
    Command,
    CreateServiceType,
    DeleteServiceType,
    SetDefaultServiceType,
    UpdateServiceType,
)

from .domain import (
    Meta,
    NameTakenError,
    NotFoundError,
    SpliceAggregate,
    aggregate_id,
    name_id,
    new_public_id,
)
from .servicetype import ADMIN, ServiceType, ServiceTypeDefault, ServiceTypeName


@dataclass
class Decision:
    subject: SpliceAggregate  # the aggregate the reply is about
    save: list[SpliceAggregate] = field(default_factory=list)


class SpliceApplication(Application[str]):
    """The command side's eventsourcing application (one per command-service process)."""

    name = "splice"

    def get_or_none(self, agg_id: str) -> Any:
        try:
            return self.repository.get(agg_id)
        except AggregateNotFoundError:
            return None

    def get_live(self, agg_id: str, what: str, field: str = "id") -> Any:
        agg = self.get_or_none(agg_id)
        if agg is None or getattr(agg, "deleted", False):
            raise NotFoundError(f"{what} {agg_id.rsplit('.', 1)[-1]} not found", field=field)
        return agg


Handler = Callable[[SpliceApplication, str, Any, Meta], Decision]


def _st_id(public: str) -> str:
    return aggregate_id(ADMIN, ServiceType.AGGREGATE, public)


def _name_agg_id(name: str) -> str:
    return aggregate_id(ADMIN, ServiceTypeName.AGGREGATE, name_id("servicetype", name))


_DEFAULT_ID = aggregate_id(ADMIN, ServiceTypeDefault.AGGREGATE, ServiceTypeDefault.SINGLETON)


def _claim_name(app: SpliceApplication, name: str, holder: str, meta: Meta) -> ServiceTypeName:
    claim = app.get_or_none(_name_agg_id(name))
    if claim is None:
        claim = ServiceTypeName._create(
            ServiceTypeName.Created, id=_name_agg_id(name), name=name, **meta.kwargs()
        )
    elif claim.holder and claim.holder != holder:
        raise NameTakenError(f"a service type named {name!r} exists", field="name")
    claim.claim(holder, **meta.kwargs())
    return claim


def _make_default(app: SpliceApplication, st: ServiceType, meta: Meta) -> list[SpliceAggregate]:
    dflt = app.get_or_none(_DEFAULT_ID)
    if dflt is None:
        dflt = ServiceTypeDefault._create(
            ServiceTypeDefault.Created, id=_DEFAULT_ID, **meta.kwargs()
        )
    out: list[SpliceAggregate] = []
    if dflt.current and dflt.current != st.id:
        old = app.get_or_none(dflt.current)
        if old is not None and old.is_default:
            old.clear_default(**meta.kwargs())
            out.append(old)
    st.set_default(**meta.kwargs())
    dflt.change(st.id, **meta.kwargs())
    out.append(dflt)
    return out


def create_service_type(
    app: SpliceApplication, tenant: str, cmd: CreateServiceType, meta: Meta
) -> Decision:
    st_id = _st_id(new_public_id())
    st = ServiceType._create(
        ServiceType.Created,
        id=st_id,
        name=cmd.name,
        description=cmd.description,
        providers=dict(cmd.providers),
        **meta.kwargs(),
    )
    save: list[SpliceAggregate] = [st, _claim_name(app, cmd.name, st_id, meta)]
    dflt = app.get_or_none(_DEFAULT_ID)
    if cmd.default or dflt is None or not dflt.current:
        save += _make_default(app, st, meta)
    return Decision(st, save)


def update_service_type(
    app: SpliceApplication, tenant: str, cmd: UpdateServiceType, meta: Meta
) -> Decision:
    st: ServiceType = app.get_live(_st_id(cmd.id), "service type")
    save: list[SpliceAggregate] = [st]
    name = st.name if cmd.name is None else cmd.name
    if name != st.name:
        save.append(_claim_name(app, name, st.id, meta))
        old = app.get_or_none(_name_agg_id(st.name))
        if old is not None and old.holder == st.id:
            old.release(**meta.kwargs())
            save.append(old)
    st.update(
        name=name,
        description=st.description if cmd.description is None else cmd.description,
        providers={str(k): v for k, v in (cmd.providers or st.providers).items()},
        **meta.kwargs(),
    )
    return Decision(st, save)


def set_default_service_type(
    app: SpliceApplication, tenant: str, cmd: SetDefaultServiceType, meta: Meta
) -> Decision:
    st: ServiceType = app.get_live(_st_id(cmd.id), "service type")
    if st.is_default:
        return Decision(st, [])  # already the default: nothing to record
    return Decision(st, [st, *_make_default(app, st, meta)])


def delete_service_type(
    app: SpliceApplication, tenant: str, cmd: DeleteServiceType, meta: Meta
) -> Decision:
    st: ServiceType = app.get_live(_st_id(cmd.id), "service type")
    st.delete(**meta.kwargs())
    save: list[SpliceAggregate] = [st]
    claim = app.get_or_none(_name_agg_id(st.name))
    if claim is not None and claim.holder == st.id:
        claim.release(**meta.kwargs())
        save.append(claim)
    return Decision(st, save)


COMMAND_HANDLERS: dict[type[Command], Handler] = {
    CreateServiceType: create_service_type,
    UpdateServiceType: update_service_type,
    SetDefaultServiceType: set_default_service_type,
    DeleteServiceType: delete_service_type,
}
