"""nftables rendering, planning and flow guards, without namespaces: table tests, every
rendered ruleset checked by ``nft -c -j -f`` for real, and hostile values that cannot add a
rule (issue 12)."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from splice.agents.drivers.nftables import plan as nplan
from splice.agents.drivers.nftables.conntrack import (
    FirewallGuard,
    Flow,
    NatGuard,
    flows_to_cut,
    parse_entries,
)
from splice.agents.drivers.nftables.plan import (
    DeleteTable,
    Desired,
    ReplaceTable,
    ReportError,
    observe_tables,
)
from splice.agents.drivers.nftables.render import (
    Ruleset,
    UnsafeValueError,
    firewall_table,
    forwards_of,
    nat_table,
    render_firewall,
    render_nat,
)
from splice.events import advanced as ev
from splice.events.advanced import FirewallRule, FirewallRuleIn, PortForward
from splice.events.advanced_fold import FirewallState, NatState, fold_firewall, fold_nat
from splice.events.wire import InsertionState

pytestmark = pytest.mark.routed

PREFIX = "splt-"
FW_ID = "acme.firewall.0123abcd-0000-4000-8000-000000000001"
ROUTER_ID = "fedc9876-0000-4000-8000-000000000002"
TABLE = firewall_table(PREFIX, FW_ID)
NAT_TABLE = nat_table(PREFIX, ROUTER_ID)
INSERTION = InsertionState(mode="routed", service_type_id="st", provider="nftables",
                           router_id=ROUTER_ID)

ESTABLISHED = [{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                          "right": ["established", "related"]}}, {"accept": None}]
INVALID = [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}},
           {"drop": None}]


def meta() -> dict[str, Any]:
    return {"timestamp": datetime(2024, 1, 1, tzinfo=UTC), "actor": "t", "command_id": "c",
            "correlation_id": "c"}


def rule(n: int = 0, **fields: Any) -> FirewallRule:
    fields.setdefault("action", "allow")
    return FirewallRule(id=str(uuid.UUID(int=n + 1)), **fields)


def firewall(*rules: FirewallRule, default: str = "deny", name: str = "fw") -> FirewallState:
    return FirewallState(name=name, rules=list(rules), default_action=default,
                         insertion=INSERTION)


def forward(n: int, protocol: str, ext: int, addr: str, port: int) -> PortForward:
    return PortForward(id=str(uuid.UUID(int=100 + n)), protocol=protocol, external_port=ext,
                       internal_address=addr, internal_port=port)


def nft_check(ruleset: Ruleset) -> None:
    """``nft -c`` checks the batch against the kernel and changes nothing."""
    proc = subprocess.run(["nft", "-c", "-j", "-f", "-"], input=json.dumps(ruleset.batch()),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def user_rules(ruleset: Ruleset) -> list[list[Any]]:
    """The rendered rules after the fixed stateful ones."""
    return [list(r.expr) for r in ruleset.rules][2:]


def tcp(field: str, right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": field}},
                      "right": right}}


def ip(field: str, right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}},
                      "right": right}}


def l4(proto: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}}


REJECT_ICMP = {"reject": {"type": "icmpx", "expr": "port-unreachable"}}

# -- the fold -------------------------------------------------------------------------------


def test_the_fold_keeps_the_aggregates_rule_order_through_insert_move_remove() -> None:
    a, b, c = rule(0, destination_port="80", protocol="tcp"), rule(1, action="deny"), rule(2)
    events = [
        ev.FirewallCreated(**meta(), name="fw", rules=[a, b], default_action="deny",
                           insertion=INSERTION, network_id=None, port_ids=[]),
        ev.FirewallRuleInserted(**meta(), rule=c, index=1),
        ev.FirewallRuleMoved(**meta(), rule_id=a.id, index=2),
        ev.ServiceChainAttached(**meta(), chain_id="ch"),
        ev.ServiceChainAttached(**meta(), chain_id="ch"),
        ev.FirewallUpdated(**meta(), name="fw2", default_action="allow"),
    ]
    state = fold_firewall(events)
    assert [r.id for r in state.rules] == [c.id, b.id, a.id]
    assert (state.name, state.default_action, state.chains) == ("fw2", "allow", ["ch"])
    assert events[0].rules == [a, b]  # the event is left as it was stored
    state = fold_firewall([*events, ev.FirewallRuleRemoved(**meta(), rule_id=b.id),
                           ev.FirewallDeleted(**meta())])
    assert [r.id for r in state.rules] == [c.id, a.id] and state.deleted
    assert render_firewall(state, TABLE).chains[0].policy == "accept"


def test_the_nat_fold_adds_and_removes_forwards() -> None:
    f1, f2 = forward(1, "tcp", 8080, "10.0.1.5", 80), forward(2, "udp", 53, "10.0.1.6", 53)
    state = fold_nat([
        ev.NatCreated(**meta(), name="n", insertion=INSERTION, port_forwards=[f1]),
        ev.PortForwardAdded(**meta(), forward=f2),
        ev.PortForwardRemoved(**meta(), forward_id=f1.id),
    ])
    assert state.forwards == [f2] and state.router_id == ROUTER_ID


# -- rendering a firewall -------------------------------------------------------------------


RULE_CASES: list[tuple[str, dict[str, Any], list[Any]]] = [
    ("allow everything", {}, [{"accept": None}]),
    ("deny a protocol", {"action": "deny", "protocol": "udp"}, [l4("udp"), {"drop": None}]),
    ("icmp", {"protocol": "icmp"}, [l4("icmp"), {"accept": None}]),
    ("a port implies its protocol", {"protocol": "tcp", "destination_port": "80"},
     [tcp("dport", 80), {"accept": None}]),
    ("a port range", {"protocol": "tcp", "source_port": "1000-2000"},
     [tcp("sport", {"range": [1000, 2000]}), {"accept": None}]),
    ("a /32 is an address", {"source_cidr": "10.0.0.5/32"}, [ip("saddr", "10.0.0.5"),
                                                              {"accept": None}]),
    ("a network", {"destination_cidr": "10.0.1.0/24"},
     [ip("daddr", {"prefix": {"addr": "10.0.1.0", "len": 24}}), {"accept": None}]),
    ("all of it, in order", {"action": "deny", "protocol": "tcp", "source_cidr": "10.0.0.0/8",
                             "destination_cidr": "192.168.1.0/24", "source_port": "1024-65535",
                             "destination_port": "443"},
     [ip("saddr", {"prefix": {"addr": "10.0.0.0", "len": 8}}),
      ip("daddr", {"prefix": {"addr": "192.168.1.0", "len": 24}}),
      tcp("sport", {"range": [1024, 65535]}), tcp("dport", 443), {"drop": None}]),
    ("reject tcp: a reset", {"action": "reject", "protocol": "tcp"},
     [l4("tcp"), {"reject": {"type": "tcp reset"}}]),
    ("reject tcp on a port", {"action": "reject", "protocol": "tcp", "destination_port": "22"},
     [tcp("dport", 22), {"reject": {"type": "tcp reset"}}]),
    ("reject udp: port unreachable", {"action": "reject", "protocol": "udp"},
     [l4("udp"), REJECT_ICMP]),
    ("reject anything: port unreachable", {"action": "reject"}, [REJECT_ICMP]),
]


@pytest.mark.parametrize(("case", "fields", "expr"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_a_rule_renders_to_exactly_its_match_and_verdict(
    case: str, fields: dict[str, Any], expr: list[Any]
) -> None:
    ruleset = render_firewall(firewall(rule(0, **fields)), TABLE)
    assert user_rules(ruleset) == [expr], case
    nft_check(ruleset)


def test_a_firewall_is_one_inet_table_with_a_stateful_forward_chain() -> None:
    fw = firewall(rule(0, action="deny", protocol="tcp", destination_port="80"),
                  rule(1, protocol="tcp", destination_port="80"))
    ruleset = render_firewall(fw, TABLE)
    assert TABLE == "splt-fw-0123abcd"
    assert (ruleset.family, ruleset.name) == ("inet", TABLE)
    (chain,) = ruleset.chains
    assert (chain.name, chain.type, chain.hook, chain.policy) == ("forward", "filter", "forward",
                                                                  "drop")
    assert type(chain.prio) is int  # a string ("filter") makes a chain without a hook
    exprs = [list(r.expr) for r in ruleset.rules]
    assert exprs[:2] == [ESTABLISHED, INVALID]
    assert exprs[2:] == [[tcp("dport", 80), {"drop": None}], [tcp("dport", 80), {"accept": None}]]
    assert render_firewall(firewall(default="allow"), TABLE).chains[0].policy == "accept"
    nft_check(ruleset)


def test_port_forwards_pass_a_firewall_only_when_asked() -> None:
    plain = render_firewall(firewall(), TABLE)
    with_dnat = render_firewall(firewall(), TABLE, accept_dnat=True)
    assert len(with_dnat.rules) == len(plain.rules) + 1
    assert list(with_dnat.rules[2].expr) == [
        {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
        {"accept": None}]
    nft_check(with_dnat)


def test_the_replacement_batch_keeps_table_and_chain_and_flushes_in_one_transaction() -> None:
    ruleset = render_firewall(firewall(rule(0)), TABLE)
    cmds = ruleset.batch()["nftables"]
    assert [next(iter(c)) for c in cmds] == ["add", "add", "flush", "add", "add", "add"]
    assert cmds[0] == {"add": {"table": {"family": "inet", "name": TABLE}}}
    assert cmds[2] == {"flush": {"table": {"family": "inet", "name": TABLE}}}
    assert not any("delete" in c for c in cmds)  # never delete and recreate a drop chain
    stale = ruleset.batch([("chain", "extra"), ("chain", "forward")])["nftables"]
    assert [next(iter(c)) for c in stale][:5] == ["add", "flush", "delete", "delete", "add"]
    nft_check(ruleset)


def test_a_firewall_of_500_rules_renders_and_checks() -> None:
    rules = [rule(i, action=("allow", "deny", "reject")[i % 3], protocol="tcp",
                  source_cidr=f"10.{i // 250}.{i % 250}.0/24", destination_port=str(1 + i))
             for i in range(500)]
    ruleset = render_firewall(firewall(*rules), TABLE)
    assert len(ruleset.rules) == 502
    nft_check(ruleset)


# -- rendering NAT --------------------------------------------------------------------------


def test_nat_renders_a_dnat_per_forward_and_masquerade_on_the_external_leg() -> None:
    fwds = [forward(1, "tcp", 8080, "10.0.1.5", 80), forward(2, "udp", 5353, "10.0.1.6", 53)]
    ruleset = render_nat(NAT_TABLE, fwds, external_interface="qg-ext",
                         external_addresses=["192.0.2.10"], snat=True)
    assert (ruleset.family, ruleset.name) == ("ip", "splt-nat-fedc9876")
    assert [(c.name, c.hook, c.prio) for c in ruleset.chains] == [
        ("prerouting", "prerouting", -100), ("postrouting", "postrouting", 100)]
    assert [(r.chain, list(r.expr)) for r in ruleset.rules] == [
        ("prerouting", [ip("daddr", "192.0.2.10"), tcp("dport", 8080),
                        {"dnat": {"addr": "10.0.1.5", "port": 80}}]),
        ("prerouting", [ip("daddr", "192.0.2.10"),
                        {"match": {"op": "==", "left": {"payload": {"protocol": "udp",
                                                                    "field": "dport"}},
                                   "right": 5353}},
                        {"dnat": {"addr": "10.0.1.6", "port": 53}}]),
        ("postrouting", [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                                    "right": "qg-ext"}}, {"masquerade": None}]),
    ]
    nft_check(ruleset)
    no_snat = render_nat(NAT_TABLE, fwds, external_interface="qg-ext",
                         external_addresses=["192.0.2.10", "192.0.2.9"], snat=False)
    assert all(r.chain == "prerouting" for r in no_snat.rules)
    assert no_snat.rules[0].expr[0] == ip("daddr", {"set": ["192.0.2.9", "192.0.2.10"]})
    nft_check(no_snat)


def test_the_first_forward_of_a_port_wins_across_a_routers_nats() -> None:
    a = NatState(name="a", forwards=[forward(1, "tcp", 80, "10.0.1.5", 80)])
    b = NatState(name="b", forwards=[forward(2, "tcp", 80, "10.0.1.6", 80),
                                     forward(3, "udp", 80, "10.0.1.6", 80)])
    gone = NatState(name="c", forwards=[forward(4, "tcp", 81, "10.0.1.7", 80)], deleted=True)
    assert [f.id for f in forwards_of([a, b, gone])] == [a.forwards[0].id, b.forwards[1].id]


@pytest.mark.parametrize("bad", [
    {"external_interface": "eth0; drop"}, {"external_interface": "a" * 16},
    {"external_interface": ""}, {"external_addresses": ["192.0.2.300"]},
    {"external_addresses": ["192.0.2.1 } "]}, {"external_addresses": []},
])
def test_nat_refuses_values_that_are_not_an_interface_or_an_address(bad: dict[str, Any]) -> None:
    kw: dict[str, Any] = {"external_interface": "eth1", "external_addresses": ["192.0.2.1"],
                          "snat": True, **bad}
    with pytest.raises(UnsafeValueError):
        render_nat(NAT_TABLE, [forward(1, "tcp", 80, "10.0.1.5", 80)], **kw)


# -- hostile values -------------------------------------------------------------------------

HOSTILE = [
    "x\nadd rule inet t forward accept",
    'x"} , {"accept": null}',
    "x; accept",
    "x } accept",
    "# comment",
    "${HOME} \\ back",
    "10.0.0.0/8 accept",
    "80 accept",
    "1-2,3",
    "0x50",
    "10.0.0.1/32\n",
    "010.0.0.1/32",
    "ünïcode",
    "",
]


def hostile_firewall(value: str) -> FirewallState:
    return firewall(rule(0, action="deny", protocol="tcp", destination_port="22",
                         description=value),
                    rule(1, protocol="tcp", description=value), name=value)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_and_descriptions_never_reach_the_ruleset(value: str) -> None:
    ruleset = render_firewall(hostile_firewall(value), TABLE)
    assert ruleset == render_firewall(hostile_firewall("plain"), TABLE)
    assert user_rules(ruleset) == [[tcp("dport", 22), {"drop": None}],
                                   [l4("tcp"), {"accept": None}]]
    text = json.dumps(ruleset.batch())
    assert not value or value not in text
    nft_check(ruleset)


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["source_cidr", "destination_cidr", "source_port",
                                   "destination_port", "protocol", "action"])
def test_hostile_match_values_are_refused_by_the_wire_and_by_the_renderer(
    field: str, value: str
) -> None:
    wire = {"action": "allow", "protocol": "tcp", field: value}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(wire, FirewallRuleIn)
    # handed over anyway (a state the command side never built): refused, never rendered
    with pytest.raises(UnsafeValueError):
        render_firewall(firewall(rule(0, **wire)), TABLE)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_forward_values_are_refused(value: str) -> None:
    for fields in ({"internal_address": value}, {"protocol": value}):
        wire = {"protocol": "tcp", "external_port": 80, "internal_address": "10.0.1.5",
                "internal_port": 80, **fields}
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(wire, ev.PortForwardIn)
        with pytest.raises(UnsafeValueError):
            render_nat(NAT_TABLE, [PortForward(id="f", **wire)], external_interface="eth1",
                       external_addresses=["192.0.2.1"], snat=False)


def test_bad_ports_and_port_kinds_are_refused_even_when_typed() -> None:
    for fields in ({"destination_port": "0"}, {"destination_port": "70000"},
                   {"source_port": "20-10"}, {"protocol": "icmp", "destination_port": "80"},
                   {"protocol": "any", "source_port": "80"}):
        with pytest.raises(UnsafeValueError):
            render_firewall(firewall(rule(0, **{"protocol": "tcp", **fields})), TABLE)
    for bad in (0, 65536, True, "80"):
        with pytest.raises(UnsafeValueError):
            render_nat(NAT_TABLE, [forward(1, "tcp", bad, "10.0.1.5", 80)],  # type: ignore[arg-type]
                       external_interface="eth1", external_addresses=["192.0.2.1"], snat=False)
    with pytest.raises(UnsafeValueError):
        render_firewall(firewall(default="reject"), TABLE)


def test_table_names_come_from_ids_only() -> None:
    assert firewall_table("spl-", "0123abcd-0000-4000-8000-000000000001") == "spl-fw-0123abcd"
    for bad in ("x; drop", "acme.firewall.zzzz", "../../x"):
        with pytest.raises(UnsafeValueError):
            firewall_table("spl-", bad)


# -- planning -------------------------------------------------------------------------------


def listing(*rulesets: Ruleset, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What ``nft -j list ruleset`` prints for these tables: metainfo and handles included."""
    objs: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    for handle, obj in enumerate(o for rs in rulesets for o in rs.objects()):
        obj = copy.deepcopy(obj)
        next(iter(obj.values()))["handle"] = handle
        objs.append(obj)
    return {"nftables": objs + (extra or [])}


FW = render_firewall(firewall(rule(0, protocol="tcp", destination_port="80")), TABLE)
FW_MOVED = render_firewall(firewall(rule(0, protocol="tcp", destination_port="80"),
                                    rule(1, action="deny")), TABLE)
NAT = render_nat(NAT_TABLE, [forward(1, "tcp", 8080, "10.0.1.5", 80)],
                 external_interface="eth1", external_addresses=["192.0.2.1"], snat=True)
FOREIGN = [{"table": {"family": "inet", "name": "filter", "handle": 90}},
           {"table": {"family": "inet", "name": "splt-l4-0123abcd", "handle": 91}},
           {"table": {"family": "inet", "name": "spl-fw-0123abcd", "handle": 92}}]


def mutate(rs: Ruleset, fn: Any) -> dict[str, Any]:
    data = listing(rs)
    fn(data["nftables"])
    return data


PLAN_CASES: list[tuple[str, list[Desired], dict[str, Any], list[type]]] = [
    ("converged: nothing to do", [Desired(FW_ID, FW), Desired(ROUTER_ID, NAT)],
     listing(FW, NAT, extra=FOREIGN), []),
    ("missing: created", [Desired(FW_ID, FW)], listing(), [ReplaceTable]),
    ("rules differ: one replace", [Desired(FW_ID, FW_MOVED)], listing(FW), [ReplaceTable]),
    ("policy differs: one replace",
     [Desired(FW_ID, render_firewall(firewall(rule(0, protocol="tcp", destination_port="80"),
                                              default="allow"), TABLE))],
     listing(FW), [ReplaceTable]),
    ("owned and unwanted: deleted", [Desired(FW_ID, FW)], listing(FW, NAT), [DeleteTable]),
    ("nobody wants anything: only ours go", [], listing(FW, NAT, extra=FOREIGN),
     [DeleteTable, DeleteTable]),
    ("foreign tables: never touched", [], {"nftables": FOREIGN}, []),
]


@pytest.mark.parametrize(("case", "desired", "seen", "expected"), PLAN_CASES,
                         ids=[c[0] for c in PLAN_CASES])
def test_plan(case: str, desired: list[Desired], seen: dict[str, Any],
              expected: list[type]) -> None:
    ops = nplan.plan(desired, observe_tables(seen), prefix=PREFIX)
    assert [type(o) for o in ops] == expected, case
    for op in ops:
        assert op.key[1].startswith(("splt-fw-", "splt-nat-"))


def test_plan_replaces_with_the_desired_rules_and_guard() -> None:
    guard = FirewallGuard.of(firewall(rule(0)))
    (op,) = nplan.plan([Desired(FW_ID, FW_MOVED, guard)], observe_tables(listing(FW)),
                       prefix=PREFIX)
    assert op == ReplaceTable(FW_ID, FW_MOVED, (), guard, created=False)
    (new,) = nplan.plan([Desired(FW_ID, FW)], {}, prefix=PREFIX)
    assert isinstance(new, ReplaceTable) and new.created


def test_plan_deletes_what_was_added_by_hand_inside_our_table() -> None:
    def add_chain_and_set(objs: list[dict[str, Any]]) -> None:
        objs.append({"chain": {"family": "inet", "table": TABLE, "name": "mine", "handle": 50}})
        objs.append({"set": {"family": "inet", "table": TABLE, "name": "s", "type": "ipv4_addr",
                             "handle": 51}})

    def rehook(objs: list[dict[str, Any]]) -> None:
        next(o for o in objs if "chain" in o)["chain"]["prio"] = 10

    (op,) = nplan.plan([Desired(FW_ID, FW)], observe_tables(mutate(FW, add_chain_and_set)),
                       prefix=PREFIX)
    assert isinstance(op, ReplaceTable) and op.stale == (("chain", "mine"), ("set", "s"))
    (op,) = nplan.plan([Desired(FW_ID, FW)], observe_tables(mutate(FW, rehook)), prefix=PREFIX)
    assert isinstance(op, ReplaceTable) and op.stale == (("chain", "forward"),)
    cmds = op.ruleset.batch(op.stale)["nftables"]
    assert cmds.index({"delete": {"chain": {"family": "inet", "table": TABLE,
                                            "name": "forward"}}}) < cmds.index(
        {"add": FW.chains[0].object("inet", TABLE)})


def test_plan_reports_two_firewalls_that_would_share_a_table() -> None:
    twin = "acme.firewall.0123abcd-ffff-4000-8000-000000000009"
    ops = nplan.plan([Desired(twin, FW), Desired(FW_ID, FW)], {}, prefix=PREFIX)
    assert [type(o) for o in ops] == [ReportError, ReplaceTable]
    assert ops[1].owner == FW_ID and twin in ops[0].owner  # type: ignore[attr-defined]


def test_plan_refuses_a_desired_table_without_its_prefix() -> None:
    with pytest.raises(ValueError, match="prefix"):
        nplan.plan([Desired(FW_ID, render_firewall(firewall(), "filter"))], {}, prefix=PREFIX)


# -- flows a new ruleset refuses ------------------------------------------------------------

CONNTRACK_L = """\
tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=10.0.1.2 sport=40000 dport=80 src=10.0.1.2 dst=10.0.0.2 sport=80 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=10.0.1.2 sport=40001 dport=81 src=10.0.1.2 dst=10.0.0.2 sport=81 dport=40001 [ASSURED] mark=0 use=1
tcp      6 117 TIME_WAIT src=192.0.2.7 dst=192.0.2.1 sport=5000 dport=8080 src=10.0.1.5 dst=192.0.2.7 sport=80 dport=5000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=192.0.2.7 sport=40002 dport=80 src=192.0.2.7 dst=192.0.2.1 sport=80 dport=40002 [ASSURED] mark=0 use=1
udp      17 29 src=10.0.0.2 dst=10.0.1.2 sport=5353 dport=53 [UNREPLIED] src=10.0.1.2 dst=10.0.0.2 sport=53 dport=5353 mark=0 use=1
icmp     1 29 src=10.0.0.2 dst=10.0.1.2 type=8 code=0 id=77 src=10.0.1.2 dst=10.0.0.2 type=0 code=0 id=77 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=22 dport=41000 src=10.0.0.2 dst=10.0.0.1 sport=41000 dport=22 [ASSURED] mark=0 use=1
not a line
"""
FLOWS = parse_entries(CONNTRACK_L)
ROUTER = {"10.0.0.1", "10.0.1.1", "192.0.2.1"}


def test_conntrack_entries_parse_into_original_and_reply_tuples() -> None:
    assert len(FLOWS) == 7
    assert FLOWS[0] == Flow("tcp", 6, "10.0.0.2", "10.0.1.2", 40000, 80, "10.0.1.2", "10.0.0.2",
                            80)
    dnat = FLOWS[2]
    assert dnat.dnat and (dnat.inner_dst, dnat.inner_dport) == ("10.0.1.5", 80)
    assert FLOWS[3].snat and not FLOWS[3].dnat
    assert (FLOWS[4].protocol, FLOWS[4].number, FLOWS[4].reply_sport) == ("udp", 17, 53)
    assert (FLOWS[5].number, FLOWS[5].icmp, FLOWS[5].sport) == (1, (8, 0, 77), None)


GUARD_CASES: list[tuple[str, FirewallState, list[int]]] = [
    ("the allow for port 80 went: only that flow is cut",
     firewall(rule(0, protocol="tcp", destination_port="81")), [0, 2, 3, 4, 5]),
    ("allow all", firewall(default="allow"), []),
    ("a deny moved before the allow",
     firewall(rule(0, action="deny", destination_cidr="10.0.1.2/32"), rule(1), default="allow"),
     [0, 1, 4, 5]),
    ("the rules see the address after DNAT",
     firewall(rule(0, protocol="tcp", destination_cidr="10.0.1.5/32", destination_port="80"),
              rule(1, destination_cidr="10.0.1.0/24")), [3]),
    ("icmp and udp by protocol", firewall(rule(0, protocol="icmp"), rule(1, protocol="udp",
                                                                         source_port="5353")),
     [0, 1, 2, 3]),
]


@pytest.mark.parametrize(("case", "state", "cut"), GUARD_CASES, ids=[c[0] for c in GUARD_CASES])
def test_a_firewall_cuts_exactly_the_flows_its_new_rules_refuse(
    case: str, state: FirewallState, cut: list[int]
) -> None:
    doomed = flows_to_cut(FLOWS, FirewallGuard.of(state), ROUTER)
    assert doomed == [FLOWS[i] for i in cut], case
    assert FLOWS[6] not in doomed  # the router's own connection never crosses forward


def test_port_forwards_let_through_a_firewall_keep_their_flows() -> None:
    guard = FirewallGuard.of(firewall(), accept_dnat=True)
    assert FLOWS[2] not in flows_to_cut(FLOWS, guard, ROUTER)


def test_nat_cuts_the_flows_of_a_forward_that_went_or_moved_and_of_snat_turned_off() -> None:
    keep = NatGuard.of([forward(1, "tcp", 8080, "10.0.1.5", 80)], ["192.0.2.1"], snat=True)
    assert flows_to_cut(FLOWS, keep, ROUTER) == []
    moved = NatGuard.of([forward(1, "tcp", 8080, "10.0.1.6", 80)], ["192.0.2.1"], snat=True)
    assert flows_to_cut(FLOWS, moved, ROUTER) == [FLOWS[2]]
    off = NatGuard.of([], ["192.0.2.1"], snat=False)
    assert flows_to_cut(FLOWS, off, ROUTER) == [FLOWS[2], FLOWS[3]]
