"""Routers on hosts, the pure parts: placement (given events, when a command, then the host),
the one fold, the names, and the router driver's ``plan(desired, observed)`` as table tests.

No namespaces here (the dataplane case is tests/dataplane/test_router_e2e.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from world import World

from splice.agents.drivers.nftables import plan as nft
from splice.agents.drivers.router.model import (
    LEG_SYSCTLS,
    NAMESPACE_SYSCTLS,
    RouterLayout,
    RouterSpec,
    router_spec,
)
from splice.agents.drivers.router.plan import (
    DeleteBridge,
    DeleteDefaultRoute,
    DeleteLeg,
    DeleteNamespace,
    EnsureBridge,
    EnsureLeg,
    EnsureNamespace,
    LinkSeen,
    NamespaceSeen,
    Observed,
    ReportError,
    SetDefaultRoute,
    SetSysctls,
    Tables,
    plan,
)
from splice.events import advanced as adv
from splice.events import network as ev
from splice.events.router_fold import ROUTER_PROVIDER, RouterState, fold_router

pytestmark = pytest.mark.routed

T = "acme"
P = "spl-"
R = "8bbc5ee2-3ca3-408c-aab7-1b0bfd4464db"
R2 = "8bbc5ee2-ffff-408c-aab7-1b0bfd4464db"  # shares R's first 8 hex digits
NA, NB, NX = ("11111111-0000-4000-8000-000000000001", "22222222-0000-4000-8000-000000000002",
              "33333333-0000-4000-8000-000000000003")
NETS = {NA: ("10.1.0.0/24", "10.1.0.1"), NB: ("10.2.0.0/24", "10.2.0.1"),
        NX: ("192.0.2.0/24", "192.0.2.1")}


# --------------------------------------------------------------------------- placement


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    world.cmd("_admin", "CreateServiceType", name="st", providers={"loadbalancer": "haproxy"},
              default=True)
    yield world
    world.close()


def test_a_router_is_placed_on_a_live_host_that_offers_routing(w: World) -> None:
    w.cmd("_host", "RegisterHost", host="lb-only", providers=["haproxy"])
    w.cmd("_host", "RegisterHost", host="r1", providers=["haproxy", ROUTER_PROVIDER])
    router = w.cmd(T, "CreateRouter", name="r")
    assert w.get(T, "router", router).host == "r1"


def test_a_router_waits_for_a_routing_host_and_moves_when_its_host_is_lost(w: World) -> None:
    router = w.cmd(T, "CreateRouter", name="r")
    assert w.get(T, "router", router).host is None
    w.cmd("_host", "RegisterHost", host="r1", providers=[ROUTER_PROVIDER])
    assert w.get(T, "router", router).host == "r1"
    w.cmd("_host", "RegisterHost", host="r2", providers=[ROUTER_PROVIDER])
    w.cmd("_admin", "DeclareHostLost", host="r1")
    assert w.get(T, "router", router).host == "r2"


def test_deleting_a_router_frees_its_placement(w: World) -> None:
    w.cmd("_host", "RegisterHost", host="r1", providers=[ROUTER_PROVIDER])
    router = w.cmd(T, "CreateRouter", name="r")
    w.cmd(T, "DeleteRouter", id=router)
    placements = w.get("_admin", "hosts", "00000000-0000-0000-0000-000000000000").placements
    assert not any(".router." in x for x in placements)


def test_the_aggregate_reads_the_folds_state(w: World) -> None:
    net = w.cmd(T, "CreateNetwork", name="a", cidr="10.9.0.0/24")
    ext = w.cmd(T, "CreateNetwork", name="x", cidr="192.0.2.0/28")
    router = w.cmd(T, "CreateRouter", name="r")
    w.cmd(T, "AddRouterInterface", id=router, network_id=net)
    w.cmd("_admin", "SetNetworkExternal", tenant=T, id=ext)
    w.cmd(T, "SetRouterGateway", id=router, network_id=ext, enable_snat=False)
    r = w.get(T, "router", router)
    assert isinstance(r.state, RouterState)
    assert r.interfaces[net].ip_address == "10.9.0.1"
    assert r.gateway is not None and r.gateway.ip_address == "192.0.2.2"
    assert not r.gateway.enable_snat


# --------------------------------------------------------------------------- the fold


def meta() -> dict[str, Any]:
    return {"timestamp": datetime.now(UTC), "actor": "t", "command_id": "c", "correlation_id": "c"}


def test_the_fold_follows_interfaces_gateway_host_and_deletion() -> None:
    events = [
        ev.RouterCreated(**meta(), name="r", service_type_id="st"),
        adv.ServiceScheduled(**meta(), host="h1"),
        ev.RouterInterfaceAdded(**meta(), network_id=NA, port_id="pa", ip_address="10.1.0.1"),
        ev.RouterInterfaceAdded(**meta(), network_id=NB, port_id="pb", ip_address="10.2.0.1"),
        ev.RouterGatewaySet(**meta(), network_id=NX, port_id="px", ip_address="192.0.2.9",
                            enable_snat=True),
        ev.RouterInterfaceRemoved(**meta(), network_id=NB, port_id="pb"),
    ]
    s = fold_router(events)
    assert (s.host, sorted(s.interfaces), s.gateway and s.gateway.ip_address) == (
        "h1", [NA], "192.0.2.9")
    s = fold_router([*events, ev.RouterGatewayCleared(**meta(), port_id="px"),
                     adv.ServiceScheduled(**meta(), host=""), ev.RouterDeleted(**meta())])
    assert (s.gateway, s.host, s.deleted) == (None, None, True)


# --------------------------------------------------------------------------- specs and names


def state(*interfaces: str, gateway: bool = False, snat: bool = True) -> RouterState:
    events: list[Any] = [ev.RouterCreated(**meta(), name="r", service_type_id="st"),
                         adv.ServiceScheduled(**meta(), host="h")]
    events += [ev.RouterInterfaceAdded(**meta(), network_id=n, port_id=f"p{n[:2]}",
                                       ip_address=NETS[n][1]) for n in interfaces]
    if gateway:
        events.append(ev.RouterGatewaySet(**meta(), network_id=NX, port_id="g",
                                          ip_address="192.0.2.7", enable_snat=snat))
    return fold_router(events)


def spec(*interfaces: str, gateway: bool = False, snat: bool = True, rid: str = R) -> RouterSpec:
    return router_spec(rid, state(*interfaces, gateway=gateway, snat=snat), NETS, P)


def test_names_carry_the_prefix_and_fit_in_an_interface_name() -> None:
    s = spec(NA, NB, gateway=True)
    assert s.namespace == "spl-r-8bbc5ee2"
    assert [leg.ns_ifname for leg in s.legs] == ["qr-11111111", "qr-22222222", "qg-33333333"]
    assert [leg.bridge for leg in s.legs] == ["spl-br-11111111", "spl-br-22222222", "spl-br-33333333"]
    assert all(leg.host_ifname.startswith("spl-q") and len(leg.host_ifname) <= 15 for leg in s.legs)
    assert len({leg.host_ifname for leg in s.legs}) == 3
    longest = RouterLayout("abcde-").host_leg(R, NA)
    assert len(longest) == 15 and RouterLayout("abcde-").host_leg(R2, NA) != longest


def test_an_interface_holds_the_gateway_and_the_gateway_leg_routes_and_masquerades() -> None:
    s = spec(NA, gateway=True)
    assert [leg.address for leg in s.legs] == ["10.1.0.1/24", "192.0.2.7/24"]
    assert s.default_route == ("192.0.2.1", "qg-33333333")
    assert s.nat is not None and s.nat.name == "spl-nat-8bbc5ee2"
    assert [r.expr for r in s.nat.rules] == [(
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "qg-33333333"}},
        {"masquerade": None})]
    assert spec(NA, gateway=True, snat=False).nat is None
    assert spec(NA).default_route is None


def test_a_network_not_seen_yet_gets_no_leg() -> None:
    s = router_spec(R, state(NA, NB), {NA: NETS[NA]}, P)
    assert [leg.ns_ifname for leg in s.legs] == ["qr-11111111"]


# --------------------------------------------------------------------------- plan: tables


def converged(*specs: RouterSpec, extra_ports: int = 0) -> Observed:
    """What the host holds once `specs` are converged (each bridge: the legs + extra_ports)."""
    ports: dict[str, int] = {}
    legs: dict[str, str | None] = {}
    spaces: dict[str, NamespaceSeen | None] = {}
    for s in specs:
        links = {}
        for leg in s.legs:
            legs[leg.host_ifname] = leg.bridge
            ports[leg.bridge] = ports.get(leg.bridge, extra_ports) + 1
            links[leg.ns_ifname] = LinkSeen(True, frozenset({leg.address}), dict(LEG_SYSCTLS))
        tables = {}
        if s.nat is not None:
            tables[s.nat.key] = nft.ObservedTable(*s.nat.key, s.nat.canonical())
        spaces[s.namespace] = NamespaceSeen(links, s.default_route, dict(NAMESPACE_SYSCTLS), tables)
    return Observed(frozenset(ports), ports, legs, spaces)


def kinds(ops: list[Any]) -> list[str]:
    return [type(o).__name__ for o in ops]


def with_ns(o: Observed, ns: str, **changes: Any) -> Observed:
    seen = o.namespaces[ns]
    assert seen is not None
    fields = {"links": seen.links, "default_route": seen.default_route,
              "sysctls": seen.sysctls, "tables": seen.tables, **changes}
    return Observed(o.bridges, o.bridge_ports, o.legs, {**o.namespaces, ns: NamespaceSeen(**fields)})


def test_nothing_to_do_when_converged() -> None:
    s = spec(NA, NB, gateway=True)
    assert plan({R: s}, converged(s), prefix=P) == []
    assert plan({}, Observed(), prefix=P) == []


def test_a_new_router_is_built_in_order_from_bridges_to_its_nat_table() -> None:
    s = spec(NA, NB, gateway=True)
    ops = plan({R: s}, Observed(), prefix=P)
    assert kinds(ops) == ["EnsureBridge"] * 3 + ["EnsureNamespace", "SetSysctls", "EnsureLeg",
                                                 "EnsureLeg", "EnsureLeg", "SetDefaultRoute",
                                                 "Tables"]
    assert ops[4] == SetSysctls(s.namespace, NAMESPACE_SYSCTLS)
    assert ops[-2] == SetDefaultRoute(s.namespace, "192.0.2.1", "qg-33333333")
    table = ops[-1]
    assert isinstance(table, Tables) and kinds(list(table.ops)) == ["ReplaceTable"]


@pytest.mark.parametrize("drift, expected", [
    ({"sysctls": {**dict(NAMESPACE_SYSCTLS), "net/ipv4/ip_forward": "0"}},
     [SetSysctls("spl-r-8bbc5ee2", (("net/ipv4/ip_forward", "1"),))]),
    ({"default_route": None}, [SetDefaultRoute("spl-r-8bbc5ee2", "192.0.2.1", "qg-33333333")]),
    ({"tables": {}}, ["Tables"]),
])
def test_drift_in_a_namespace_is_repaired(drift: dict[str, Any], expected: list[Any]) -> None:
    s = spec(NA, gateway=True)
    ops = plan({R: s}, with_ns(converged(s), s.namespace, **drift), prefix=P)
    assert [o if not isinstance(o, Tables) else "Tables" for o in ops] == expected


@pytest.mark.parametrize("link", [
    None,  # the namespace end is gone
    LinkSeen(False, frozenset({"10.1.0.1/24"}), dict(LEG_SYSCTLS)),  # down
    LinkSeen(True, frozenset(), dict(LEG_SYSCTLS)),  # address removed
    LinkSeen(True, frozenset({"10.1.0.1/24", "10.1.0.99/24"}), dict(LEG_SYSCTLS)),  # extra
    LinkSeen(True, frozenset({"10.1.0.1/24"}), {"rp_filter": "1", "send_redirects": "1"}),
])
def test_a_leg_that_differs_in_any_way_is_ensured_again(link: LinkSeen | None) -> None:
    s = spec(NA, NB)
    o = converged(s)
    seen = o.namespaces[s.namespace]
    assert seen is not None
    links = {k: v for k, v in seen.links.items() if k != "qr-11111111"}
    if link is not None:
        links["qr-11111111"] = link
    assert plan({R: s}, with_ns(o, s.namespace, links=links), prefix=P) == [
        EnsureLeg(s.namespace, s.legs[0])]


def test_a_leg_on_the_wrong_bridge_is_ensured_again() -> None:
    s = spec(NA)
    o = converged(s)
    moved = Observed(o.bridges, o.bridge_ports, {s.legs[0].host_ifname: None}, o.namespaces)
    assert plan({R: s}, moved, prefix=P) == [EnsureLeg(s.namespace, s.legs[0])]


def test_a_missing_namespace_is_rebuilt() -> None:
    s = spec(NA)
    o = converged(s)
    gone = Observed(o.bridges, o.bridge_ports, {}, {})
    assert kinds(plan({R: s}, gone, prefix=P)) == ["EnsureNamespace", "SetSysctls", "EnsureLeg"]


def test_a_removed_interface_deletes_its_leg_and_a_bridge_left_empty() -> None:
    before, after = spec(NA, NB), spec(NA)
    assert plan({R: after}, converged(before), prefix=P) == [
        DeleteLeg(before.legs[1].host_ifname), DeleteBridge("spl-br-22222222")]


def test_a_bridge_with_other_ports_stays() -> None:
    before, after = spec(NA, NB), spec(NA)
    assert plan({R: after}, converged(before, extra_ports=1), prefix=P) == [
        DeleteLeg(before.legs[1].host_ifname)]


def test_clearing_the_gateway_drops_its_leg_route_and_table() -> None:
    before, after = spec(NA, gateway=True), spec(NA)
    ops = plan({R: after}, converged(before, extra_ports=1), prefix=P)
    assert ops[0] == DeleteDefaultRoute(before.namespace)
    assert isinstance(ops[1], Tables) and ops[1].ops == (nft.DeleteTable("ip", "spl-nat-8bbc5ee2"),)
    assert ops[2:] == [DeleteLeg(before.legs[1].host_ifname)]


def test_a_deleted_router_loses_its_legs_namespace_and_bridges() -> None:
    s = spec(NA, gateway=True)
    assert plan({}, converged(s), prefix=P) == [
        *(DeleteLeg(leg.host_ifname) for leg in sorted(s.legs, key=lambda x: x.host_ifname)),
        DeleteNamespace(s.namespace),
        DeleteBridge("spl-br-11111111"), DeleteBridge("spl-br-33333333")]
    kept = plan({}, converged(s), prefix=P, keep={"spl-br-33333333"})  # another driver's need
    assert [op for op in kept if isinstance(op, DeleteBridge)] == [DeleteBridge("spl-br-11111111")]


def test_a_second_router_with_the_same_short_id_is_refused_not_merged() -> None:
    a, b = spec(NA, rid=R), spec(NB, rid=R2)
    ops = plan({R: a, R2: b}, converged(a), prefix=P)
    assert ops == [ReportError(R2, f"namespace spl-r-8bbc5ee2 already used by router {R}")]


def test_only_what_carries_the_prefix_is_planned() -> None:
    """The observer filters by prefix; a plan never names anything else either."""
    s = spec(NA, gateway=True)
    for op in plan({R: s}, Observed(), prefix=P):
        names = [v for v in vars_of(op) if isinstance(v, str) and not v.startswith(("qr-", "qg-"))]
        assert all(n.startswith(P) or n[0].isdigit() for n in names), op
    assert EnsureBridge("spl-br-11111111") in plan({R: s}, Observed(), prefix=P)
    assert EnsureNamespace("spl-r-8bbc5ee2") in plan({R: s}, Observed(), prefix=P)


def vars_of(op: Any) -> list[Any]:
    out = []
    for name in op.__slots__:
        value = getattr(op, name)
        out += vars_of(value) if hasattr(value, "__slots__") and not isinstance(value, tuple) else [value]
    return out


# --------------------------------------------------------------------------- the agent's fold


async def test_the_agent_serves_only_the_routers_placed_on_its_host(tmp_path: Any) -> None:
    """Router events folded by the agent (`on_event`) → `desired_routers`: this host's only,
    with its tenant's networks; a router moved away or deleted is no longer desired; the
    snapshot keeps the routers."""
    import msgspec

    from splice.agents.runtime import Agent
    from splice.events import subjects
    from splice.events.follow import Delivery

    agent = Agent("nats://unused:4222", "h1", tmp_path, providers=[ROUTER_PROVIDER], prefix=P)
    seq = 0

    async def deliver(tenant: str, aggregate: str, ident: str, event: Any) -> None:
        nonlocal seq
        seq += 1
        topic = str(type(event).__struct_config__.tag)
        await agent.on_event(Delivery(seq, subjects.event(tenant, aggregate, ident, topic), topic,
                                      msgspec.json.encode(event), {}, 0, 0))

    for n, (cidr, gw) in NETS.items():
        await deliver(T, "network", n, ev.NetworkCreated(**meta(), name="n", cidr=cidr, gateway=gw))
    await deliver("other", "network", NB, ev.NetworkCreated(**meta(), name="n", cidr="10.8.0.0/24",
                                                           gateway="10.8.0.1"))
    for rid, host in ((R, "h1"), ("99999999-0000-4000-8000-000000000009", "h2")):
        await deliver(T, "router", rid, ev.RouterCreated(**meta(), name="r", service_type_id="s"))
        await deliver(T, "router", rid, adv.ServiceScheduled(**meta(), host=host))
        await deliver(T, "router", rid, ev.RouterInterfaceAdded(
            **meta(), network_id=NB, port_id="p", ip_address="10.2.0.1"))
    assert list(agent.desired_routers()) == [R]
    assert agent.desired_routers()[R].legs[0].address == "10.2.0.1/24"  # its tenant's network
    agent.save_snapshot()
    again = Agent("nats://unused:4222", "h1", tmp_path, providers=[ROUTER_PROVIDER], prefix=P)
    assert list(again.desired_routers()) == [R] and again.seq == seq
    await deliver(T, "router", R, adv.ServiceScheduled(**meta(), host="h2", previous_host="h1"))
    assert agent.desired_routers() == {}
    await deliver(T, "router", R, ev.RouterDeleted(**meta()))
    assert f"{T}.router.{R}" not in agent.routers
    for a in (agent, again):
        if a.router_driver is not None:
            a.router_driver.close()


def test_a_snapshot_from_before_the_agent_followed_routers_is_replayed(tmp_path: Any) -> None:
    """Its position is past router events it never folded: resuming from it would lose them."""
    from splice.agents.runtime import Agent

    (tmp_path / "agent-h1.json").write_text('{"seq": 42, "lbs": {}, "networks": {}}')
    agent = Agent("nats://unused:4222", "h1", tmp_path, providers=[ROUTER_PROVIDER], prefix=P)
    assert agent.seq == 0
    if agent.router_driver is not None:
        agent.router_driver.close()


def test_a_failed_step_in_a_routers_namespace_is_that_routers() -> None:
    """Every step in a router's namespace names its router, so that its failure marks that
    router ERROR (making the namespace or removing the default route included); a leg's host
    end and a bridge belong to no one router."""
    from splice.agents.drivers.router.driver import _router_of

    ns = "spl-r-8bbc5ee2"
    steps = [EnsureNamespace(ns), SetSysctls(ns, ()), DeleteDefaultRoute(ns),
             SetDefaultRoute(ns, "203.0.113.1", "qg0"), DeleteNamespace(ns),
             Tables(ns, R, ())]
    assert [_router_of(op, {ns: R}) for op in steps] == [R] * len(steps)
    assert {op.key for op in steps} == {f"router:{ns}"}
    assert _router_of(DeleteLeg("spl-qr0"), {ns: R}) is None
    assert _router_of(EnsureBridge("spl-br-1"), {ns: R}) is None
    assert _router_of(ReportError(R2, "clash"), {}) == R2
