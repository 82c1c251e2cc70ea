"""Quotas (per tenant) and the host registry (admin scope): registration, loss, placement."""

from __future__ import annotations

from typing import Any, cast

import structlog

from splice.events import contracts as c

from .common_handlers import Decision, SpliceApplication, Touched
from .domain import SINGLETON, NotFoundError, PoisonedError, aggregate_id
from .host_registry import HostRegistry
from .network import Quota
from .servicetype import ADMIN

log = structlog.get_logger("splice.hosts")


def _quota(app: SpliceApplication, tenant: str, t: Touched) -> Quota:
    qid = aggregate_id(tenant, Quota.AGGREGATE, SINGLETON)
    return cast(Quota, t.load_or_create(app, qid, lambda: Quota.create(qid, tenant)))


def consume(app: SpliceApplication, tenant: str, t: Touched, resource: str) -> None:
    _quota(app, tenant, t).consume(resource, app.quota_defaults)


def release(app: SpliceApplication, tenant: str, t: Touched, resource: str) -> None:
    _quota(app, tenant, t).release(resource)


def set_quota(app: SpliceApplication, tenant: str, cmd: c.SetQuota) -> Decision:
    t = Touched()
    q = _quota(app, cmd.tenant, t)
    q.set_limits(dict(cmd.limits))
    return Decision(q, t.list())


HOSTS_ID = aggregate_id(ADMIN, HostRegistry.AGGREGATE, SINGLETON)


def _registry(app: SpliceApplication, t: Touched) -> HostRegistry:
    return cast(HostRegistry, t.load_or_create(app, HOSTS_ID, lambda: HostRegistry.create(HOSTS_ID)))


def _move(
    app: SpliceApplication, t: Touched, service_id: str, host: str | None,
    waiting_for: str | None = None,
) -> None:
    """Schedule the service on `host` (None: it waits for a host offering `waiting_for`)."""
    try:
        svc = app.get_or_none(service_id)
    except PoisonedError as e:  # one unreadable service must not stop a whole host's moves
        log.warning("service not moved: its log holds an unreadable event", error=e.message)
        return
    if svc is not None and not svc.deleted:
        svc.schedule(host, waiting_for)
        t.add(svc)
        for routed in routed_lbs(app, svc):  # a routed load balancer goes where its router goes
            routed.schedule(host, waiting_for)
            t.add(routed)


def routed_lbs(app: SpliceApplication, router: Any, network_id: str | None = None) -> list[Any]:
    """The load balancers routed on `router` (a router's `services`; none for another
    service), those with their VIP on `network_id` when given."""
    out = []
    for service_id in getattr(router, "services", None) or []:
        svc = app.get_or_none(service_id)
        ins = getattr(svc, "insertion", None)
        if (svc is not None and not svc.deleted and hasattr(svc, "vip_network_id")
                and ins is not None and ins.mode == "routed"
                and network_id in (None, svc.vip_network_id)):
            out.append(svc)
    return out


def register_host(app: SpliceApplication, tenant: str, cmd: c.RegisterHost) -> Decision:
    t = Touched()
    reg = _registry(app, t)
    for service_id, host in reg.register(cmd.host, list(cmd.providers), cmd.underlay_ip):
        _move(app, t, service_id, host)
    return Decision(reg, t.list(), result_id=cmd.host)


def declare_host_lost(app: SpliceApplication, tenant: str, cmd: c.DeclareHostLost) -> Decision:
    t = Touched()
    reg = _registry(app, t)
    if cmd.host not in reg.hosts:
        raise NotFoundError(f"host {cmd.host} is not registered", "$.host")
    for service_id, host in reg.lose(cmd.host):
        _move(app, t, service_id, host, reg.waiting.get(service_id))
    return Decision(reg, t.list(), result_id=cmd.host)


def place(app: SpliceApplication, t: Touched, svc: Any, provider: str) -> None:
    """On the least loaded live host offering `provider`, or waiting for one (and saying so)."""
    svc.schedule(_registry(app, t).place(svc.id, provider), provider)


def unplace(app: SpliceApplication, t: Touched, svc: Any) -> None:
    reg = app.get_or_none(HOSTS_ID)
    if reg is not None and (svc.id in reg.placements or svc.id in reg.waiting):
        reg = _registry(app, t)
        reg.unplace(svc.id)
