"""Firewalls and NAT routed on a router, the pure parts: which services a router carries, the
tables of its namespace (`router_spec` with its firewalls and NATs), the plan over them, and
the agent's fold of firewall and NAT events. No namespaces here (the dataplane case is
tests/dataplane/test_router_services_e2e.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from splice.agents.drivers.nftables import plan as nft
from splice.agents.drivers.nftables.conntrack import FirewallGuard, Flow, NatGuard
from splice.agents.drivers.router.model import (
    LEG_SYSCTLS,
    NAMESPACE_SYSCTLS,
    RouterSpec,
    router_spec,
)
from splice.agents.drivers.router.plan import LinkSeen, NamespaceSeen, Observed, Tables, plan
from splice.agents.drivers.router.routed import routed_on
from splice.events import advanced as adv
from splice.events import network as ev
from splice.events.advanced import FirewallRule, PortForward
from splice.events.advanced_fold import FirewallState, NatState
from splice.events.router_fold import ROUTER_PROVIDER, RouterState, fold_router
from splice.events.wire import InsertionState

pytestmark = pytest.mark.routed

T, P = "acme", "spl-"
R = "8bbc5ee2-3ca3-408c-aab7-1b0bfd4464db"
R_OTHER = "77777777-0000-4000-8000-000000000007"
FW1, FW2 = "f1f1f1f1-0000-4000-8000-000000000001", "f2f2f2f2-0000-4000-8000-000000000002"
NAT1, NAT2 = "a1a1a1a1-0000-4000-8000-000000000001", "a2a2a2a2-0000-4000-8000-000000000002"
NA, NX = "11111111-0000-4000-8000-000000000001", "33333333-0000-4000-8000-000000000003"
NETS = {NA: ("10.1.0.0/24", "10.1.0.1"), NX: ("192.0.2.0/24", "192.0.2.1")}


def meta() -> dict[str, Any]:
    return {"timestamp": datetime(2024, 1, 1, tzinfo=UTC), "actor": "t", "command_id": "c",
            "correlation_id": "c"}


def routed(router: str = R, mode: str = "routed", provider: str = "nftables") -> InsertionState:
    return InsertionState(mode=mode, service_type_id="st", provider=provider,  # type: ignore[arg-type]
                          router_id=router)


def rule(n: int, action: str, port: str | None = None) -> FirewallRule:
    return FirewallRule(id=str(uuid.UUID(int=n)), action=action,  # type: ignore[arg-type]
                        protocol="tcp" if port else "any", destination_port=port)


def fw(*rules: FirewallRule, insertion: InsertionState | None = None) -> FirewallState:
    return FirewallState(name="fw", rules=list(rules), default_action="deny",
                         insertion=insertion or routed())


def forward(n: int, ext: int, addr: str, port: int) -> PortForward:
    return PortForward(id=str(uuid.UUID(int=100 + n)), protocol="tcp", external_port=ext,
                       internal_address=addr, internal_port=port)


def nat(*forwards: PortForward, insertion: InsertionState | None = None) -> NatState:
    return NatState(name="pf", insertion=insertion or routed(), forwards=list(forwards))


def router(*, gateway: bool = True, snat: bool = True) -> RouterState:
    events: list[Any] = [ev.RouterCreated(**meta(), name="r", service_type_id="st"),
                         adv.ServiceScheduled(**meta(), host="h"),
                         ev.RouterInterfaceAdded(**meta(), network_id=NA, port_id="p",
                                                 ip_address="10.1.0.1")]
    if gateway:
        events.append(ev.RouterGatewaySet(**meta(), network_id=NX, port_id="g",
                                          ip_address="192.0.2.7", enable_snat=snat))
    return fold_router(events)


def spec(firewalls: dict[str, FirewallState] | None = None, nats: dict[str, NatState] | None = None,
         **kw: Any) -> RouterSpec:
    fws, ns = routed_on(f"{T}.router.{R}", {f"{T}.firewall.{k}": v for k, v in (firewalls or {}).items()},
                        {f"{T}.nat.{k}": v for k, v in (nats or {}).items()})
    return router_spec(R, router(**kw), NETS, P, firewalls=fws, nats=ns)


def converged(s: RouterSpec, foreign: dict[nft.TableKey, nft.ObservedTable] | None = None) -> Observed:
    links = {leg.ns_ifname: LinkSeen(True, frozenset({leg.address}), dict(LEG_SYSCTLS))
             for leg in s.legs}
    tables = {d.key: nft.ObservedTable(*d.key, d.ruleset.canonical()) for d in s.tables}
    ports = {leg.bridge: 1 for leg in s.legs}
    return Observed(frozenset(ports), ports, {leg.host_ifname: leg.bridge for leg in s.legs},
                    {s.namespace: NamespaceSeen(links, s.default_route, dict(NAMESPACE_SYSCTLS),
                                                {**tables, **(foreign or {})})})


def table_ops(ops: list[Any]) -> list[Any]:
    (t,) = [o for o in ops if isinstance(o, Tables)]
    return list(t.ops)


# --------------------------------------------------------------------------- which services


def test_a_router_carries_only_the_live_nftables_services_routed_on_it() -> None:
    fws = {f"{T}.firewall.{FW2}": fw(), f"{T}.firewall.{FW1}": fw(),
           f"{T}.firewall.{uuid.UUID(int=3)}": fw(insertion=routed(R_OTHER)),
           f"{T}.firewall.{uuid.UUID(int=4)}": fw(insertion=routed(mode="out_of_path")),
           f"{T}.firewall.{uuid.UUID(int=5)}": fw(insertion=routed(provider="vendor-x")),
           f"{T}.firewall.{uuid.UUID(int=6)}": FirewallState(
               insertion=InsertionState(mode="floating", service_type_id="st", provider="nftables")),
           f"other.firewall.{uuid.UUID(int=7)}": fw(),
           f"{T}.firewall.{uuid.UUID(int=8)}": FirewallState(insertion=routed(), deleted=True)}
    nats = {f"{T}.nat.{NAT2}": nat(forward(2, 2222, "10.1.0.9", 22)),
            f"{T}.nat.{NAT1}": nat(forward(1, 8080, "10.1.0.5", 80)),
            f"other.nat.{NAT1}": nat(forward(3, 9999, "10.1.0.5", 80))}
    got_fws, got_nats = routed_on(f"{T}.router.{R}", fws, nats)
    assert [fid for fid, _ in got_fws] == [FW1, FW2]
    assert [n.forwards[0].external_port for n in got_nats] == [8080, 2222]


# --------------------------------------------------------------------------- the tables


def test_the_nat_table_holds_every_routed_forward_and_masquerades() -> None:
    s = spec(nats={NAT1: nat(forward(1, 8080, "10.1.0.5", 80)),
                   NAT2: nat(forward(2, 8080, "10.1.0.6", 80), forward(3, 2222, "10.1.0.9", 22))})
    assert s.nat is not None and s.nat.name == "spl-nat-8bbc5ee2"
    dnats = [r.expr[-1] for r in s.nat.rules if r.chain == "prerouting"]
    assert dnats == [{"dnat": {"addr": "10.1.0.5", "port": 80}},  # the first 8080 wins
                     {"dnat": {"addr": "10.1.0.9", "port": 22}}]
    assert [r.expr[-1] for r in s.nat.rules if r.chain == "postrouting"] == [{"masquerade": None}]
    assert s.nat_guard == NatGuard.of([forward(1, 8080, "10.1.0.5", 80),
                                       forward(3, 2222, "10.1.0.9", 22)], ["192.0.2.7"], True)


def test_forwards_without_snat_still_make_a_nat_table_and_need_a_gateway() -> None:
    s = spec(nats={NAT1: nat(forward(1, 8080, "10.1.0.5", 80))}, snat=False)
    assert s.nat is not None and [r.chain for r in s.nat.rules] == ["prerouting"]
    assert spec(nats={NAT1: nat()}, snat=False).nat is None
    assert spec(nats={NAT1: nat(forward(1, 8080, "10.1.0.5", 80))}, gateway=False).tables == []


def test_one_firewall_table_per_routed_firewall_letting_port_forwards_through() -> None:
    s = spec({FW1: fw(rule(1, "deny", "80"), rule(2, "allow", "80")), FW2: fw()})
    assert [d.ruleset.name for d in s.firewalls] == ["spl-fw-f1f1f1f1", "spl-fw-f2f2f2f2"]
    assert [d.owner for d in s.firewalls] == [FW1, FW2]
    first = s.firewalls[0]
    chain = first.ruleset.chains[0]
    assert (chain.hook, chain.policy) == ("forward", "drop")
    dnat_accept = ({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                   {"accept": None})
    assert first.ruleset.rules[2].expr == dnat_accept  # before the tenant's rules
    assert [r.expr[-1] for r in first.ruleset.rules[3:]] == [{"drop": None}, {"accept": None}]
    assert isinstance(first.guard, FirewallGuard) and first.guard.accept_dnat
    forwarded = Flow("tcp", 6, "192.0.2.50", "192.0.2.7", 40000, 8080, reply_src="10.1.0.5",
                     reply_sport=80)
    assert not first.guard.cuts(forwarded, frozenset())
    assert first.guard.cuts(Flow("tcp", 6, "192.0.2.50", "10.1.0.5", 40000, 80), frozenset())


def test_a_firewall_that_cannot_be_rendered_fails_closed() -> None:
    bad = FirewallRule(id=str(uuid.UUID(int=1)), action="allow", protocol="icmp",
                       destination_port="80")  # ports with icmp: never from the command side
    (d,) = spec({FW1: fw(bad, insertion=routed())}).firewalls
    assert d.ruleset.chains[0].policy == "drop" and len(d.ruleset.rules) == 2


# --------------------------------------------------------------------------- the plan


def test_nothing_to_do_once_the_tables_are_there() -> None:
    s = spec({FW1: fw(rule(1, "allow", "80"))}, {NAT1: nat(forward(1, 8080, "10.1.0.5", 80))})
    assert plan({R: s}, converged(s), prefix=P) == []


def test_a_moved_rule_replaces_only_its_firewall_table_and_cuts_by_its_guard() -> None:
    before = spec({FW1: fw(rule(1, "deny", "80"), rule(2, "allow", "80")), FW2: fw()})
    after = spec({FW1: fw(rule(2, "allow", "80"), rule(1, "deny", "80")), FW2: fw()})
    (op,) = table_ops(plan({R: after}, converged(before), prefix=P))
    assert isinstance(op, nft.ReplaceTable) and op.ruleset.name == "spl-fw-f1f1f1f1"
    assert op.guard == after.firewalls[0].guard and not op.created


def test_a_deleted_firewall_or_nat_takes_only_its_own_table_or_forwards() -> None:
    foreign = {("inet", "mine"): nft.ObservedTable("inet", "mine", {}),
               ("ip", "spl-l4-12345678"): nft.ObservedTable("ip", "spl-l4-12345678", {})}
    full = spec({FW1: fw(), FW2: fw()}, {NAT1: nat(forward(1, 8080, "10.1.0.5", 80))})
    less = spec({FW1: fw()})
    ops = table_ops(plan({R: less}, converged(full, foreign), prefix=P))
    assert [type(o).__name__ for o in ops] == ["ReplaceTable", "DeleteTable"]
    assert ops[0].ruleset.name == "spl-nat-8bbc5ee2" and ops[0].guard == NatGuard.of(
        [], ["192.0.2.7"], True)  # the forward's open flows are cut
    assert ops[1] == nft.DeleteTable("inet", "spl-fw-f2f2f2f2")


def test_a_deleted_table_is_made_again() -> None:
    s = spec({FW1: fw(rule(1, "allow", "80"))})
    seen = converged(s)
    ns = seen.namespaces[s.namespace]
    assert ns is not None
    tables = {k: v for k, v in ns.tables.items() if k[1] != "spl-fw-f1f1f1f1"}
    drifted = Observed(seen.bridges, seen.bridge_ports, seen.legs, {s.namespace: NamespaceSeen(
        ns.links, ns.default_route, ns.sysctls, tables)})
    (op,) = table_ops(plan({R: s}, drifted, prefix=P))
    assert isinstance(op, nft.ReplaceTable) and op.created and op.ruleset.name == "spl-fw-f1f1f1f1"


# --------------------------------------------------------------------------- the agent's fold


async def test_the_agent_folds_firewalls_and_nats_into_its_routers_tables(tmp_path: Any) -> None:
    from splice.agents.runtime import Agent
    from splice.events import subjects
    from splice.events.follow import Delivery

    agent = Agent("nats://unused:4222", "h", tmp_path, providers=[ROUTER_PROVIDER], prefix=P)
    seq = 0

    async def deliver(aggregate: str, ident: str, event: Any) -> None:
        nonlocal seq
        seq += 1
        topic = str(type(event).__struct_config__.tag)
        await agent.on_event(Delivery(seq, subjects.event(T, aggregate, ident, topic), topic,
                                      msgspec.json.encode(event), {}, 0, 0))

    try:
        for n, (cidr, gw) in NETS.items():
            await deliver("network", n, ev.NetworkCreated(**meta(), name="n", cidr=cidr, gateway=gw))
        await deliver("router", R, ev.RouterCreated(**meta(), name="r", service_type_id="st"))
        await deliver("router", R, adv.ServiceScheduled(**meta(), host="h"))
        await deliver("router", R, ev.RouterGatewaySet(**meta(), network_id=NX, port_id="g",
                                                        ip_address="192.0.2.7", enable_snat=True))
        await deliver("firewall", FW1, adv.FirewallCreated(
            **meta(), name="fw", rules=[rule(1, "allow", "80")], default_action="deny",
            insertion=routed(), network_id=None, port_ids=[]))
        await deliver("nat", NAT1, adv.NatCreated(**meta(), name="pf", insertion=routed(),
                                                  port_forwards=[forward(1, 8080, "10.1.0.5", 80)]))
        s = agent.desired_routers()[R]
        assert [d.ruleset.name for d in s.tables] == ["spl-nat-8bbc5ee2", "spl-fw-f1f1f1f1"]
        agent.save_snapshot()
        again = Agent("nats://unused:4222", "h", tmp_path, providers=[ROUTER_PROVIDER], prefix=P)
        assert again.desired_routers() == agent.desired_routers()
        if again.router_driver is not None:
            again.router_driver.close()
        await deliver("firewall", FW1, adv.FirewallRuleRemoved(**meta(), rule_id=str(uuid.UUID(int=1))))
        assert agent.desired_routers()[R].firewalls[0].ruleset.rules[3:] == ()
        await deliver("firewall", FW1, adv.FirewallDeleted(**meta()))
        await deliver("nat", NAT1, adv.NatDeleted(**meta()))
        assert agent.firewalls == {} and agent.nats == {}
        assert [d.ruleset.name for d in agent.desired_routers()[R].tables] == ["spl-nat-8bbc5ee2"]
    finally:
        if agent.router_driver is not None:
            agent.router_driver.close()
