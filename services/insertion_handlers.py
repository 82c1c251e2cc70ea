"""Where an advanced service runs (routed, floating, out-of-path) and its common book-keeping."""

from __future__ import annotations

from typing import Any

from splice.events import contracts as c

from .common_handlers import SpliceApplication, Touched
from .domain import InvalidError, public_id
from .hosts_handlers import place, release, unplace
from .network_handlers import router_id
from .router import Router
from .servicetype import ServiceType
from .servicetype_handlers import default_type, st_id

# The kinds a host builds a detour for (agents/drivers/chain/model.detour): accepted means
# servable, so out-of-path insertion of any other kind is refused.
DETOURED = ("firewall",)


def resolve_insertion(
    app: SpliceApplication,
    tenant: str,
    kind: str,
    router_public: str | None,
    service_type_public: str | None,
    out_of_path: bool,
) -> tuple[c.InsertionState, Router | None, ServiceType]:
    """Routed, floating or out-of-path; the type that serves it and its provider for `kind`."""
    if router_public and service_type_public:
        raise InvalidError(
            "give router_id (routed: the router's type) or service_type_id (floating), not both",
            "$.service_type_id",
        )
    if out_of_path and kind not in DETOURED:
        raise InvalidError(
            f"out-of-path insertion is built for {', '.join(DETOURED)}s (the router detours the "
            f"traffic to them); a {kind} is floating or routed", "$.out_of_path")
    if out_of_path and not router_public:
        raise InvalidError("out-of-path insertion needs the router that detours traffic", "$.router_id")
    router: Router | None = None
    if router_public:
        router = app.get_live(router_id(tenant, router_public), "router", "$.router_id")
        st: ServiceType = app.get_live(st_id(router.service_type_id), "service type", "$.router_id")
        mode = "out_of_path" if out_of_path else "routed"
        field = "$.router_id"
    elif service_type_public:
        st = app.get_live(st_id(service_type_public), "service type", "$.service_type_id")
        mode, field = "floating", "$.service_type_id"
    else:
        st = default_type(app, "$.service_type_id")
        mode, field = "floating", "$.service_type_id"
    provider = st.providers.get(kind)
    if provider is None:
        raise InvalidError(f"service type {st.name} offers no {kind} provider", field)
    state = c.InsertionState(
        mode=mode,  # type: ignore[arg-type]
        service_type_id=public_id(st.id),
        provider=provider,
        router_id=router_public,
    )
    return state, router, st


def insert_service(
    app: SpliceApplication, t: Touched, svc: Any, router: Router | None, st: ServiceType
) -> None:
    """Book-keeping common to every new service: its type's users, its router, its host."""
    st.use(svc.id)
    t.add(st)
    if router is not None:
        router.attach_service(svc.id)
        t.add(router)
    if svc.insertion.mode in ("floating", "out_of_path") and hasattr(svc, "schedule"):
        place(app, t, svc, svc.insertion.provider)


def retire_service(app: SpliceApplication, tenant: str, t: Touched, svc: Any, resource: str) -> None:
    """Book-keeping common to every deleted service (the reverse of `insert_service`)."""
    st = app.get_or_none(st_id(svc.insertion.service_type_id))
    if st is not None:
        st.release(svc.id)
        t.add(st)
    if svc.insertion.router_id:
        router = app.get_or_none(router_id(tenant, svc.insertion.router_id))
        if router is not None:
            router.detach_service(svc.id)
            t.add(router)
    unplace(app, t, svc)
    release(app, tenant, t, resource)
