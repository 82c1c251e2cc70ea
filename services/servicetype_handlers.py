"""Service types (admin scope): create, rename, re-provide, make default, delete."""

from __future__ import annotations

from typing import cast

from splice.events import contracts as c

from .common_handlers import Decision, SpliceApplication
from .domain import (
    SINGLETON,
    InUseError,
    InvalidError,
    NameTakenError,
    SpliceAggregate,
    aggregate_id,
    name_id,
    new_public_id,
)
from .servicetype import ADMIN, ServiceType, ServiceTypeDefault, ServiceTypeName


def st_id(public: str) -> str:
    return aggregate_id(ADMIN, ServiceType.AGGREGATE, public)


def _name_agg_id(name: str) -> str:
    return aggregate_id(ADMIN, ServiceTypeName.AGGREGATE, name_id("servicetype", name))


DEFAULT_ID = aggregate_id(ADMIN, ServiceTypeDefault.AGGREGATE, SINGLETON)


def _claim_name(app: SpliceApplication, name: str, holder: str) -> ServiceTypeName:
    claim = app.get_or_none(_name_agg_id(name))
    if claim is None:
        claim = ServiceTypeName.create(_name_agg_id(name), name)
    elif claim.holder and claim.holder != holder:
        raise NameTakenError(f"a service type named {name!r} exists", field="$.name")
    claim.claim(holder)
    return cast(ServiceTypeName, claim)


def _make_default(app: SpliceApplication, st: ServiceType) -> list[SpliceAggregate]:
    dflt = app.get_or_none(DEFAULT_ID) or ServiceTypeDefault.create(DEFAULT_ID)
    out: list[SpliceAggregate] = []
    if dflt.current and dflt.current != st.id:
        old = app.get_or_none(dflt.current)
        if old is not None and old.is_default:
            old.clear_default()
            out.append(old)
    st.set_default()
    dflt.change(st.id)
    out.append(dflt)
    return out


def create_service_type(app: SpliceApplication, tenant: str, cmd: c.CreateServiceType) -> Decision:
    st = ServiceType.create(st_id(new_public_id()), cmd.name, cmd.description, {str(k): v for k, v in cmd.providers.items()})
    save: list[SpliceAggregate] = [st, _claim_name(app, cmd.name, st.id)]
    dflt = app.get_or_none(DEFAULT_ID)
    if cmd.default or dflt is None or not dflt.current:
        save += _make_default(app, st)
    return Decision(st, save)


def update_service_type(app: SpliceApplication, tenant: str, cmd: c.UpdateServiceType) -> Decision:
    st: ServiceType = app.get_live(st_id(cmd.id), "service type")
    save: list[SpliceAggregate] = [st]
    name = st.name if cmd.name is None else cmd.name
    if name != st.name:
        save.append(_claim_name(app, name, st.id))
        old = app.get_or_none(_name_agg_id(st.name))
        if old is not None and old.holder == st.id:
            old.release()
            save.append(old)
    providers = {str(k): v for k, v in (cmd.providers or st.providers).items()}
    if st.users and set(st.providers) - set(providers):
        raise InUseError("routers or services use this type: its kinds cannot be removed", "$.providers")
    st.update(
        name=name,
        description=st.description if cmd.description is None else cmd.description,
        providers=providers,
    )
    return Decision(st, save)


def set_default_service_type(
    app: SpliceApplication, tenant: str, cmd: c.SetDefaultServiceType
) -> Decision:
    st: ServiceType = app.get_live(st_id(cmd.id), "service type")
    if st.is_default:
        return Decision(st, [])  # already the default: nothing to record
    return Decision(st, [st, *_make_default(app, st)])


def delete_service_type(app: SpliceApplication, tenant: str, cmd: c.DeleteServiceType) -> Decision:
    st: ServiceType = app.get_live(st_id(cmd.id), "service type")
    st.delete()
    save: list[SpliceAggregate] = [st]
    claim = app.get_or_none(_name_agg_id(st.name))
    if claim is not None and claim.holder == st.id:
        claim.release()
        save.append(claim)
    return Decision(st, save)


def default_type(app: SpliceApplication, field: str) -> ServiceType:
    dflt = app.get_or_none(DEFAULT_ID)
    if dflt is None or not dflt.current:
        raise InvalidError("there is no default service type: create one first", field)
    return cast(ServiceType, app.get_live(dflt.current, "service type", field))
