"""The domain's invariants, one test each: given events, when a command, then events or an error.

No NATS, no threads: `World` runs the real handlers over the library's in-memory store.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from world import World

from splice.services.domain import (
    AddressInUseError,
    DomainError,
    ExhaustedError,
    InUseError,
    InvalidError,
    NotFoundError,
    QuotaExceededError,
)

T = "acme"
PROVIDERS = {"loadbalancer": "haproxy", "firewall": "nftables", "nat": "nftables", "tap": "tc-mirror"}


@pytest.fixture
def w() -> Iterator[World]:
    world = World(SPLICE_QUOTAS="loadbalancer=3")
    yield world
    world.close()


def setup(w: World) -> dict[str, str]:
    st = w.cmd("_admin", "CreateServiceType", name="full", providers=PROVIDERS)
    net = w.cmd(T, "CreateNetwork", name="web", cidr="10.1.0.0/24")
    ext = w.cmd(T, "CreateNetwork", name="ext", cidr="192.0.2.0/28")
    router = w.cmd(T, "CreateRouter", name="r")
    w.cmd(T, "AddRouterInterface", id=router, network_id=net)
    w.cmd("_admin", "SetNetworkExternal", tenant=T, id=ext)
    w.cmd(T, "SetRouterGateway", id=router, network_id=ext)
    return {"st": st, "net": net, "ext": ext, "router": router}


def err(w: World, exc: type[DomainError], tenant: str, command: str, /, **fields: object) -> DomainError:
    with pytest.raises(exc) as e:
        w.cmd(tenant, command, **fields)
    return e.value


# -- IPAM -------------------------------------------------------------------------------------


def test_ipam_hands_out_the_next_free_host_address_skipping_the_gateway(w: World) -> None:
    net = w.cmd(T, "CreateNetwork", name="n", cidr="10.0.0.0/29")
    ips = [w.get(T, "port", w.cmd(T, "CreatePort", network_id=net)).ip_address for _ in range(5)]
    assert ips == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    err(w, ExhaustedError, T, "CreatePort", network_id=net)


def test_ipam_never_hands_out_an_address_twice_and_reuses_released_ones(w: World) -> None:
    net = w.cmd(T, "CreateNetwork", name="n", cidr="10.0.0.0/28")
    p = w.cmd(T, "CreatePort", network_id=net, ip_address="10.0.0.9")
    assert err(w, AddressInUseError, T, "CreatePort", network_id=net, ip_address="10.0.0.9").field == "$.ip_address"
    err(w, AddressInUseError, T, "CreatePort", network_id=net, ip_address="10.0.0.1")  # gateway
    err(w, InvalidError, T, "CreatePort", network_id=net, ip_address="10.0.0.15")  # broadcast
    err(w, InvalidError, T, "CreatePort", network_id=net, ip_address="10.0.1.5")  # outside
    w.cmd(T, "DeletePort", id=p)
    assert w.get(T, "port", w.cmd(T, "CreatePort", network_id=net, ip_address="10.0.0.9")).ip_address == "10.0.0.9"


def test_networks_need_valid_cidrs_and_gateways(w: World) -> None:
    assert err(w, InvalidError, T, "CreateNetwork", name="n", cidr="10.0.0.1/24").field == "$.cidr"
    assert err(w, InvalidError, T, "CreateNetwork", name="n", cidr="10.0.0.0/24",
               gateway="10.0.1.1").field == "$.gateway"
    assert err(w, InvalidError, T, "CreateNetwork", name="n", cidr="10.0.0.0/31").field == "$.cidr"


def test_a_network_with_ports_cannot_be_deleted(w: World) -> None:
    net = w.cmd(T, "CreateNetwork", name="n", cidr="10.0.0.0/28")
    w.cmd(T, "CreatePort", network_id=net)
    err(w, InUseError, T, "DeleteNetwork", id=net)


# -- tenants, quotas ------------------------------------------------------------------------


def test_a_command_cannot_name_another_tenants_resources(w: World) -> None:
    b = setup(w)
    assert err(w, NotFoundError, "globex", "CreatePort", network_id=b["net"]).field == "$.network_id"
    err(w, NotFoundError, "globex", "DeleteRouter", id=b["router"])
    err(w, NotFoundError, "globex", "CreateLoadBalancer", name="x", vip_network_id=b["net"])


def test_quotas_have_defaults_and_per_tenant_limits(w: World) -> None:
    b = setup(w)
    for i in range(3):
        w.cmd(T, "CreateLoadBalancer", name=f"lb{i}", vip_network_id=b["net"])
    err(w, QuotaExceededError, T, "CreateLoadBalancer", name="x", vip_network_id=b["net"])
    w.cmd("_admin", "SetQuota", tenant=T, limits={"loadbalancer": 4})
    w.cmd(T, "CreateLoadBalancer", name="x", vip_network_id=b["net"])
    err(w, InvalidError, "_admin", "SetQuota", tenant=T, limits={"spaceships": 1})


# -- insertion and service types -----------------------------------------------------------


def test_insertion_routed_uses_the_routers_type(w: World) -> None:
    b = setup(w)
    lb = w.get(T, "loadbalancer", w.cmd(T, "CreateLoadBalancer", name="r", vip_network_id=b["net"],
                                         router_id=b["router"]))
    assert (lb.insertion.mode, lb.insertion.service_type_id, lb.insertion.router_id) == (
        "routed", b["st"], b["router"])


def test_a_routed_load_balancer_goes_where_its_router_goes_and_keeps_its_leg(w: World) -> None:
    w.cmd("_host", "RegisterHost", host="r1", providers=["router", "haproxy"])
    b = setup(w)
    router = w.get(T, "router", b["router"])
    assert router.host == "r1"
    lb_id = w.cmd(T, "CreateLoadBalancer", name="r", vip_network_id=b["ext"], router_id=b["router"])
    assert w.get(T, "loadbalancer", lb_id).host == "r1"  # placed with its router
    # the VIP's leg stays while the LB is there (its other leg may go)
    e = err(w, InUseError, T, "ClearRouterGateway", id=b["router"])
    assert lb_id in e.message
    other = w.cmd(T, "CreateNetwork", name="o", cidr="10.3.0.0/24")
    w.cmd("_admin", "SetNetworkExternal", tenant=T, id=other)
    err(w, InUseError, T, "SetRouterGateway", id=b["router"], network_id=other)
    # the router's host lost: the router moves, and its routed LB with it
    w.cmd("_host", "RegisterHost", host="r2", providers=["router", "haproxy"])
    w.cmd("_admin", "DeclareHostLost", host="r1")
    assert w.get(T, "router", b["router"]).host == "r2"
    assert w.get(T, "loadbalancer", lb_id).host == "r2"
    w.cmd(T, "DeleteLoadBalancer", id=lb_id)
    err(w, InUseError, T, "ClearRouterGateway", id=b["router"])  # until its host removed it
    generation = w.get(T, "loadbalancer", lb_id).generation
    w.cmd("_host", "ReportProvisioning", tenant=T, loadbalancer_id=lb_id, host="r2",
          generation=generation, status="DELETED")
    w.cmd(T, "ClearRouterGateway", id=b["router"])


def test_a_routed_load_balancer_needs_a_leg_on_its_vip_network_and_a_routed_provider(
        w: World) -> None:
    b = setup(w)
    far = w.cmd(T, "CreateNetwork", name="far", cidr="10.4.0.0/24")
    e = err(w, InvalidError, T, "CreateLoadBalancer", name="x", vip_network_id=far,
            router_id=b["router"])
    assert e.field == "$.vip_network_id"
    l4 = w.cmd("_admin", "CreateServiceType", name="l4r", providers={"loadbalancer": "nftables-l4"})
    r2 = w.cmd(T, "CreateRouter", name="r2", service_type_id=l4)
    w.cmd(T, "AddRouterInterface", id=r2, network_id=far)
    e = err(w, InvalidError, T, "CreateLoadBalancer", name="x", vip_network_id=far, router_id=r2)
    assert e.field == "$.router_id" and "floating" in e.message
    # and nothing was taken: the address is still free, no LB counted against the quota
    assert w.get(T, "network", far).allocations.keys() == {"10.4.0.1"}


def test_insertion_floating_with_a_type_or_the_default_and_never_both(w: World) -> None:
    b = setup(w)
    other = w.cmd("_admin", "CreateServiceType", name="l4", providers={"loadbalancer": "nftables-l4"})
    lb = w.get(T, "loadbalancer", w.cmd(T, "CreateLoadBalancer", name="f", vip_network_id=b["net"],
                                         service_type_id=other))
    assert (lb.insertion.mode, lb.insertion.provider) == ("floating", "nftables-l4")
    lb2 = w.get(T, "loadbalancer", w.cmd(T, "CreateLoadBalancer", name="d", vip_network_id=b["net"]))
    assert lb2.insertion.service_type_id == b["st"]  # the default
    e = err(w, InvalidError, T, "CreateLoadBalancer", name="x", vip_network_id=b["net"],
            router_id=b["router"], service_type_id=other)
    assert e.field == "$.service_type_id"


def test_the_chosen_type_must_offer_a_provider_for_the_kind(w: World) -> None:
    b = setup(w)
    fw_only = w.cmd("_admin", "CreateServiceType", name="fw", providers={"firewall": "nftables"})
    e = err(w, InvalidError, T, "CreateLoadBalancer", name="x", vip_network_id=b["net"],
            service_type_id=fw_only)
    assert "no loadbalancer provider" in e.message


def test_out_of_path_is_for_firewalls_with_a_router_and_is_placed_floating(w: World) -> None:
    b = setup(w)
    e = err(w, InvalidError, T, "CreateLoadBalancer", name="x", vip_network_id=b["net"],
            router_id=b["router"], out_of_path=True)  # no host detours to a load balancer
    assert e.field == "$.out_of_path" and "firewall" in e.message
    e = err(w, InvalidError, T, "CreateFirewall", name="x", network_id=b["net"], out_of_path=True)
    assert e.field == "$.router_id"
    fw = w.get(T, "firewall", w.cmd(T, "CreateFirewall", name="o", network_id=b["net"],
                                     router_id=b["router"], out_of_path=True))
    assert fw.insertion.mode == "out_of_path"
    assert fw.id in w.get(T, "router", b["router"]).services


def test_a_service_type_in_use_cannot_be_deleted(w: World) -> None:
    b = setup(w)
    spare = w.cmd("_admin", "CreateServiceType", name="spare", providers=PROVIDERS, default=True)
    assert w.get("_admin", "servicetype", b["st"]).users  # the router uses it
    err(w, InUseError, "_admin", "DeleteServiceType", id=b["st"])
    w.cmd("_admin", "DeleteServiceType", id=w.cmd("_admin", "CreateServiceType", name="unused",
                                                   providers=PROVIDERS))
    assert spare


# -- load balancers -------------------------------------------------------------------------


def tree(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "lb",
        "pools": [{"name": "web", "protocol": "HTTP", "members": [
            {"address": "10.1.0.10", "protocol_port": 80}]}],
        "listeners": [{"name": "http", "protocol": "HTTP", "protocol_port": 80, "default_pool": "web"}],
    }
    body.update(over)
    return body


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"listeners": [{"name": "a", "protocol": "HTTP", "protocol_port": 80},
                        {"name": "b", "protocol": "HTTP", "protocol_port": 80}]}, "$.listeners[1].protocol_port"),
        ({"listeners": [{"name": "a", "protocol": "HTTP", "protocol_port": 80, "default_pool": "nope"}]},
         "$.listeners[0].default_pool"),
        ({"listeners": [{"name": "a", "protocol": "TCP", "protocol_port": 80, "default_pool": "web"}]},
         "$.listeners[0].default_pool_id"),
        ({"listeners": [{"name": "a", "protocol": "TCP", "protocol_port": 80,
                         "l7policies": [{"action": "REJECT"}]}]}, "$.listeners[0].l7policies[0]"),
        ({"listeners": [{"name": "a", "protocol": "HTTP", "protocol_port": 80,
                         "l7policies": [{"action": "REDIRECT_TO_POOL"}]}]},
         "$.listeners[0].l7policies[0].redirect_pool_id"),
        ({"listeners": [{"name": "a", "protocol": "HTTP", "protocol_port": 80,
                         "l7policies": [{"action": "REDIRECT_TO_URL"}]}]},
         "$.listeners[0].l7policies[0].redirect_url"),
        ({"listeners": [{"name": "a", "protocol": "HTTP", "protocol_port": 80, "l7policies": [
            {"action": "REJECT", "rules": [{"type": "HEADER", "compare_type": "EQUAL_TO", "value": "x"}]}]}]},
         "$.listeners[0].l7policies[0].rules[0].key"),
        ({"listeners": [{"name": "a", "protocol": "HTTP", "protocol_port": 80, "l7policies": [
            {"action": "REJECT", "rules": [{"type": "PATH", "compare_type": "REGEX", "value": "(["}]}]}]},
         "$.listeners[0].l7policies[0].rules[0].value"),
        ({"pools": [{"name": "p", "protocol": "TCP", "session_persistence": {"type": "HTTP_COOKIE"}}],
          "listeners": []}, "$.pools[0].session_persistence"),
        ({"pools": [{"name": "p", "protocol": "HTTP", "session_persistence": {"type": "APP_COOKIE"}}],
          "listeners": []}, "$.pools[0].session_persistence.cookie_name"),
        ({"pools": [{"name": "p", "protocol": "HTTP", "members": [
            {"address": "10.0.0.1", "protocol_port": 80}, {"address": "10.0.0.1", "protocol_port": 80}]}],
          "listeners": []}, "$.pools[0].members[1]"),
        ({"pools": [{"name": "p", "protocol": "HTTP"}, {"name": "p", "protocol": "TCP"}], "listeners": []},
         "$.pools[1].name"),
    ],
)
def test_load_balancer_trees_are_checked_and_the_error_names_the_field(
    w: World, change: dict[str, object], field: str
) -> None:
    b = setup(w)
    e = err(w, InvalidError, T, "CreateLoadBalancer", vip_network_id=b["net"], **tree(**change))
    assert e.field == field


def lb_status(w: World, lb: str) -> tuple[str, int]:
    agg = w.get(T, "loadbalancer", lb)
    return agg.provisioning_status, agg.generation


def report(w: World, lb: str, generation: int, status: str = "ACTIVE", host: str = "h1") -> None:
    w.cmd("_host", "ReportProvisioning", tenant=T, loadbalancer_id=lb, host=host,
          generation=generation, status=status, reason="boom" if status == "ERROR" else "")


def test_changes_while_pending_are_queued_as_generations_never_refused(w: World) -> None:
    b = setup(w)
    w.cmd("_host", "RegisterHost", host="h1", providers=["haproxy"])
    lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], **tree())
    assert lb_status(w, lb) == ("PENDING_CREATE", 1)
    pool = w.get(T, "loadbalancer", lb).listeners
    assert pool
    w.cmd(T, "UpdateLoadBalancer", id=lb, description="changed while pending")
    assert lb_status(w, lb) == ("PENDING_CREATE", 2)
    report(w, lb, 1)  # the agent converged the first generation: the second is queued
    assert lb_status(w, lb) == ("PENDING_CREATE", 2)
    report(w, lb, 2)
    assert lb_status(w, lb) == ("ACTIVE", 2)
    w.cmd(T, "UpdateLoadBalancer", id=lb, admin_state_up=False)
    assert lb_status(w, lb) == ("PENDING_UPDATE", 3)
    report(w, lb, 3, "ERROR")
    assert lb_status(w, lb) == ("ERROR", 3)
    assert w.get(T, "loadbalancer", lb).error == "boom"


def test_delete_works_from_any_state_and_ends_deleted(w: World) -> None:
    b = setup(w)
    w.cmd("_host", "RegisterHost", host="h1", providers=["haproxy"])
    lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], **tree())
    report(w, lb, 1, "ERROR")
    w.cmd(T, "DeleteLoadBalancer", id=lb)
    assert lb_status(w, lb)[0] == "PENDING_DELETE"
    err(w, NotFoundError, T, "CreatePool", loadbalancer_id=lb, pool={"name": "p2", "protocol": "TCP"})
    report(w, lb, 2, "DELETED")
    agg = w.get(T, "loadbalancer", lb)
    assert (agg.provisioning_status, agg.deleted) == ("DELETED", True)
    net = w.get(T, "network", b["net"])
    assert agg.vip_address not in net.allocations


def test_a_load_balancer_never_placed_is_deleted_at_once(w: World) -> None:
    b = setup(w)
    lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], **tree())  # no host: waiting
    w.cmd(T, "DeleteLoadBalancer", id=lb)
    assert w.last[-0:] and "LoadBalancerDeleted" in w.last
    assert w.get(T, "loadbalancer", lb).provisioning_status == "DELETED"


def test_a_pending_that_outlives_its_deadline_becomes_error_by_an_event(w: World) -> None:
    b = setup(w)
    lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], **tree())
    w.cmd(T, "ExpirePending", id=lb, generation=1)
    assert "LoadBalancerProvisioningTimedOut" in w.last
    assert lb_status(w, lb) == ("ERROR", 1)
    w.cmd(T, "ExpirePending", id=lb, generation=1)  # idempotent: not pending any more
    assert w.last == []


def test_members_batch_replace_keeps_ids_of_members_that_stay(w: World) -> None:
    b = setup(w)
    lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], **tree())
    pool = next(iter(w.get(T, "loadbalancer", lb).pools.values()))
    kept = pool.members[0].id
    w.cmd(T, "ReplaceMembers", loadbalancer_id=lb, pool_id=pool.id, members=[
        {"address": "10.1.0.10", "protocol_port": 80}, {"address": "10.1.0.11", "protocol_port": 80}])
    members = w.get(T, "loadbalancer", lb).pools[pool.id].members
    assert members[0].id == kept and len(members) == 2


def test_a_pool_in_use_by_a_listener_cannot_be_deleted(w: World) -> None:
    b = setup(w)
    lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], **tree())
    pool = next(iter(w.get(T, "loadbalancer", lb).pools))
    err(w, InUseError, T, "DeletePool", loadbalancer_id=lb, id=pool)


def test_operating_status_is_recorded_on_transitions_only(w: World) -> None:
    b = setup(w)
    w.cmd("_host", "RegisterHost", host="h1", providers=["haproxy"])
    lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], **tree())
    member = next(iter(w.get(T, "loadbalancer", lb).pools.values())).members[0].id
    w.cmd("_host", "ReportOperatingStatus", tenant=T, loadbalancer_id=lb, host="h1",
          loadbalancer="ONLINE", members={member: "ONLINE"})
    assert w.last == ["LoadBalancerOperatingStatusChanged"]
    w.cmd("_host", "ReportOperatingStatus", tenant=T, loadbalancer_id=lb, host="h1",
          loadbalancer="ONLINE", members={member: "ONLINE"})
    assert w.last == []
    w.cmd("_host", "ReportOperatingStatus", tenant=T, loadbalancer_id=lb, host="h1",
          members={member: "ERROR"})
    assert w.get(T, "loadbalancer", lb).statuses[member] == "ERROR"
    # a host reports only about what the log places on it
    err(w, InvalidError, "_host", "ReportOperatingStatus", tenant=T, loadbalancer_id=lb,
        host="h2", members={member: "ONLINE"})


# -- firewall, NAT, tap, chains ---------------------------------------------------------------


def test_firewall_rules_keep_their_order_through_insert_move_remove(w: World) -> None:
    b = setup(w)
    fw = w.cmd(T, "CreateFirewall", name="fw", router_id=b["router"], rules=[
        {"action": "allow", "description": "a"}, {"action": "deny", "description": "b"}])
    a, bb = (r.id for r in w.get(T, "firewall", fw).rules)
    c = w.cmd(T, "InsertFirewallRule", id=fw, rule={"action": "reject", "description": "c"}, before=bb)
    order = lambda: [r.description for r in w.get(T, "firewall", fw).rules]  # noqa: E731
    assert order() == ["a", "c", "b"]
    w.cmd(T, "MoveFirewallRule", id=fw, rule_id=a, after=bb)
    assert order() == ["c", "b", "a"]
    w.cmd(T, "RemoveFirewallRule", id=fw, rule_id=c)
    assert order() == ["b", "a"]
    err(w, InvalidError, T, "MoveFirewallRule", id=fw, rule_id=a, before=a)


def test_a_floating_firewall_gets_two_ports_for_bump_in_the_wire(w: World) -> None:
    b = setup(w)
    err(w, InvalidError, T, "CreateFirewall", name="fw")  # floating needs a network
    fw = w.get(T, "firewall", w.cmd(T, "CreateFirewall", name="fw", network_id=b["net"]))
    assert fw.port_count == 2 and fw.insertion.mode == "floating"


def test_nat_needs_a_gateway_and_internal_addresses_on_attached_networks(w: World) -> None:
    b = setup(w)
    bare = w.cmd(T, "CreateRouter", name="bare")
    err(w, InvalidError, T, "CreateNat", name="n", router_id=bare)
    e = err(w, InvalidError, T, "CreateNat", name="n", router_id=b["router"], port_forwards=[
        {"protocol": "tcp", "external_port": 80, "internal_address": "172.16.0.1", "internal_port": 80}])
    assert e.field == "$.port_forwards[0].internal_address"
    nat = w.cmd(T, "CreateNat", name="n", router_id=b["router"], port_forwards=[
        {"protocol": "tcp", "external_port": 80, "internal_address": "10.1.0.5", "internal_port": 80}])
    err(w, InvalidError, T, "AddPortForward", id=nat, forward={
        "protocol": "tcp", "external_port": 80, "internal_address": "10.1.0.6", "internal_port": 80})


def test_chain_hops_must_suit_kind_and_port_count_and_pin_their_services(w: World) -> None:
    b = setup(w)
    lb = w.cmd(T, "CreateLoadBalancer", name="lb", vip_network_id=b["net"])
    e = err(w, InvalidError, T, "CreateServiceChain", name="c", classifier={}, router_id=b["router"], hops=[
        {"service_id": lb, "kind": "loadbalancer", "insertion": "bump_in_the_wire"}])
    assert e.field == "$.hops[0].insertion"
    fw = w.cmd(T, "CreateFirewall", name="fw", network_id=b["net"])
    e = err(w, NotFoundError, T, "CreateServiceChain", name="c", classifier={}, router_id=b["router"], hops=[
        {"service_id": fw, "kind": "loadbalancer", "insertion": "l3"}])
    assert e.field == "$.hops[0].service_id"
    chain = w.cmd(T, "CreateServiceChain", name="c", classifier={"protocol": "tcp"}, router_id=b["router"], hops=[
        {"service_id": fw, "kind": "firewall", "insertion": "bump_in_the_wire"},
        {"service_id": lb, "kind": "loadbalancer", "insertion": "l3"}])
    err(w, InUseError, T, "DeleteFirewall", id=fw)
    w.cmd(T, "DeleteServiceChain", id=chain)
    w.cmd(T, "DeleteFirewall", id=fw)


def hop(fw: str, insertion: str = "bump_in_the_wire") -> dict[str, str]:
    return {"service_id": fw, "kind": "firewall", "insertion": insertion}


def test_a_chain_names_its_router_priority_and_symmetry_and_pins_the_router(w: World) -> None:
    b = setup(w)
    fw = w.cmd(T, "CreateFirewall", name="fw", network_id=b["net"])
    e = err(w, NotFoundError, T, "CreateServiceChain", name="c", classifier={}, router_id=b["net"], hops=[hop(fw)])
    assert e.field == "$.router_id"
    e = err(w, NotFoundError, "globex", "CreateServiceChain", name="c", classifier={}, router_id=b["router"],
            hops=[hop(fw)])
    assert e.field == "$.router_id"
    chain = w.cmd(T, "CreateServiceChain", name="c", classifier={"protocol": "tcp"}, router_id=b["router"],
                  priority=7, symmetric=True, hops=[hop(fw)])
    got = w.get(T, "chain", chain)
    assert (got.router_id, got.priority, got.symmetric) == (b["router"], 7, True)
    assert w.get(T, "router", b["router"]).services == [got.id]
    w.cmd(T, "RemoveRouterInterface", id=b["router"], network_id=b["net"])
    w.cmd(T, "ClearRouterGateway", id=b["router"])
    assert "chain" in err(w, InUseError, T, "DeleteRouter", id=b["router"]).message
    w.cmd(T, "DeleteServiceChain", id=chain)
    assert w.get(T, "router", b["router"]).services == []
    w.cmd(T, "DeleteRouter", id=b["router"])


def test_overlapping_chains_on_one_router_need_different_priorities(w: World) -> None:
    b = setup(w)
    fws = [w.cmd(T, "CreateFirewall", name=f"fw{i}", network_id=b["net"]) for i in range(4)]
    web = {"protocol": "tcp", "destination_cidr": "10.1.0.0/24", "destination_port": "80-443"}
    w.cmd(T, "CreateServiceChain", name="a", classifier=web, router_id=b["router"], hops=[hop(fws[0])])
    events = len(w.app.recorder.select_notifications(0, 10_000))  # type: ignore[attr-defined]
    e = err(w, InvalidError, T, "CreateServiceChain", name="b", router_id=b["router"], hops=[hop(fws[1])],
            classifier={"protocol": "any", "destination_cidr": "10.1.0.128/25", "destination_port": "443"})
    assert e.field == "$.priority"
    assert len(w.app.recorder.select_notifications(0, 10_000)) == events  # type: ignore[attr-defined]
    assert w.get(T, "firewall", fws[1]).chains == []
    w.cmd(T, "CreateServiceChain", name="b", router_id=b["router"], hops=[hop(fws[1])], priority=1,
          classifier={"protocol": "any", "destination_cidr": "10.1.0.128/25", "destination_port": "443"})
    w.cmd(T, "CreateServiceChain", name="c", classifier={"protocol": "udp"}, router_id=b["router"],
          hops=[hop(fws[2])])  # udp does not meet tcp
    other = w.cmd(T, "CreateRouter", name="other")  # another router: no tie
    w.cmd(T, "CreateServiceChain", name="d", classifier=web, router_id=other, hops=[hop(fws[3])])


def test_hops_sit_on_the_path_and_in_one_chain(w: World) -> None:
    b = setup(w)
    routed = w.cmd(T, "CreateFirewall", name="r", router_id=b["router"])
    detour = w.cmd(T, "CreateFirewall", name="o", router_id=b["router"], network_id=b["net"], out_of_path=True)
    fw = w.cmd(T, "CreateFirewall", name="fw", network_id=b["net"])
    for bad, insertion in ((routed, "l3"), (detour, "l3")):
        e = err(w, InvalidError, T, "CreateServiceChain", name="c", classifier={}, router_id=b["router"],
                hops=[hop(fw), hop(bad, insertion)])
        assert e.field == "$.hops[1].service_id"
    w.cmd(T, "CreateServiceChain", name="c", classifier={"protocol": "tcp"}, router_id=b["router"], hops=[hop(fw)])
    e = err(w, InUseError, T, "CreateServiceChain", name="c2", classifier={"protocol": "udp"},
            router_id=b["router"], hops=[hop(fw)])
    assert e.field == "$.hops[0].service_id"


def test_chain_update_replaces_hops_and_classifier_and_rechecks_the_rules(w: World) -> None:
    b = setup(w)
    f1, f2, f3 = (w.cmd(T, "CreateFirewall", name=f"fw{i}", network_id=b["net"]) for i in range(3))
    routed = w.cmd(T, "CreateFirewall", name="r", router_id=b["router"])
    chain = w.cmd(T, "CreateServiceChain", name="c", classifier={"protocol": "tcp"}, router_id=b["router"],
                  hops=[hop(f1), hop(f2)])
    other = w.cmd(T, "CreateServiceChain", name="o", classifier={"protocol": "udp"}, router_id=b["router"],
                  hops=[hop(f3)])
    w.cmd(T, "UpdateServiceChain", id=chain, hops=[hop(f2), hop(f1)])
    assert w.last == ["ServiceChainUpdated"]  # the same services, in another order
    w.cmd(T, "UpdateServiceChain", id=chain, hops=[hop(f2), hop(f1)], name="c", priority=0)
    assert w.last == []  # nothing changed: nothing emitted
    e = err(w, InUseError, T, "UpdateServiceChain", id=chain, hops=[hop(f3)])
    assert e.field == "$.hops[0].service_id"
    e = err(w, InvalidError, T, "UpdateServiceChain", id=chain, hops=[hop(routed, "l3")])
    assert e.field == "$.hops[0].service_id"
    e = err(w, InvalidError, T, "UpdateServiceChain", id=chain, classifier={"protocol": "udp"})
    assert e.field == "$.priority"  # would tie with the other chain
    assert w.get(T, "chain", chain).classifier.protocol == "tcp"
    w.cmd(T, "UpdateServiceChain", id=chain, classifier={"protocol": "udp"}, priority=5, symmetric=True)
    got = w.get(T, "chain", chain)
    assert (got.classifier.protocol, got.priority, got.symmetric) == ("udp", 5, True)
    w.cmd(T, "DeleteServiceChain", id=other)
    w.cmd(T, "UpdateServiceChain", id=chain, hops=[hop(f2), hop(f3)])
    assert sorted(w.last) == ["ServiceChainAttached", "ServiceChainDetached", "ServiceChainUpdated"]
    assert [h.service_id for h in w.get(T, "chain", chain).hops] == [f2, f3]
    assert [w.get(T, "firewall", f).chains for f in (f1, f2, f3)] == [[], [got.id], [got.id]]
    w.cmd(T, "DeleteFirewall", id=f1)
    err(w, InUseError, T, "DeleteFirewall", id=f3)
    w.cmd(T, "UpdateServiceChain", id=chain, priority=0)  # alone on its router now


def test_taps_need_two_different_ports_of_the_tenant(w: World) -> None:
    b = setup(w)
    p = w.cmd(T, "CreatePort", network_id=b["net"])
    err(w, InvalidError, T, "CreateTap", name="t", port_id=p, monitor_port_id=p)
    err(w, NotFoundError, "globex", "CreateTap", name="t", port_id=p,
        monitor_port_id=w.cmd(T, "CreatePort", network_id=b["net"]))


# -- scheduler --------------------------------------------------------------------------------


def test_scheduler_uses_live_hosts_offering_the_provider_least_loaded_first(w: World) -> None:
    b = setup(w)
    w.cmd("_host", "RegisterHost", host="a", providers=["haproxy"])
    w.cmd("_host", "RegisterHost", host="b", providers=["haproxy", "nftables"])
    w.cmd("_host", "RegisterHost", host="c", providers=["tc-mirror"])
    hosts = [w.get(T, "loadbalancer", w.cmd(T, "CreateLoadBalancer", name=f"l{i}",
                                            vip_network_id=b["net"])).host for i in range(2)]
    assert hosts == ["a", "b"]
    fw = w.get(T, "firewall", w.cmd(T, "CreateFirewall", name="f", network_id=b["net"]))
    assert fw.host == "b"  # the only one offering nftables
    w.cmd("_admin", "DeclareHostLost", host="b")
    assert w.get(T, "firewall", fw.id.rsplit(".", 1)[1]).host is None  # waits: no host offers it
    assert all(w.get(T, "loadbalancer", x.rsplit(".", 1)[1]).host == "a"
               for x in w.get("_admin", "hosts", "00000000-0000-0000-0000-000000000000").placements
               if ".loadbalancer." in x)
