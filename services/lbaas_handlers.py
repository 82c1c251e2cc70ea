"""Load balancers: create, update, delete, their tree (listeners, pools, members, monitors,
L7 policies and rules), and what their hosts report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from splice.events import contracts as c
from splice.events.router_fold import ROUTED_LB_PROVIDERS

from .common_handlers import Decision, Handler, SpliceApplication, Touched
from .domain import InvalidError, aggregate_id, new_public_id, public_id
from .hosts_handlers import consume
from .insertion_handlers import insert_service, resolve_insertion, retire_service
from .lbaas import LoadBalancer
from .network_handlers import drop_port, new_port
from .router import Router


def lb_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, LoadBalancer.AGGREGATE, public)


def _lb(app: SpliceApplication, tenant: str, public: str, field: str = "$.loadbalancer_id") -> LoadBalancer:
    return cast(LoadBalancer, app.get_live(lb_id(tenant, public), "load balancer", field))


def create_loadbalancer(app: SpliceApplication, tenant: str, cmd: c.CreateLoadBalancer) -> Decision:
    t = Touched()
    insertion, router, st = resolve_insertion(
        app, tenant, "loadbalancer", cmd.router_id, cmd.service_type_id, cmd.out_of_path
    )
    if router is not None and insertion.mode == "routed":
        check_routed(router, insertion.provider, cmd.vip_network_id)
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
    insert_service(app, t, lb, router, st)
    if router is not None and insertion.mode == "routed":
        # where its router is (or waiting with it); it moves with it (`hosts_handlers`)
        lb.schedule(router.host, router.waiting_for)
    return Decision(lb, t.list())


def check_routed(router: Router, provider: str, vip_network_id: str) -> None:
    """A routed load balancer's VIP is an address of its router's namespace, on one of the
    router's legs (an interface or the gateway), and a provider that runs there serves it."""
    if provider not in ROUTED_LB_PROVIDERS:
        raise InvalidError(
            f"provider {provider} serves floating load balancers only; routed ones need one of "
            f"{', '.join(sorted(ROUTED_LB_PROVIDERS))} in the router's service type", "$.router_id")
    legs = set(router.interfaces) | ({router.gateway.network_id} if router.gateway else set())
    if vip_network_id not in legs:
        raise InvalidError("the router has no interface or gateway on the VIP's network",
                           "$.vip_network_id")


def _lb_gone(app: SpliceApplication, tenant: str, t: Touched, lb: LoadBalancer) -> None:
    drop_port(app, tenant, t, lb.vip_port_id)
    retire_service(app, tenant, t, lb, "loadbalancer")


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


def _placed(app: SpliceApplication, cmd: c.ReportProvisioning | c.ReportOperatingStatus) -> Any:
    """The load balancer a host reports about, if the log places it on that host."""
    lb = _lb(app, cmd.tenant, cmd.loadbalancer_id)
    if lb.host != cmd.host:
        where = f"on {lb.host}" if lb.host else "on no host"
        raise InvalidError(f"the load balancer is placed {where}, not on {cmd.host}", "$.host")
    return lb


def report_provisioning(app: SpliceApplication, tenant: str, cmd: c.ReportProvisioning) -> Decision:
    t = Touched()
    lb = _placed(app, cmd)
    t.add(lb)
    if lb.report(cmd.host, cmd.generation, cmd.status, cmd.reason):
        _lb_gone(app, cmd.tenant, t, lb)
    return Decision(lb, t.list())


def report_operating_status(
    app: SpliceApplication, tenant: str, cmd: c.ReportOperatingStatus
) -> Decision:
    lb = _placed(app, cmd)
    lb.report_status(cmd.loadbalancer, {**cmd.listeners, **cmd.pools, **cmd.members})
    return Decision(lb, [lb])


def expire_pending(app: SpliceApplication, tenant: str, cmd: c.ExpirePending) -> Decision:
    lb = _lb(app, tenant, cmd.id, "$.id")
    lb.expire(cmd.generation, app.pending_timeout)
    return Decision(lb, [lb])


LISTENER_FIELDS = ("name", "connection_limit", "timeout_client_data", "timeout_member_connect",
                   "timeout_member_data", "default_pool_id", "admin_state_up")
POOL_FIELDS = ("name", "lb_algorithm", "session_persistence", "admin_state_up")
MEMBER_FIELDS = ("weight", "backup", "admin_state_up", "name")


create_listener = _on_lb(lambda lb, cmd: lb.add_listener(cmd.listener))
update_listener = _on_lb(lambda lb, cmd: lb.update_listener(cmd.id, _fields(cmd, LISTENER_FIELDS)))
delete_listener = _on_lb(lambda lb, cmd: lb.delete_listener(cmd.id))
create_pool = _on_lb(lambda lb, cmd: lb.add_pool(cmd.pool))
update_pool = _on_lb(
    lambda lb, cmd: lb.update_pool(cmd.id, _fields(cmd, POOL_FIELDS), cmd.clear_session_persistence)
)
delete_pool = _on_lb(lambda lb, cmd: lb.delete_pool(cmd.id))
create_member = _on_lb(lambda lb, cmd: lb.add_member(cmd.pool_id, cmd.member))
update_member = _on_lb(lambda lb, cmd: lb.update_member(cmd.pool_id, cmd.id, _fields(cmd, MEMBER_FIELDS)))
delete_member = _on_lb(lambda lb, cmd: lb.delete_member(cmd.pool_id, cmd.id))
replace_members = _on_lb(lambda lb, cmd: lb.replace_members(cmd.pool_id, list(cmd.members)))
set_healthmonitor = _on_lb(lambda lb, cmd: lb.set_healthmonitor(cmd.pool_id, cmd.healthmonitor))
delete_healthmonitor = _on_lb(lambda lb, cmd: lb.delete_healthmonitor(cmd.pool_id))
create_l7policy = _on_lb(lambda lb, cmd: lb.add_policy(cmd.listener_id, cmd.policy))
delete_l7policy = _on_lb(lambda lb, cmd: lb.delete_policy(cmd.listener_id, cmd.id))
create_l7rule = _on_lb(lambda lb, cmd: lb.add_rule(cmd.listener_id, cmd.policy_id, cmd.rule))
delete_l7rule = _on_lb(lambda lb, cmd: lb.delete_rule(cmd.listener_id, cmd.policy_id, cmd.id))
