"""The steered chain's pure parts: the chain fold, the deterministic allocation of marks,
tables, link-local /30s and names, which chains are refused and why, and the classifier
table rendered as nft JSON."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest

from splice.agents.drivers.chain.model import (
    MARK_BASE,
    REVERSE,
    TABLE_BASE,
    ChainLayout,
    HopSpec,
    chain_specs,
    link,
    mark,
    owns_mark,
    owns_table,
    refusal,
    slot,
    table,
)
from splice.agents.drivers.chain.plan import (
    DeleteClassifier,
    DeleteHop,
    HopSeen,
    HopTables,
    Observed,
    ReportError,
    RouterChains,
    RouterSeen,
    VethSeen,
    hop_sysctls,
    plan,
)
from splice.agents.drivers.chain.render import render_chains
from splice.agents.drivers.nftables.plan import (
    ObservedTable,
    ReplaceTable,
    owns,
)
from splice.agents.drivers.nftables.render import UnsafeValueError, chain_table
from splice.events import advanced as ev
from splice.events.advanced import Classifier, FirewallRule, Hop
from splice.events.advanced_fold import FirewallState
from splice.events.chain_fold import ChainState, fold_chain

pytestmark = pytest.mark.chains

C1 = "11111111-2222-3333-4444-555555555555"
C2 = "99999999-2222-3333-4444-555555555555"
R = "bbbbbbbb-2222-3333-4444-555555555555"
FW = "aaaaaaaa-2222-3333-4444-555555555555"
FW2 = "cccccccc-2222-3333-4444-555555555555"
FW3 = "dddddddd-2222-3333-4444-555555555555"
META = {"timestamp": datetime(2026, 1, 1, tzinfo=UTC), "actor": "a", "command_id": "c",
        "correlation_id": "c"}


def hop(service_id: str = FW, insertion: str = "l3", kind: str = "firewall") -> Hop:
    return Hop(service_id=service_id, kind=kind, insertion=insertion)


def chain(*hops: Hop, priority: int = 0, symmetric: bool = False, **classifier: str) -> ChainState:
    return ChainState(name="c", router_id=R, classifier=Classifier(**classifier),
                      hops=list(hops or [hop()]), priority=priority, symmetric=symmetric)


def test_the_fold_keeps_the_latest_complete_values_and_a_delete():
    created = ev.ServiceChainCreated(
        **META, name="a",
        classifier=Classifier(protocol="tcp"), hops=[hop()], router_id=R, priority=3)
    updated = ev.ServiceChainUpdated(
        **META, name="b",
        classifier=Classifier(protocol="udp"), hops=[hop(FW2), hop()], priority=4, symmetric=True)
    state = fold_chain([created, updated])
    assert (state.name, state.router_id, state.classifier.protocol, state.priority) == ("b", R, "udp", 4)
    assert [h.service_id for h in state.hops] == [FW2, FW] and state.symmetric
    assert state.hops is not updated.hops
    assert fold_chain([created, updated, ev.ServiceChainDeleted(**META)]).deleted


def test_allocation_is_deterministic_and_within_the_documented_ranges():
    for cid in (C1, C2, "t.chain." + C1):
        for i in (0, 15):
            assert owns_mark(mark(cid, i)) and owns_table(table(cid, i))
            net = link(cid, i)
            assert net.prefixlen == 30 and net.subnet_of(ipaddress.IPv4Network("169.254.0.0/16"))
            assert not net.subnet_of(ipaddress.IPv4Network("169.254.169.0/24"))
    assert mark(C1, 1) == mark(C1, 0) + 1 and table(C1, 1) == table(C1, 0) + 1
    assert not owns_mark(MARK_BASE + 2 * REVERSE) and not owns_table(TABLE_BASE - 1)
    assert owns_mark(mark(C1, 15) + REVERSE) and owns_table(table(C1, 15) + REVERSE)
    links = {link(f"{n:08x}-0000-0000-0000-000000000000", i) for n in range(300) for i in range(16)}
    slots = {slot(f"{n:08x}-0000-0000-0000-000000000000") for n in range(300)}
    assert len(links) == 16 * len(slots)  # distinct slots never share an address


def test_names_carry_the_prefix_and_fit_an_interface_name():
    layout = ChainLayout("spl-")
    assert layout.hop_namespace(C1, 10) == "spl-h-11111111a"
    veths = {layout.router_veth(C1, i) for i in range(16)}
    assert len(veths) == 16 and all(v.startswith("spl-c") and len(v) <= 15 for v in veths)
    assert chain_table("spl-", R) == "spl-ch-bbbbbbbb"
    assert not owns("spl-ch-bbbbbbbb", "spl-")  # the nftables driver never deletes it


@pytest.mark.parametrize(("state", "reason"), [
    (chain(), ""),
    (chain(hop(), hop(FW2, "l2")), ""),
    (chain(hop(insertion="tap"), hop(FW2, "bump_in_the_wire")), ""),
    (chain(symmetric=True), ""),
    (ChainState(hops=[hop()]), "the chain names no router"),
    (chain(logical_source_port=C1), ""),
    (chain(hop(insertion="l7")), "hops inserted l7 are not steered"),
    (ChainState(router_id=R, hops=[]), "a chain has 1 to 16 hops"),
])
def test_refusals_name_their_reason(state, reason):
    assert refusal(state) == reason


def test_specs_give_each_l3_hop_its_namespace_link_mark_table_and_firewall():
    fw = FirewallState(rules=[FirewallRule(action="deny", protocol="tcp", destination_port="80",
                                           id="r")], default_action="allow")
    specs, refused = chain_specs({C1: chain(hop(), hop(FW2, kind="nat"), priority=2),
                                  C2: chain(hop(FW3, insertion="tap", kind="tap"))}, {FW: fw}, "spl-")
    assert refused == {C2: f"tap {FW3} is not known on this host yet"}
    spec = specs[C1]
    assert spec.router_id == R and spec.mark == mark(C1, 0)
    first, second = spec.hops
    net = link(C1, 0)
    assert first.router_address == f"{net.network_address + 1}/30"
    assert first.hop_address == f"{net.network_address + 2}/30" and first.via == str(net[2])
    assert (first.mark, first.table, second.mark) == (mark(C1, 0), table(C1, 0), mark(C1, 1))
    assert first.firewall is not None and first.firewall.name == "spl-fw-aaaaaaaa"
    assert first.firewall.family == "inet" and second.firewall is None


def test_two_chains_with_one_slot_collide_and_the_later_is_refused():
    ids = [f"{n:08x}-0000-0000-0000-000000000000" for n in range(2000)]
    by_slot: dict[int, str] = {}
    pair = next((by_slot[slot(i)], i) for i in ids if by_slot.setdefault(slot(i), i) != i)
    specs, refused = chain_specs({pair[0]: chain(), pair[1]: chain()}, {}, "spl-")
    assert list(specs) == [pair[0]]
    assert refused == {pair[1]: f"its marks and addresses collide with chain {pair[0]}"}


def _rules(specs):
    return [r.expr for r in render_chains("spl-ch-bbbbbbbb", specs).rules]


def test_the_classifier_table_returns_hops_first_then_classifies_by_priority():
    specs, _ = chain_specs({C1: chain(hop(), hop(FW2), priority=1, protocol="tcp",
                                      destination_port="80"),
                            C2: chain(hop(), priority=7, protocol="icmp",
                                      source_cidr="10.0.0.0/24")}, {}, "spl-")
    ruleset = render_chains("spl-ch-bbbbbbbb", specs.values())
    assert (ruleset.family, ruleset.name) == ("ip", "spl-ch-bbbbbbbb")
    (base,) = ruleset.chains
    assert (base.hook, base.prio, base.type, base.policy) == ("prerouting", -150, "filter", "accept")
    rules = _rules(specs.values())
    a, b = specs[C2], specs[C1]  # C2 first: higher priority
    iif = [r[0]["match"]["right"] for r in rules[:3]]
    assert iif == [a.hops[0].router_if, b.hops[0].router_if, b.hops[1].router_if]
    assert [r[1]["mangle"]["value"] for r in rules[:3]] == [0, b.hops[1].mark, 0]
    assert all(r[-1] == {"accept": None} for r in rules[:3])
    assert rules[3][-1] == {"mangle": {"key": {"ct": {"key": "mark"}}, "value": a.mark}}
    assert {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "icmp"}} in rules[3]
    assert rules[4][-1]["mangle"]["value"] == b.mark
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                      "right": 80}} in rules[4]
    assert rules[5][-1] == {"mangle": {"key": {"meta": {"key": "mark"}},
                                       "value": {"ct": {"key": "mark"}}}}
    assert len(rules) == 6


def test_a_symmetric_chain_steers_replies_through_its_hops_in_reverse():
    specs, refused = chain_specs({C1: chain(hop(), hop(FW2), hop(FW3), symmetric=True,
                                            protocol="tcp", destination_port="80")}, {}, "spl-")
    assert refused == {} and specs[C1].symmetric
    s = specs[C1]
    marks = [h.mark for h in s.hops]
    # the same marks, tables and routes as one way: only the classifier table differs
    assert [(h.mark, h.table) for h in s.hops] == [(mark(C1, i), table(C1, i)) for i in range(3)]
    rules = _rules([s])
    direction = {"original": [], "reply": []}
    for r in rules[:6]:
        assert r[0]["match"]["left"] == {"meta": {"key": "iifname"}} and r[-1] == {"accept": None}
        assert r[1]["match"]["left"] == {"ct": {"key": "direction"}}
        direction[r[1]["match"]["right"]].append((r[0]["match"]["right"], r[2]["mangle"]["value"]))
    iifs = [h.router_if for h in s.hops]
    assert direction["original"] == list(zip(iifs, [marks[1], marks[2], 0], strict=True))
    assert direction["reply"] == list(zip(iifs, [0, marks[0], marks[1]], strict=True))
    assert rules[6][-1] == {"mangle": {"key": {"ct": {"key": "mark"}}, "value": s.mark}}
    assert rules[7] == (
        {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}},
        {"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": s.mark}},
        {"mangle": {"key": {"meta": {"key": "mark"}}, "value": marks[2]}})
    assert rules[8][0]["match"]["right"] == "original"
    assert rules[8][-1] == {"mangle": {"key": {"meta": {"key": "mark"}},
                                       "value": {"ct": {"key": "mark"}}}}
    assert len(rules) == 9


def test_symmetric_and_one_way_chains_share_a_table_each_with_its_own_rules():
    specs, _ = chain_specs({C1: chain(hop(), symmetric=True, protocol="tcp"),
                            C2: chain(hop(FW2), priority=5, protocol="icmp")}, {}, "spl-")
    rules = _rules(specs.values())
    one_way, sym = specs[C2], specs[C1]
    assert rules[0] == ({"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                   "right": one_way.hops[0].router_if}},
                        {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 0}},
                        {"accept": None})
    assert [r[1]["match"]["right"] for r in rules[1:3]] == ["original", "reply"]
    replies = [r for r in rules if r[0]["match"].get("right") == "reply"
               and r[0]["match"]["left"] == {"ct": {"key": "direction"}}]
    assert [r[1]["match"]["right"] for r in replies] == [sym.mark]  # the one-way chain: none
    assert len(rules) == 3 + 2 + 1 + 1


def test_no_chain_renders_an_empty_table():
    assert _rules([]) == []


def test_unsafe_classifier_values_never_render():
    specs, _ = chain_specs({C1: chain(source_cidr="10.0.0.0/24; drop")}, {}, "spl-")
    with pytest.raises(UnsafeValueError):
        render_chains("spl-ch-bbbbbbbb", specs.values())


# --------------------------------------------------------------------------- the plan

def _desired(*chains: tuple[str, ChainState]) -> dict[str, RouterChains]:
    specs, _ = chain_specs(dict(chains), {}, "spl-")
    these = tuple(specs.values())
    return {R: RouterChains(R, RNS, these, render_chains("spl-ch-bbbbbbbb", these))}


RNS = "spl-r-bbbbbbbb"


def _served(desired: dict[str, RouterChains]) -> Observed:
    """What the host holds once `desired` is applied."""
    rc = desired[R]
    every = [h for c in rc.chains for h in c.hops]
    hops = {h.namespace: _hop_seen(h) for h in every}
    veths = {h.router_if: VethSeen(True, (h.router_address,), h.router_mac) for h in every}
    veths |= {h.out_if: VethSeen(True, (h.out_address,), h.out_mac) for h in every if h.bridged}
    router = RouterSeen(
        veths, frozenset(r for h in every for r in h.rules),
        {t: r for h in every for t, r in h.routes.items()},
        ObservedTable("ip", rc.classifier.name, rc.classifier.canonical()),
        frozenset(n for h in every for n in h.neighbours))
    return Observed(hops, {RNS: router}, {h.mirror_if: h.monitor_if for h in every if h.mirror_if})


def _hop_seen(h: HopSpec) -> HopSeen:
    sysctls = dict(hop_sysctls(h))
    if h.bridged:
        learning = h.insertion == "l2"
        return HopSeen(None, (None, "br0"), sysctls, bridge=(("hop0", learning), ("hop1", learning)))
    return HopSeen(h.hop_address, (h.router_address.split("/")[0], "hop0"), sysctls,
                   mirror="mon0" if h.insertion == "tap" else None)


def test_plan_builds_hops_then_routes_then_rules_then_the_classifier():
    desired = _desired((C1, chain(hop(), hop(FW2, kind="nat"))))
    ops = plan(desired, Observed({}, {RNS: RouterSeen()}), prefix="spl-")
    kinds = [type(o).__name__ for o in ops]
    assert kinds == ["EnsureHop", "SetRoute", "EnsureHop", "SetRoute", "AddRule", "AddRule",
                     "ReplaceClassifier"]
    assert plan(desired, _served(desired), prefix="spl-") == []


def test_plan_repairs_drift_and_waits_for_the_router():
    desired = _desired((C1, chain()))
    served = _served(desired)
    (hop_ns,) = served.hops
    drifted = Observed({hop_ns: HopSeen()}, served.routers)
    # built again from nothing: its route (gone with its veth) is set again
    assert [type(o).__name__ for o in plan(desired, drifted, prefix="spl-")] == ["EnsureHop", "SetRoute"]
    ops = plan(desired, Observed({}, {}), prefix="spl-")
    assert ops == [ReportError(C1, f"router {R}'s namespace {RNS} is not there yet")]


def test_plan_removes_a_deleted_chain_classifier_first_hops_last():
    served = _served(_desired((C1, chain(hop(), hop(FW2)))))
    ops = plan({}, served, prefix="spl-")
    kinds = [type(o).__name__ for o in ops]
    assert kinds == ["DeleteClassifier", "DeleteRule", "DeleteRule", "FlushTable", "FlushTable",
                     "DeleteHop", "DeleteHop"]
    assert isinstance(ops[0], DeleteClassifier) and ops[0].name == "spl-ch-bbbbbbbb"


def test_plan_for_an_update_replaces_the_classifier_before_removing_the_old_hop():
    before = _desired((C1, chain(hop(), hop(FW2))))
    after = _desired((C1, chain(hop())))
    ops = plan(after, _served(before), prefix="spl-")
    kinds = [type(o).__name__ for o in ops]
    assert kinds == ["ReplaceClassifier", "DeleteRule", "FlushTable", "DeleteHop"]
    assert isinstance(ops[-1], DeleteHop) and ops[-1].namespace.endswith("1")


def test_a_firewall_hop_gets_its_table_in_the_hop_namespace():
    fw = FirewallState(default_action="allow")
    specs, _ = chain_specs({C1: chain()}, {FW: fw}, "spl-")
    these = tuple(specs.values())
    desired = {R: RouterChains(R, RNS, these, render_chains("spl-ch-bbbbbbbb", these))}
    ops = plan(desired, _served(desired), prefix="spl-")
    (tables,) = ops
    assert isinstance(tables, HopTables) and tables.namespace == these[0].hops[0].namespace
    (replace,) = tables.ops
    assert isinstance(replace, ReplaceTable) and replace.ruleset.name == "spl-fw-aaaaaaaa"
