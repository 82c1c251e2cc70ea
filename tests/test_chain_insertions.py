"""The insertion types beyond ``l3``, pure: how a bridged (``l2``, ``bump_in_the_wire``) hop,
a ``tap`` hop, a logical source port classifier and an out-of-path firewall's detour are
specified, rendered and planned. The dataplane half is tests/dataplane/test_chain_e2e.py."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from splice.agents.desired import Folds, desired_chains, desired_taps
from splice.agents.drivers.chain.model import (
    DETOUR_PRIORITY,
    REVERSE,
    chain_specs,
    detour,
    link,
    mark,
    table,
)
from splice.agents.drivers.chain.plan import (
    EnsureHop,
    HopSeen,
    Observed,
    RouterChains,
    RouterSeen,
    SetNeighbour,
    SetRedirect,
    SetRoute,
    plan,
)
from splice.agents.drivers.chain.render import render_chains
from splice.agents.drivers.nftables.render import UnsafeValueError
from splice.events.advanced_fold import FirewallState, TapState
from splice.events.port_fold import PortState
from splice.events.router_fold import RouterState
from splice.events.wire import InsertionState
from tests.test_chain_steering import (
    C1,
    C2,
    FW,
    FW2,
    FW3,
    RNS,
    R,
    _desired,
    _rules,
    _served,
    chain,
    hop,
)

pytestmark = pytest.mark.chains

PORT = "eeeeeeee-2222-3333-4444-555555555555"
NET = "12345678-2222-3333-4444-555555555555"
TAP = "77777777-2222-3333-4444-555555555555"
MON = "88888888-2222-3333-4444-555555555555"


@pytest.mark.parametrize("insertion", ["l2", "bump_in_the_wire"])
def test_a_bridged_hop_has_two_legs_no_address_and_a_reverse_mark(insertion):
    specs, refused = chain_specs({C1: chain(hop(insertion=insertion))}, {}, "spl-")
    (h,) = specs[C1].hops
    assert refused == {} and h.bridged and h.insertion == insertion
    net = link(C1, 0)
    assert (h.router_address, h.out_address, h.hop_address) == (f"{net[0]}/32", f"{net[3]}/32", "")
    assert h.out_if.startswith("spl-c") and len(h.out_if) <= 15 and h.out_if != h.router_if
    assert h.router_mac.startswith("02:5c:") and h.out_mac.startswith("02:5c:")
    assert h.router_mac != h.out_mac
    net = link(C1, 0)
    # forward: out of the in-leg to a made-up .2 that is the out-leg's MAC; replies the other way
    assert h.routes == {table(C1, 0): (str(net[2]), h.router_if),
                        table(C1, 0) + REVERSE: (str(net[1]), h.out_if)}
    assert h.neighbours == {(h.router_if, str(net[2]), h.out_mac), (h.out_if, str(net[1]), h.router_mac)}
    assert h.rules == {(mark(C1, 0), table(C1, 0)), (mark(C1, 0) + REVERSE, table(C1, 0) + REVERSE)}
    assert (h.entry("original"), h.entry("reply")) == (mark(C1, 0), mark(C1, 0) + REVERSE)
    assert (h.back_if("original"), h.back_if("reply")) == (h.out_if, h.router_if)


def test_a_symmetric_chain_through_a_bridged_hop_comes_back_on_the_other_leg():
    specs, _ = chain_specs({C1: chain(hop(), hop(FW2, "bump_in_the_wire"), hop(FW3),
                                      symmetric=True)}, {}, "spl-")
    s = specs[C1]
    l3a, bump, l3b = s.hops
    rules = _rules([s])
    back = {(r[0]["match"]["right"], r[1]["match"]["right"]): r[2]["mangle"]["value"]
            for r in rules[:6]}
    assert back == {
        (l3a.router_if, "original"): bump.mark, (l3a.router_if, "reply"): 0,
        (bump.out_if, "original"): l3b.mark, (bump.router_if, "reply"): l3a.mark,
        (l3b.router_if, "original"): 0, (l3b.router_if, "reply"): bump.mark + REVERSE,
    }
    assert rules[7][-1]["mangle"]["value"] == l3b.mark  # replies start at the last hop


def test_a_tap_hop_copies_to_its_monitor_port_interface():
    specs, refused = chain_specs({C1: chain(hop(), hop(TAP, "tap", "tap"))}, {}, "spl-",
                                 monitors={TAP: "tap88888888-22"})
    assert refused == {}
    _, t = specs[C1].hops
    assert (t.insertion, t.monitor_if) == ("tap", "tap88888888-22")
    assert t.mirror_if.startswith("spl-m") and len(t.mirror_if) <= 15
    assert t.router_address and t.hop_address  # one-armed, routed like an l3 hop


def test_a_logical_source_port_matches_its_leg_mac_and_address_or_nothing_once_gone():
    port = PortState(network_id=NET, ip_address="10.0.0.5", mac_address="fa:16:3e:00:00:05")
    specs, _ = chain_specs({C1: chain(logical_source_port=PORT, protocol="icmp")}, {}, "spl-",
                           ports={PORT: port})
    s = specs[C1]
    assert s.source is not None and not s.silent
    classify = _rules([s])[1]
    assert classify[2:5] == (
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "qr-12345678"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                   "right": "fa:16:3e:00:00:05"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": "10.0.0.5"}})
    for gone in ({}, {PORT: PortState(network_id=NET, deleted=True)}):
        specs, refused = chain_specs({C1: chain(logical_source_port=PORT)}, {}, "spl-", ports=gone)
        assert refused == {} and specs[C1].silent
        rules = _rules(specs.values())
        assert not any({"mangle": {"key": {"ct": {"key": "mark"}}, "value": specs[C1].mark}} in r
                       for r in rules)  # built, but it classifies nothing


def test_a_hostile_source_port_mac_never_renders():
    port = PortState(network_id=NET, ip_address="10.0.0.5", mac_address='fa:16"; drop')
    specs, _ = chain_specs({C1: chain(logical_source_port=PORT)}, {}, "spl-", ports={PORT: port})
    with pytest.raises(UnsafeValueError):
        render_chains("spl-ch-bbbbbbbb", specs.values())


def test_nft_accepts_every_insertion_and_a_source_port_classifier():
    """`nft -c` on the classifier of symmetric chains of every hop type and a source port."""
    port = PortState(network_id=NET, ip_address="10.0.0.5", mac_address="fa:16:3e:00:00:05")
    specs, _ = chain_specs({C1: chain(hop(), hop(FW2, "l2"), hop(FW3, "bump_in_the_wire"),
                                      hop(TAP, "tap", "tap"), symmetric=True,
                                      logical_source_port=PORT),
                            C2: chain(hop(FW, "bump_in_the_wire"), priority=3, protocol="tcp")},
                           {}, "spl-", monitors={TAP: "tap88888888-22"}, ports={PORT: port})
    ruleset = render_chains("spl-ch-bbbbbbbb", specs.values())
    proc = subprocess.run(["nft", "-c", "-j", "-f", "-"], input=json.dumps(ruleset.batch()),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_plan_builds_a_bridged_hop_with_its_neighbours_and_both_tables():
    desired = _desired((C1, chain(hop(insertion="bump_in_the_wire"), symmetric=True)))
    ops = plan(desired, Observed({}, {RNS: RouterSeen()}), prefix="spl-")
    kinds = [type(o).__name__ for o in ops]
    assert kinds == ["EnsureHop", "SetNeighbour", "SetNeighbour", "SetRoute", "SetRoute",
                     "AddRule", "AddRule", "ReplaceClassifier"]
    (h,) = desired[R].chains[0].hops
    assert {(o.dev, o.mac) for o in ops if isinstance(o, SetNeighbour)} == {
        (h.router_if, h.out_mac), (h.out_if, h.router_mac)}
    assert plan(desired, _served(desired), prefix="spl-") == []


def test_a_bridged_hop_whose_bridge_learns_when_it_must_not_is_built_again():
    desired = _desired((C1, chain(hop(insertion="bump_in_the_wire"))))
    served = _served(desired)
    (ns,) = served.hops
    learning = HopSeen(None, (None, "br0"), served.hops[ns].sysctls,
                       bridge=(("hop0", True), ("hop1", True)))
    ops = plan(desired, Observed({ns: learning}, served.routers), prefix="spl-")
    assert isinstance(ops[0], EnsureHop)
    assert sum(isinstance(o, SetRoute) for o in ops) == 2  # its legs' routes go with them


def test_plan_points_a_tap_hop_copy_leg_at_its_monitor_and_repairs_it():
    specs, _ = chain_specs({C1: chain(hop(TAP, "tap", "tap"))}, {}, "spl-",
                           monitors={TAP: "tap88888888-22"})
    these = tuple(specs.values())
    desired = {R: RouterChains(R, RNS, these, render_chains("spl-ch-bbbbbbbb", these))}
    served = _served(desired)
    assert plan(desired, served, prefix="spl-") == []
    (h,) = these[0].hops
    drifted = Observed(served.hops, served.routers, {h.mirror_if: None})
    assert plan(desired, drifted, prefix="spl-") == [SetRedirect(C1, h.mirror_if, "tap88888888-22")]


def _firewall(mode: str, router: str | None = R) -> FirewallState:
    return FirewallState(default_action="allow", insertion=InsertionState(
        mode=mode, service_type_id="st", provider="nftables", router_id=router))  # type: ignore[arg-type]


def test_an_out_of_path_firewall_is_a_symmetric_detour_below_every_chain():
    d = detour(FW, _firewall("out_of_path"))
    assert d is not None and (d.router_id, d.priority, d.symmetric) == (R, DETOUR_PRIORITY, True)
    assert [(h.service_id, h.insertion) for h in d.hops] == [(FW, "l3")]
    assert d.classifier.protocol == "any" and d.classifier.destination_cidr is None
    assert detour(FW, _firewall("routed")) is None and detour(FW, _firewall("floating", None)) is None


def test_desired_chains_adds_the_detours_of_out_of_path_firewalls_on_routers_here():
    folds = Folds(
        routers={f"t.router.{R}": RouterState(host="h1")},
        firewalls={f"t.firewall.{FW}": _firewall("out_of_path"),
                   f"t.firewall.{FW2}": _firewall("routed")},
        chains={f"t.chain.{C1}": chain(hop(FW3), priority=0, protocol="icmp")})
    out, refused = desired_chains(folds, "h1", prefix="spl-")
    assert refused == {}
    rc = out[R]
    assert [c.id for c in rc.chains] == sorted([C1, FW])
    rules = [r.expr for r in rc.classifier.rules]
    classify = [r for r in rules if r[-1].get("mangle", {}).get("key") == {"ct": {"key": "mark"}}]
    assert [r[-1]["mangle"]["value"] for r in classify] == [mark(C1, 0), mark(FW, 0)]  # chain first
    assert desired_chains(folds, "h2", prefix="spl-") == ({}, {})


def test_a_tap_that_is_a_chain_hop_is_not_served_as_a_standalone_tap():
    ins = InsertionState(mode="floating", service_type_id="st", provider="tc-mirror")
    ports = {f"t.port.{p}": PortState(network_id=NET, host="h1") for p in (PORT, MON)}
    tap = TapState(port_id=PORT, monitor_port_id=MON, insertion=ins, host="h1")
    hop_tap = TapState(port_id=PORT, monitor_port_id=MON, insertion=ins, host="h1", chains=["c"])
    served, _ = desired_taps(Folds(taps={f"t.tap.{TAP}": tap}, ports=ports), "h1", {"tc-mirror"})
    assert list(served) == [TAP]
    served, refused = desired_taps(Folds(taps={f"t.tap.{TAP}": hop_tap}, ports=ports), "h1",
                                   {"tc-mirror"})
    assert served == {} and refused == {}


def test_links_of_a_chain_never_overlap_between_hops():
    nets = [link(C1, i) for i in range(16)]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    assert all(n.subnet_of(ipaddress.IPv4Network("169.254.0.0/16")) for n in nets)
