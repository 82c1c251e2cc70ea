"""Command handlers: load the aggregates a command needs, decide, return what to save.

Each handler is a plain function of (application, tenant, command) → Decision. It raises a
`DomainError` to refuse. It does no I/O beyond loading aggregates through the application; the
caller saves the decision atomically (every aggregate it touched, in one batch) and re-runs the
handler on fresh state after a concurrency conflict. Tenant isolation is structural: every id a
command names is looked up under the command's own tenant, so another tenant's resource is
simply not found.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from eventsourcing.application import AggregateNotFoundError, Application

from splice.events import contracts as c

from .advanced import Firewall, Nat, ServiceChain, Tap, attach, check_hop, detach
from .domain import (
    SINGLETON,
    InUseError,
    InvalidError,
    NameTakenError,
    NotFoundError,
    SpliceAggregate,
    aggregate_id,
    name_id,
    new_public_id,
    public_id,
)
from .lbaas import LoadBalancer
from .network import DEFAULT_QUOTAS, HostRegistry, Network, Port, Quota, Router, check_network
from .registry import SERVICES
from .servicetype import ADMIN, ServiceType, ServiceTypeDefault, ServiceTypeName


@dataclass
class Decision:
    subject: SpliceAggregate  # the aggregate the reply's version is about
    save: list[SpliceAggregate] = field(default_factory=list)
    result_id: str | None = None  # the reply's id when it is not the subject's (a listener, ...)


class SpliceApplication(Application[str]):
    """The command side's eventsourcing application (one per command-service process)."""

    name = "splice"

    def __init__(self, env: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(env=env, **kwargs)
        self.quota_defaults = dict(DEFAULT_QUOTAS)
        for item in filter(None, (self.env.get("SPLICE_QUOTAS") or "").split(",")):
            kind, _, n = item.partition("=")
            self.quota_defaults[kind.strip()] = int(n)
        self.pending_timeout = float(self.env.get("SPLICE_PENDING_TIMEOUT") or 300)

    def get_or_none(self, agg_id: str) -> Any:
        loaded = _LOADED.get()
        if loaded is not None:
            loaded.add(agg_id)
        try:
            return self.repository.get(agg_id)
        except AggregateNotFoundError:
            return None

    def get_live(self, agg_id: str, what: str, field: str = "$.id") -> Any:
        agg = self.get_or_none(agg_id)
        if agg is None or getattr(agg, "deleted", False):
            raise NotFoundError(f"{what} {public_id(agg_id)} not found", field=field)
        return agg


Handler = Callable[[SpliceApplication, str, Any], Decision]

# The ids of the aggregates one decision read (so a refusal can be re-checked on fresh state).
_LOADED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("splice_loaded", default=None)


def tracking_loads() -> set[str]:
    """Start recording the aggregates loaded in this context; returns the set that fills."""
    loaded: set[str] = set()
    _LOADED.set(loaded)
    return loaded


class Touched:
    """The aggregates one decision changed, each once, in the order first touched."""

    def __init__(self) -> None:
        self._by_id: dict[str, SpliceAggregate] = {}

    def add(self, *aggs: SpliceAggregate | None) -> None:
        for agg in aggs:
            if agg is not None:
                self._by_id.setdefault(agg.id, agg)

    def get(self, app: SpliceApplication, agg_id: str, what: str, field: str) -> Any:
        """Load once per decision: a second load of the same id returns the same object."""
        if agg_id in self._by_id:
            agg = self._by_id[agg_id]
            if getattr(agg, "deleted", False):
                raise NotFoundError(f"{what} {public_id(agg_id)} not found", field)
            return agg
        agg = app.get_live(agg_id, what, field)
        return agg

    def touched(self, agg_id: str) -> SpliceAggregate | None:
        return self._by_id.get(agg_id)

    def load_or_create(
        self, app: SpliceApplication, agg_id: str, create: Callable[[], SpliceAggregate]
    ) -> Any:
        """The aggregate this decision already touched, else the stored one, else a new one."""
        agg = self._by_id.get(agg_id) or app.get_or_none(agg_id) or create()
        self.add(agg)
        return agg

    def list(self) -> list[SpliceAggregate]:
        return [a for a in self._by_id.values() if a.pending_events]


# -- service types --------------------------------------------------------------------------


def st_id(public: str) -> str:
    return aggregate_id(ADMIN, ServiceType.AGGREGATE, public)


def _name_agg_id(name: str) -> str:
    return aggregate_id(ADMIN, ServiceTypeName.AGGREGATE, name_id("servicetype", name))


DEFAULT_ID = aggregate_id(ADMIN, ServiceTypeDefault.AGGREGATE, SINGLETON)
HOSTS_ID = aggregate_id(ADMIN, HostRegistry.AGGREGATE, SINGLETON)


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


# -- quotas, hosts --------------------------------------------------------------------------


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


def _registry(app: SpliceApplication, t: Touched) -> HostRegistry:
    return cast(HostRegistry, t.load_or_create(app, HOSTS_ID, lambda: HostRegistry.create(HOSTS_ID)))


def _move(app: SpliceApplication, t: Touched, service_id: str, host: str | None) -> None:
    svc = app.get_or_none(service_id)
    if svc is not None and not svc.deleted:
        svc.schedule(host)
        t.add(svc)


def register_host(app: SpliceApplication, tenant: str, cmd: c.RegisterHost) -> Decision:
    t = Touched()
    reg = _registry(app, t)
    for service_id, host in reg.register(cmd.host, list(cmd.providers)):
        _move(app, t, service_id, host)
    return Decision(reg, t.list(), result_id=cmd.host)


def declare_host_lost(app: SpliceApplication, tenant: str, cmd: c.DeclareHostLost) -> Decision:
    t = Touched()
    reg = _registry(app, t)
    if cmd.host not in reg.hosts:
        raise NotFoundError(f"host {cmd.host} is not registered", "$.host")
    for service_id, host in reg.lose(cmd.host):
        _move(app, t, service_id, host)
    return Decision(reg, t.list(), result_id=cmd.host)


def _place(app: SpliceApplication, t: Touched, svc: Any, provider: str) -> None:
    svc.schedule(_registry(app, t).place(svc.id, provider))


def _unplace(app: SpliceApplication, t: Touched, svc: Any) -> None:
    reg = app.get_or_none(HOSTS_ID)
    if reg is not None and (svc.id in reg.placements or svc.id in reg.waiting):
        reg = _registry(app, t)
        reg.unplace(svc.id)


# -- networks and ports ---------------------------------------------------------------------


def net_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, Network.AGGREGATE, public)


def port_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, Port.AGGREGATE, public)


def create_network(app: SpliceApplication, tenant: str, cmd: c.CreateNetwork) -> Decision:
    cidr, gateway = check_network(cmd.cidr, cmd.gateway)
    t = Touched()
    consume(app, tenant, t, "network")
    net = Network.create(net_id(tenant, new_public_id()), cmd.name, cidr, gateway)
    t.add(net)
    return Decision(net, t.list())


def delete_network(app: SpliceApplication, tenant: str, cmd: c.DeleteNetwork) -> Decision:
    t = Touched()
    net: Network = app.get_live(net_id(tenant, cmd.id), "network")
    net.delete()
    t.add(net)
    release(app, tenant, t, "network")
    return Decision(net, t.list())


def new_port(
    app: SpliceApplication,
    tenant: str,
    t: Touched,
    network_public: str,
    owner: str,
    *,
    ip: str | None = None,
    gateway: bool = False,
    name: str | None = None,
    host: str | None = None,
    field: str = "$.network_id",
) -> Port:
    """Allocate an address on the network and make the port that holds it."""
    net: Network = t.get(app, net_id(tenant, network_public), "network", field)
    t.add(net)
    consume(app, tenant, t, "port")
    pid = port_id(tenant, new_public_id())
    address = net.allocate(public_id(pid), ip, gateway=gateway)
    port = Port.create(pid, network_public, address, owner, name=name, host=host)
    t.add(port)
    return port


def drop_port(app: SpliceApplication, tenant: str, t: Touched, public: str) -> None:
    port = app.get_or_none(port_id(tenant, public))
    if port is None or port.deleted:
        return
    port.delete()
    t.add(port)
    nid = net_id(tenant, port.network_id)
    net: Network | None = cast(Network | None, t.touched(nid)) or app.get_or_none(nid)
    if net is not None:
        net.release(port.ip_address, public)
        t.add(net)
    release(app, tenant, t, "port")


def create_port(app: SpliceApplication, tenant: str, cmd: c.CreatePort) -> Decision:
    t = Touched()
    port = new_port(app, tenant, t, cmd.network_id, "compute", ip=cmd.ip_address, name=cmd.name, host=cmd.host)
    return Decision(port, t.list())


def update_port(app: SpliceApplication, tenant: str, cmd: c.UpdatePort) -> Decision:
    port: Port = app.get_live(port_id(tenant, cmd.id), "port")
    port.update(cmd.name if cmd.name is not None else port.name, cmd.host if cmd.host is not None else port.host)
    return Decision(port, [port])


def delete_port(app: SpliceApplication, tenant: str, cmd: c.DeletePort) -> Decision:
    port: Port = app.get_live(port_id(tenant, cmd.id), "port")
    if port.device_owner != "compute":
        raise InUseError(f"the port belongs to {port.device_owner}: delete that instead", "$.id")
    t = Touched()
    drop_port(app, tenant, t, cmd.id)
    return Decision(port, t.list())


# -- routers ----------------------------------------------------------------------------------


def router_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, Router.AGGREGATE, public)


def default_type(app: SpliceApplication, field: str) -> ServiceType:
    dflt = app.get_or_none(DEFAULT_ID)
    if dflt is None or not dflt.current:
        raise InvalidError("there is no default service type: create one first", field)
    return cast(ServiceType, app.get_live(dflt.current, "service type", field))


def create_router(app: SpliceApplication, tenant: str, cmd: c.CreateRouter) -> Decision:
    t = Touched()
    if cmd.service_type_id:
        st: ServiceType = app.get_live(st_id(cmd.service_type_id), "service type", "$.service_type_id")
    else:
        st = default_type(app, "$.service_type_id")
    consume(app, tenant, t, "router")
    router = Router.create(router_id(tenant, new_public_id()), cmd.name, public_id(st.id))
    st.use(router.id)
    t.add(router, st)
    return Decision(router, t.list())


def add_router_interface(app: SpliceApplication, tenant: str, cmd: c.AddRouterInterface) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    t.add(router)
    port = new_port(app, tenant, t, cmd.network_id, f"router_interface:{cmd.id}", gateway=True)
    router.add_interface(cmd.network_id, public_id(port.id), port.ip_address)
    return Decision(router, t.list())


def remove_router_interface(
    app: SpliceApplication, tenant: str, cmd: c.RemoveRouterInterface
) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    t.add(router)
    drop_port(app, tenant, t, router.remove_interface(cmd.network_id))
    return Decision(router, t.list())


def set_router_gateway(app: SpliceApplication, tenant: str, cmd: c.SetRouterGateway) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    t.add(router)
    old = router.clear_gateway()
    if old:
        drop_port(app, tenant, t, old)
    port = new_port(app, tenant, t, cmd.network_id, f"router_gateway:{cmd.id}")
    router.set_gateway(cmd.network_id, public_id(port.id), port.ip_address, cmd.enable_snat)
    return Decision(router, t.list())


def clear_router_gateway(app: SpliceApplication, tenant: str, cmd: c.ClearRouterGateway) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    t.add(router)
    old = router.clear_gateway()
    if old is None:
        raise InvalidError("the router has no gateway", "$.id")
    drop_port(app, tenant, t, old)
    return Decision(router, t.list())


def delete_router(app: SpliceApplication, tenant: str, cmd: c.DeleteRouter) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    old = router.clear_gateway()
    router.delete()
    t.add(router)
    if old:
        drop_port(app, tenant, t, old)
    st = app.get_or_none(st_id(router.service_type_id))
    if st is not None:
        st.release(router.id)
        t.add(st)
    release(app, tenant, t, "router")
    return Decision(router, t.list())


# -- insertion --------------------------------------------------------------------------------


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


def _insert(
    app: SpliceApplication, t: Touched, svc: Any, router: Router | None, st: ServiceType
) -> None:
    """Book-keeping common to every new service: its type's users, its router, its host."""
    st.use(svc.id)
    t.add(st)
    if router is not None:
        router.attach_service(svc.id)
        t.add(router)
    if svc.insertion.mode in ("floating", "out_of_path") and hasattr(svc, "schedule"):
        _place(app, t, svc, svc.insertion.provider)


def _retire(app: SpliceApplication, tenant: str, t: Touched, svc: Any, resource: str) -> None:
    """Book-keeping common to every deleted service (the reverse of `_insert`)."""
    st = app.get_or_none(st_id(svc.insertion.service_type_id))
    if st is not None:
        st.release(svc.id)
        t.add(st)
    if svc.insertion.router_id:
        router = app.get_or_none(router_id(tenant, svc.insertion.router_id))
        if router is not None:
            router.detach_service(svc.id)
            t.add(router)
    _unplace(app, t, svc)
    release(app, tenant, t, resource)


# -- load balancers ---------------------------------------------------------------------------


def lb_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, LoadBalancer.AGGREGATE, public)


def _lb(app: SpliceApplication, tenant: str, public: str, field: str = "$.loadbalancer_id") -> LoadBalancer:
    return cast(LoadBalancer, app.get_live(lb_id(tenant, public), "load balancer", field))


def create_loadbalancer(app: SpliceApplication, tenant: str, cmd: c.CreateLoadBalancer) -> Decision:
    t = Touched()
    insertion, router, st = resolve_insertion(
        app, tenant, "loadbalancer", cmd.router_id, cmd.service_type_id, cmd.out_of_path
    )
    consume(app, tenant, t, "loadbalancer")
    agg_id = lb_id(tenant, new_public_id())
    vip = new_port(
        app, tenant, t, cmd.vip_network_id, f"loadbalancer:{public_id(agg_id)}",
        ip=cmd.vip_address, field="$.vip_network_id",
    )
    lb = LoadBalancer.create(
        agg_id, cmd.name, cmd.description, cmd.vip_network_id, vip.ip_address, public_id(vip.id),
        insertion, cmd.admin_state_up, list(cmd.pools), list(cmd.listeners),
    )
    t.add(lb)
    _insert(app, t, lb, router, st)
    return Decision(lb, t.list())


def _lb_gone(app: SpliceApplication, tenant: str, t: Touched, lb: LoadBalancer) -> None:
    drop_port(app, tenant, t, lb.vip_port_id)
    _retire(app, tenant, t, lb, "loadbalancer")


def delete_loadbalancer(app: SpliceApplication, tenant: str, cmd: c.DeleteLoadBalancer) -> Decision:
    t = Touched()
    lb = _lb(app, tenant, cmd.id, "$.id")
    t.add(lb)
    if lb.request_delete():
        _lb_gone(app, tenant, t, lb)
    return Decision(lb, t.list())


def update_loadbalancer(app: SpliceApplication, tenant: str, cmd: c.UpdateLoadBalancer) -> Decision:
    lb = _lb(app, tenant, cmd.id, "$.id")
    lb.update(cmd.name, cmd.description, cmd.admin_state_up)
    return Decision(lb, [lb])


def _on_lb(method: Callable[[LoadBalancer, Any], str | None]) -> Handler:
    """A handler for a command that changes one load balancer's tree."""

    def handler(app: SpliceApplication, tenant: str, cmd: Any) -> Decision:
        lb = _lb(app, tenant, cmd.loadbalancer_id)
        result = method(lb, cmd)
        return Decision(lb, [lb], result_id=result)

    return handler


def _fields(cmd: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(cmd, n) for n in names}


def report_provisioning(app: SpliceApplication, tenant: str, cmd: c.ReportProvisioning) -> Decision:
    t = Touched()
    lb = _lb(app, cmd.tenant, cmd.loadbalancer_id)
    if lb.host and lb.host != cmd.host:
        raise InvalidError(f"the load balancer is placed on {lb.host}, not {cmd.host}", "$.host")
    t.add(lb)
    if lb.report(cmd.host, cmd.generation, cmd.status, cmd.reason):
        _lb_gone(app, cmd.tenant, t, lb)
    return Decision(lb, t.list())


def report_operating_status(
    app: SpliceApplication, tenant: str, cmd: c.ReportOperatingStatus
) -> Decision:
    lb = _lb(app, cmd.tenant, cmd.loadbalancer_id)
    lb.report_status(cmd.loadbalancer, {**cmd.listeners, **cmd.pools, **cmd.members})
    return Decision(lb, [lb])


def expire_pending(app: SpliceApplication, tenant: str, cmd: c.ExpirePending) -> Decision:
    lb = _lb(app, tenant, cmd.id, "$.id")
    lb.expire(cmd.generation, app.pending_timeout)
    return Decision(lb, [lb])


# -- firewalls, NAT, taps ------------------------------------------------------------------


def svc_id(tenant: str, kind: str, public: str) -> str:
    return aggregate_id(tenant, SERVICES[kind].AGGREGATE, public)


def create_firewall(app: SpliceApplication, tenant: str, cmd: c.CreateFirewall) -> Decision:
    t = Touched()
    insertion, router, st = resolve_insertion(
        app, tenant, "firewall", cmd.router_id, cmd.service_type_id, cmd.out_of_path
    )
    consume(app, tenant, t, "firewall")
    agg_id = svc_id(tenant, "firewall", new_public_id())
    ports: list[str] = []
    if insertion.mode != "routed":
        if cmd.network_id is None:
            raise InvalidError("a floating firewall needs network_id for its two ports", "$.network_id")
        for leg in ("ingress", "egress"):
            p = new_port(app, tenant, t, cmd.network_id, f"firewall:{public_id(agg_id)}", name=leg)
            ports.append(public_id(p.id))
    fw = Firewall.create(agg_id, cmd.name, list(cmd.rules), cmd.default_action, insertion,
                         cmd.network_id if ports else None, ports)
    t.add(fw)
    _insert(app, t, fw, router, st)
    return Decision(fw, t.list())


def _fw(app: SpliceApplication, tenant: str, public: str) -> Firewall:
    return cast(Firewall, app.get_live(svc_id(tenant, "firewall", public), "firewall"))


def update_firewall(app: SpliceApplication, tenant: str, cmd: c.UpdateFirewall) -> Decision:
    fw = _fw(app, tenant, cmd.id)
    fw.update(cmd.name, cmd.default_action)
    return Decision(fw, [fw])


def insert_firewall_rule(app: SpliceApplication, tenant: str, cmd: c.InsertFirewallRule) -> Decision:
    fw = _fw(app, tenant, cmd.id)
    rid = fw.insert_rule(cmd.rule, cmd.before, cmd.after)
    return Decision(fw, [fw], result_id=rid)


def move_firewall_rule(app: SpliceApplication, tenant: str, cmd: c.MoveFirewallRule) -> Decision:
    fw = _fw(app, tenant, cmd.id)
    fw.move_rule(cmd.rule_id, cmd.before, cmd.after)
    return Decision(fw, [fw])


def remove_firewall_rule(app: SpliceApplication, tenant: str, cmd: c.RemoveFirewallRule) -> Decision:
    fw = _fw(app, tenant, cmd.id)
    fw.remove_rule(cmd.rule_id)
    return Decision(fw, [fw])


def delete_firewall(app: SpliceApplication, tenant: str, cmd: c.DeleteFirewall) -> Decision:
    t = Touched()
    fw = _fw(app, tenant, cmd.id)
    fw.delete()
    t.add(fw)
    for p in fw.port_ids:
        drop_port(app, tenant, t, p)
    _retire(app, tenant, t, fw, "firewall")
    return Decision(fw, t.list())


def _internal_networks(app: SpliceApplication, tenant: str, router: Router) -> list[str]:
    nets = [app.get_or_none(net_id(tenant, n)) for n in router.interfaces]
    return [n.cidr for n in nets if n is not None]


def create_nat(app: SpliceApplication, tenant: str, cmd: c.CreateNat) -> Decision:
    t = Touched()
    insertion, router, st = resolve_insertion(app, tenant, "nat", cmd.router_id, None, False)
    assert router is not None
    if not router.gateway:
        raise InvalidError("port forwarding needs a router with an external gateway", "$.router_id")
    consume(app, tenant, t, "nat")
    nat = Nat.create(svc_id(tenant, "nat", new_public_id()), cmd.name, insertion,
                     list(cmd.port_forwards), _internal_networks(app, tenant, router))
    t.add(nat)
    _insert(app, t, nat, router, st)
    return Decision(nat, t.list())


def _nat(app: SpliceApplication, tenant: str, public: str) -> Nat:
    return cast(Nat, app.get_live(svc_id(tenant, "nat", public), "NAT"))


def add_port_forward(app: SpliceApplication, tenant: str, cmd: c.AddPortForward) -> Decision:
    nat = _nat(app, tenant, cmd.id)
    router: Router = app.get_live(router_id(tenant, nat.insertion.router_id or ""), "router", "$.id")
    fid = nat.add_forward(cmd.forward, _internal_networks(app, tenant, router))
    return Decision(nat, [nat], result_id=fid)


def remove_port_forward(app: SpliceApplication, tenant: str, cmd: c.RemovePortForward) -> Decision:
    nat = _nat(app, tenant, cmd.id)
    nat.remove_forward(cmd.forward_id)
    return Decision(nat, [nat])


def delete_nat(app: SpliceApplication, tenant: str, cmd: c.DeleteNat) -> Decision:
    t = Touched()
    nat = _nat(app, tenant, cmd.id)
    nat.delete()
    t.add(nat)
    _retire(app, tenant, t, nat, "nat")
    return Decision(nat, t.list())


def create_tap(app: SpliceApplication, tenant: str, cmd: c.CreateTap) -> Decision:
    t = Touched()
    insertion, router, st = resolve_insertion(app, tenant, "tap", cmd.router_id, cmd.service_type_id, False)
    app.get_live(port_id(tenant, cmd.port_id), "port", "$.port_id")
    app.get_live(port_id(tenant, cmd.monitor_port_id), "port", "$.monitor_port_id")
    consume(app, tenant, t, "tap")
    tap = Tap.create(svc_id(tenant, "tap", new_public_id()), cmd.name, cmd.port_id,
                     cmd.monitor_port_id, cmd.direction, insertion)
    t.add(tap)
    _insert(app, t, tap, router, st)
    return Decision(tap, t.list())


def delete_tap(app: SpliceApplication, tenant: str, cmd: c.DeleteTap) -> Decision:
    t = Touched()
    tap = cast(Tap, app.get_live(svc_id(tenant, "tap", cmd.id), "tap"))
    tap.delete()
    t.add(tap)
    _retire(app, tenant, t, tap, "tap")
    return Decision(tap, t.list())


# -- chains -----------------------------------------------------------------------------------


def create_chain(app: SpliceApplication, tenant: str, cmd: c.CreateServiceChain) -> Decision:
    t = Touched()
    consume(app, tenant, t, "chain")
    chain_id = aggregate_id(tenant, ServiceChain.AGGREGATE, new_public_id())
    hops: list[c.Hop] = []
    services = []
    for i, h in enumerate(cmd.hops):
        where = f"$.hops[{i}]"
        svc = app.get_live(svc_id(tenant, h.kind, h.service_id), h.kind, f"{where}.service_id")
        if getattr(svc, "provisioning_status", "") == "PENDING_DELETE":
            raise NotFoundError(f"{h.kind} {h.service_id} is being deleted", f"{where}.service_id")
        check_hop(h.kind, h.insertion, svc.port_count, where)
        hops.append(c.Hop(service_id=h.service_id, kind=h.kind, insertion=h.insertion))
        services.append(svc)
    chain = ServiceChain.create(chain_id, cmd.name, cmd.classifier, hops)
    t.add(chain)
    for svc in services:
        attach(svc, chain_id)
        t.add(svc)
    return Decision(chain, t.list())


def delete_chain(app: SpliceApplication, tenant: str, cmd: c.DeleteServiceChain) -> Decision:
    t = Touched()
    chain_id = aggregate_id(tenant, ServiceChain.AGGREGATE, cmd.id)
    chain = cast(ServiceChain, app.get_live(chain_id, "service chain"))
    chain.delete()
    t.add(chain)
    for h in chain.hops:
        svc = app.get_or_none(svc_id(tenant, h.kind, h.service_id))
        if svc is not None:
            detach(svc, chain_id)
            t.add(svc)
    release(app, tenant, t, "chain")
    return Decision(chain, t.list())


LISTENER_FIELDS = ("name", "connection_limit", "timeout_client_data", "timeout_member_connect",
                   "timeout_member_data", "default_pool_id", "admin_state_up")
POOL_FIELDS = ("name", "lb_algorithm", "session_persistence", "admin_state_up")
MEMBER_FIELDS = ("weight", "backup", "admin_state_up", "name")

COMMAND_HANDLERS: dict[type[c.Command], Handler] = {
    c.CreateServiceType: create_service_type,
    c.UpdateServiceType: update_service_type,
    c.SetDefaultServiceType: set_default_service_type,
    c.DeleteServiceType: delete_service_type,
    c.RegisterHost: register_host,
    c.DeclareHostLost: declare_host_lost,
    c.SetQuota: set_quota,
    c.CreateNetwork: create_network,
    c.DeleteNetwork: delete_network,
    c.CreatePort: create_port,
    c.UpdatePort: update_port,
    c.DeletePort: delete_port,
    c.CreateRouter: create_router,
    c.AddRouterInterface: add_router_interface,
    c.RemoveRouterInterface: remove_router_interface,
    c.SetRouterGateway: set_router_gateway,
    c.ClearRouterGateway: clear_router_gateway,
    c.DeleteRouter: delete_router,
    c.CreateLoadBalancer: create_loadbalancer,
    c.UpdateLoadBalancer: update_loadbalancer,
    c.DeleteLoadBalancer: delete_loadbalancer,
    c.CreateListener: _on_lb(lambda lb, cmd: lb.add_listener(cmd.listener)),
    c.UpdateListener: _on_lb(lambda lb, cmd: lb.update_listener(cmd.id, _fields(cmd, LISTENER_FIELDS))),
    c.DeleteListener: _on_lb(lambda lb, cmd: lb.delete_listener(cmd.id)),
    c.CreatePool: _on_lb(lambda lb, cmd: lb.add_pool(cmd.pool)),
    c.UpdatePool: _on_lb(
        lambda lb, cmd: lb.update_pool(cmd.id, _fields(cmd, POOL_FIELDS), cmd.clear_session_persistence)
    ),
    c.DeletePool: _on_lb(lambda lb, cmd: lb.delete_pool(cmd.id)),
    c.CreateMember: _on_lb(lambda lb, cmd: lb.add_member(cmd.pool_id, cmd.member)),
    c.UpdateMember: _on_lb(
        lambda lb, cmd: lb.update_member(cmd.pool_id, cmd.id, _fields(cmd, MEMBER_FIELDS))
    ),
    c.DeleteMember: _on_lb(lambda lb, cmd: lb.delete_member(cmd.pool_id, cmd.id)),
    c.ReplaceMembers: _on_lb(lambda lb, cmd: lb.replace_members(cmd.pool_id, list(cmd.members))),
    c.SetHealthMonitor: _on_lb(lambda lb, cmd: lb.set_healthmonitor(cmd.pool_id, cmd.healthmonitor)),
    c.DeleteHealthMonitor: _on_lb(lambda lb, cmd: lb.delete_healthmonitor(cmd.pool_id)),
    c.CreateL7Policy: _on_lb(lambda lb, cmd: lb.add_policy(cmd.listener_id, cmd.policy)),
    c.DeleteL7Policy: _on_lb(lambda lb, cmd: lb.delete_policy(cmd.listener_id, cmd.id)),
    c.CreateL7Rule: _on_lb(lambda lb, cmd: lb.add_rule(cmd.listener_id, cmd.policy_id, cmd.rule)),
    c.DeleteL7Rule: _on_lb(lambda lb, cmd: lb.delete_rule(cmd.listener_id, cmd.policy_id, cmd.id)),
    c.ReportProvisioning: report_provisioning,
    c.ReportOperatingStatus: report_operating_status,
    c.ExpirePending: expire_pending,
    c.CreateFirewall: create_firewall,
    c.UpdateFirewall: update_firewall,
    c.InsertFirewallRule: insert_firewall_rule,
    c.MoveFirewallRule: move_firewall_rule,
    c.RemoveFirewallRule: remove_firewall_rule,
    c.DeleteFirewall: delete_firewall,
    c.CreateNat: create_nat,
    c.AddPortForward: add_port_forward,
    c.RemovePortForward: remove_port_forward,
    c.DeleteNat: delete_nat,
    c.CreateTap: create_tap,
    c.DeleteTap: delete_tap,
    c.CreateServiceChain: create_chain,
    c.DeleteServiceChain: delete_chain,
}

assert set(COMMAND_HANDLERS) == set(c.COMMANDS.values()), "every command needs a handler"
