"""Service chains of one tenant: create, update, delete.

A chain names its router, which records it (`Router.attach_service` with the chain's aggregate
id, so a router with a chain is not deleted) and whose other chains it must not tie with; its
hops are services of the tenant, which record the chain (`ServiceChainAttached`).

Accepted means servable on the router's host: a tap hop must run on the router's host (the
router placed), and a classifier's `logical_source_port` must be a live port of the tenant on a
network the router has an interface on. `chain.update` checks the hops and the classifier it
is given (the values they will have); what it does not replace was checked when it was given.
"""

from __future__ import annotations

from typing import Any, cast

from splice.events import contracts as c

from .advanced_handlers import svc_id
from .chains import (
    ServiceChain,
    attach,
    check_hop,
    check_on_path,
    check_one_chain,
    check_source_network,
    check_tap_on_router_host,
    detach,
)
from .common_handlers import Decision, SpliceApplication, Touched
from .domain import NotFoundError, aggregate_id, new_public_id
from .hosts_handlers import consume, release
from .network_handlers import port_id, router_id
from .router import Router


def chain_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, ServiceChain.AGGREGATE, public)


def chains_on(app: SpliceApplication, router: Router | None) -> list[ServiceChain]:
    """The live chains `router` records (among its services)."""
    out = []
    for agg_id in router.services if router is not None else []:
        if agg_id.split(".")[-2] == ServiceChain.AGGREGATE:
            chain = app.get_or_none(agg_id)
            if chain is not None and not chain.deleted:
                out.append(chain)
    return out


def resolve_hops(
    app: SpliceApplication, t: Touched, tenant: str, hops: list[c.HopIn], chain: str,
    router: Router | None,
) -> tuple[list[c.Hop], list[Any]]:
    """The hops as stored and their services, each checked: live, of the tenant, suiting its
    insertion, floating, a hop of no chain but `chain`, and a tap on `router`'s host."""
    out: list[c.Hop] = []
    services = []
    for i, h in enumerate(hops):
        where = f"$.hops[{i}]"
        svc = t.get(app, svc_id(tenant, h.kind, h.service_id), h.kind, f"{where}.service_id")
        if getattr(svc, "provisioning_status", "") == "PENDING_DELETE":
            raise NotFoundError(f"{h.kind} {h.service_id} is being deleted", f"{where}.service_id")
        check_hop(h.kind, h.insertion, svc.port_count, where)
        check_on_path(h.kind, svc.insertion.mode, where)
        check_one_chain(svc.chains, chain, where)
        if h.kind == "tap":
            check_tap_on_router_host(svc.host, router.host if router is not None else None, where)
        out.append(c.Hop(service_id=h.service_id, kind=h.kind, insertion=h.insertion))
        services.append(svc)
    return out, services


def check_classifier_port(
    app: SpliceApplication, t: Touched, tenant: str, classifier: c.Classifier, router: Router | None
) -> None:
    """A `logical_source_port` is a live port of the tenant on one of `router`'s networks."""
    if classifier.logical_source_port is None:
        return
    field = "$.classifier.logical_source_port"
    port = t.get(app, port_id(tenant, classifier.logical_source_port), "port", field)
    check_source_network(port.network_id, router.interfaces if router is not None else (), field)


def create_chain(app: SpliceApplication, tenant: str, cmd: c.CreateServiceChain) -> Decision:
    t = Touched()
    router: Router = t.get(app, router_id(tenant, cmd.router_id), "router", "$.router_id")
    consume(app, tenant, t, "chain")
    agg_id = chain_id(tenant, new_public_id())
    hops, services = resolve_hops(app, t, tenant, list(cmd.hops), agg_id, router)
    check_classifier_port(app, t, tenant, cmd.classifier, router)
    chain = ServiceChain.create(agg_id, cmd.name, cmd.classifier, hops, cmd.router_id, cmd.priority,
                                cmd.symmetric, chains_on(app, router))
    t.add(chain)
    router.attach_service(agg_id)
    t.add(router)
    for svc in services:
        attach(svc, agg_id)
        t.add(svc)
    return Decision(chain, t.list())


def update_chain(app: SpliceApplication, tenant: str, cmd: c.UpdateServiceChain) -> Decision:
    """Re-checks every rule against the new values; services that leave the chain are
    detached, new ones attached. Nothing changed: no event."""
    t = Touched()
    chain = cast(ServiceChain, t.get(app, chain_id(tenant, cmd.id), "service chain", "$.id"))
    t.add(chain)
    before = [svc_id(tenant, h.kind, h.service_id) for h in chain.hops]
    router = app.get_or_none(router_id(tenant, chain.router_id)) if chain.router_id else None
    hops, services = (None, []) if cmd.hops is None else resolve_hops(
        app, t, tenant, list(cmd.hops), chain.id, router)
    if cmd.classifier is not None:
        check_classifier_port(app, t, tenant, cmd.classifier, router)
    if not chain.update(cmd.name, cmd.classifier, hops, cmd.priority, cmd.symmetric, chains_on(app, router)):
        return Decision(chain, t.list())
    if hops is not None:
        after = {svc.id for svc in services}
        for agg_id in before:
            svc = app.get_or_none(agg_id) if agg_id not in after else None
            if svc is not None:
                detach(svc, chain.id)
                t.add(svc)
        for svc in services:
            attach(svc, chain.id)
            t.add(svc)
    return Decision(chain, t.list())


def delete_chain(app: SpliceApplication, tenant: str, cmd: c.DeleteServiceChain) -> Decision:
    t = Touched()
    chain = cast(ServiceChain, app.get_live(chain_id(tenant, cmd.id), "service chain"))
    chain.delete()
    t.add(chain)
    for h in chain.hops:
        svc = app.get_or_none(svc_id(tenant, h.kind, h.service_id))
        if svc is not None:
            detach(svc, chain.id)
            t.add(svc)
    router = app.get_or_none(router_id(tenant, chain.router_id)) if chain.router_id else None
    if router is not None and not router.deleted:
        router.detach_service(chain.id)
        t.add(router)
    release(app, tenant, t, "chain")
    return Decision(chain, t.list())
