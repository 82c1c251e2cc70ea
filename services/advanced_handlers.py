"""Firewalls, NAT, taps and service chains of one tenant."""

from __future__ import annotations

from typing import cast

from splice.events import contracts as c

from .advanced import (
    Firewall,
    Nat,
    Tap,
    check_host_offers,
    check_standalone,
    tap_port,
    untap_port,
)
from .common_handlers import Decision, SpliceApplication, Touched
from .domain import InvalidError, aggregate_id, new_public_id, public_id
from .hosts_handlers import HOSTS_ID, consume
from .insertion_handlers import insert_service, resolve_insertion, retire_service
from .network_handlers import drop_port, net_id, new_port, port_id, router_id
from .registry import SERVICES
from .router import Router


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
    insert_service(app, t, fw, router, st)
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
    retire_service(app, tenant, t, fw, "firewall")
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
    insert_service(app, t, nat, router, st)
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
    retire_service(app, tenant, t, nat, "nat")
    return Decision(nat, t.list())


def create_tap(app: SpliceApplication, tenant: str, cmd: c.CreateTap) -> Decision:
    """A routed tap is placed like the other routed services; a standalone one (no router)
    goes where its port's traffic is: the host both ports are bound to, which must offer the
    tap's provider if it is registered (if not yet, the tap waits there for its agent)."""
    t = Touched()
    insertion, router, st = resolve_insertion(app, tenant, "tap", cmd.router_id, cmd.service_type_id, False)
    port = t.get(app, port_id(tenant, cmd.port_id), "port", "$.port_id")
    monitor = t.get(app, port_id(tenant, cmd.monitor_port_id), "port", "$.monitor_port_id")
    host = None
    if router is None:
        host = check_standalone(port, monitor)
        registry = app.get_or_none(HOSTS_ID)
        check_host_offers(host, registry.hosts if registry is not None else {}, insertion.provider)
    consume(app, tenant, t, "tap")
    tap = Tap.create(svc_id(tenant, "tap", new_public_id()), cmd.name, cmd.port_id,
                     cmd.monitor_port_id, cmd.direction, insertion)
    t.add(tap)
    if host is None:
        insert_service(app, t, tap, router, st)
        return Decision(tap, t.list())
    st.use(tap.id)  # `insert_service` without the registry's placement: the ports choose
    tap.schedule(host)
    for p in (port, monitor):
        tap_port(p, tap.id)
    t.add(st, port, monitor)
    return Decision(tap, t.list())


def delete_tap(app: SpliceApplication, tenant: str, cmd: c.DeleteTap) -> Decision:
    t = Touched()
    tap = cast(Tap, app.get_live(svc_id(tenant, "tap", cmd.id), "tap"))
    tap.delete()
    t.add(tap)
    for public in (tap.port_id, tap.monitor_port_id):
        port = app.get_or_none(port_id(tenant, public))
        if port is not None and not port.deleted:
            untap_port(port, tap.id)
            t.add(port)
    retire_service(app, tenant, t, tap, "tap")
    return Decision(tap, t.list())
