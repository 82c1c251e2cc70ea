"""The nftables-l4 provider without namespaces: table tests of the renderer (round robin, source
affinity with a stable seed, weights, resets), of the pure plan, of the flows a change cuts, of
the operating status, and of the health checks' state machine on a fake clock. Rendered
rulesets are also checked by a real ``nft -c`` (marked routed: it needs root)."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from typing import Any

import msgspec
import pytest

from splice.agents.drivers.l4.health import Checks, Monitor, Target, targets
from splice.agents.drivers.l4.model import (
    L4Layout,
    kept_backends,
    listeners,
    operating,
    seed_of,
    slots,
)
from splice.agents.drivers.l4.plan import (
    CutFlows,
    DeleteBridge,
    DeleteSlot,
    EnsureBridge,
    EnsureVipLeg,
    Observed,
    ReportError,
    SetSysctls,
    SlotSeen,
    Tables,
    flows_to_cut,
    plan,
)
from splice.agents.drivers.nftables import plan as nft
from splice.agents.drivers.nftables.conntrack import Flow
from splice.agents.drivers.nftables.render import (
    L4Listener,
    Ruleset,
    UnsafeValueError,
    l4_table,
    render_l4,
)
from splice.agents.drivers.reports import Operating
from splice.agents.model import LoadBalancerSpec, NetworkSpec
from splice.agents.netns import NamespaceLinks
from splice.events.lbaas import HealthMonitor, Listener, Member, MemberIn, Pool, SessionPersistence
from tests.test_nft_render import HOSTILE

PREFIX = "splt-"
LAYOUT = L4Layout(PREFIX)
NET = NetworkSpec("0badcafe-0000-4000-8000-000000000001", "10.9.0.0/24", "10.9.0.1")
LB_ID = "1b1b1b1b-0000-4000-8000-000000000001"
POOL_ID = "900d900d-0000-4000-8000-000000000001"
VIP = "10.9.0.100"
TABLE = l4_table(PREFIX, LB_ID)


def member(n: int, weight: int = 1, port: int = 8080, **kw: Any) -> Member:
    return Member(id=str(uuid.UUID(int=n)), address=f"10.9.0.{10 + n}", protocol_port=port,
                  weight=weight, **kw)


def spec(*members: Member, lb_id: str = LB_ID, algorithm: str = "ROUND_ROBIN",
         persistence: SessionPersistence | None = None, monitor: HealthMonitor | None = None,
         name: str = "lb", listener_up: bool = True, lb_up: bool = True,
         pool_id: str | None = POOL_ID) -> LoadBalancerSpec:
    pool = Pool(id=POOL_ID, name=name, protocol="TCP", lb_algorithm=algorithm,  # type: ignore[arg-type]
                session_persistence=persistence, healthmonitor=monitor, members=list(members))
    listener = Listener(id=str(uuid.UUID(int=999)), name=name, protocol="TCP", protocol_port=80,
                        default_pool_id=pool_id, admin_state_up=listener_up)
    return LoadBalancerSpec.build(lb_id, NET, VIP, listeners=[listener], pools=[pool],
                                  name=name, admin_state_up=lb_up)


def render(s: LoadBalancerSpec, down: frozenset[tuple[str, str]] = frozenset()) -> Ruleset:
    return render_l4(TABLE, s.vip_address, listeners(s, down))


def chain(rs: Ruleset, name: str) -> list[list[Any]]:
    return [list(r.expr) for r in rs.rules if r.chain == name]


def dnat_map(rs: Ruleset) -> tuple[dict[str, Any], list[tuple[int, str, int]]]:
    """The key expression and the slots of the (single) DNAT rule."""
    (rule,) = chain(rs, "prerouting")
    m = rule[-1]["dnat"]["addr"]["map"]
    return m["key"], [(k, v["concat"][0], v["concat"][1]) for k, v in m["data"]["set"]]


TO_VIP = [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                     "right": VIP}},
          {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                     "right": 80}}]
RESET = [*TO_VIP, {"reject": {"type": "tcp reset"}}]
ESTABLISHED = [{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                          "right": ["established", "related"]}}, {"accept": None}]
MASQUERADE = [{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
              {"masquerade": None}]


def nft_check(ruleset: Ruleset) -> None:
    proc = subprocess.run(["nft", "-c", "-j", "-f", "-"], input=json.dumps(ruleset.batch()),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# -- the renderer -----------------------------------------------------------------------------


def test_round_robin_dnats_the_vip_over_numgen_to_each_members_own_address_and_port() -> None:
    rs = render(spec(member(1), member(2, port=9090), member(3)))
    key, slots_ = dnat_map(rs)
    assert key == {"numgen": {"mode": "inc", "mod": 3, "offset": 0}}
    assert slots_ == [(0, "10.9.0.11", 8080), (1, "10.9.0.12", 9090), (2, "10.9.0.13", 8080)]
    assert chain(rs, "prerouting")[0][:2] == TO_VIP
    assert chain(rs, "postrouting") == [MASQUERADE]  # full NAT: replies come back here
    assert chain(rs, "input") == [ESTABLISHED, RESET]  # what is not DNATed is reset
    assert (rs.family, rs.name) == ("ip", "splt-l4-1b1b1b1b")
    assert {(c.name, c.hook, c.prio) for c in rs.chains} == {
        ("prerouting", "prerouting", -100), ("postrouting", "postrouting", 100),
        ("input", "input", 0), ("forward", "forward", 0)}  # forward: the byte counters


@pytest.mark.parametrize("how", [{"algorithm": "SOURCE_IP"},
                                 {"persistence": SessionPersistence(type="SOURCE_IP")}])
def test_source_ip_hashes_the_source_with_a_seed_stable_per_pool(how: dict[str, Any]) -> None:
    rs = render(spec(member(1), member(2), **how))
    key, _ = dnat_map(rs)
    assert key == {"jhash": {"mod": 2, "seed": seed_of(POOL_ID),
                             "expr": {"payload": {"protocol": "ip", "field": "saddr"}}}}
    assert rs == render(spec(member(1), member(2), **how))  # every render: the same seed
    assert seed_of(POOL_ID) != seed_of(str(uuid.UUID(int=7)))
    assert all(1 <= seed_of(str(uuid.UUID(int=i))) <= 0xFFFFFFFF for i in range(200))


WEIGHT_CASES = [
    ("equal weights: one slot each", [1, 1], ["a", "b"]),
    ("reduced by the gcd, interleaved", [4, 2], ["a", "b", "a"]),
    ("3 to 1", [3, 1], ["a", "b", "a", "a"]),
    ("weight 0 gets no slot", [2, 0, 2], ["a", "c"]),
    ("coprime", [2, 3], ["a", "b", "a", "b", "b"]),
]


@pytest.mark.parametrize(("case", "weights", "expected"), WEIGHT_CASES,
                         ids=[c[0] for c in WEIGHT_CASES])
def test_weights_are_map_slots(case: str, weights: list[int], expected: list[str]) -> None:
    ms = [member(i + 1, weight=w) for i, w in enumerate(weights)]
    names = {f"10.9.0.{11 + i}": "abc"[i] for i in range(len(ms))}
    _, got = dnat_map(render(spec(*ms)))
    assert [names[a] for _, a, _ in got] == expected, case


def test_admin_down_and_health_down_members_get_no_slot_and_backups_only_stand_in() -> None:
    ms = [member(1), member(2, admin_state_up=False), member(3), member(4, backup=True)]
    _, got = dnat_map(render(spec(*ms)))
    assert [a for _, a, _ in got] == ["10.9.0.11", "10.9.0.13"]
    _, got = dnat_map(render(spec(*ms), frozenset({(POOL_ID, ms[0].id)})))
    assert [a for _, a, _ in got] == ["10.9.0.13"]
    down = frozenset({(POOL_ID, ms[0].id), (POOL_ID, ms[2].id)})
    _, got = dnat_map(render(spec(*ms), down))
    assert [a for _, a, _ in got] == ["10.9.0.14"]  # no other member live: the backup


@pytest.mark.parametrize("case", ["no member", "all down", "all weight 0", "no pool"])
def test_a_listener_with_no_live_member_resets_at_once(case: str) -> None:
    one = member(1, weight=0 if case == "all weight 0" else 1)
    s = spec(*([] if case == "no member" else [one]), pool_id=None if case == "no pool" else POOL_ID)
    down = frozenset({(POOL_ID, one.id)}) if case == "all down" else frozenset()
    rs = render(s, down)
    assert chain(rs, "prerouting") == []
    assert chain(rs, "input") == [ESTABLISHED, RESET]


def test_a_disabled_listener_or_load_balancer_has_no_rule_of_its_own() -> None:
    for s in (spec(member(1), listener_up=False), spec(member(1), lb_up=False)):
        rs = render(s)
        assert chain(rs, "prerouting") == [] and chain(rs, "input") == [ESTABLISHED]


def test_the_slots_of_big_weights_stay_bounded_by_the_gcd() -> None:
    ms = [member(i, weight=256) for i in range(1, 51)]
    assert len(slots(ms)) == 50


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_never_reach_the_ruleset(value: str) -> None:
    hostile = spec(member(1, name=value if value else None), member(2), name=value or "x")
    plain = spec(member(1), member(2), name="plain")
    assert render(hostile) == render(plain)
    assert not value or value not in json.dumps(render(hostile).batch())


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_addresses_are_refused_by_the_wire_and_by_the_renderer(value: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"address": value, "protocol_port": 80}, MemberIn)
    with pytest.raises(UnsafeValueError):  # handed over anyway: refused, never rendered
        render_l4(TABLE, VIP, [L4Listener(80, ((value, 80),))])
    with pytest.raises(UnsafeValueError):
        render_l4(TABLE, value, [L4Listener(80, (("10.9.0.11", 80),))])


@pytest.mark.parametrize("bad", [
    L4Listener(0, (("10.9.0.11", 80),)), L4Listener(80, (("10.9.0.11", 65536),)),
    L4Listener(True, (("10.9.0.11", 80),)), L4Listener("80", (("10.9.0.11", 80),)),  # type: ignore[arg-type]
    L4Listener(80, (("10.9.0.11", 80),), seed=0), L4Listener(80, (("10.9.0.11", 80),), seed=2**32),
    L4Listener(80, (("10.9.0.11", 80),), seed="1; accept"),  # type: ignore[arg-type]
])
def test_bad_ports_and_seeds_are_refused_even_when_typed(bad: L4Listener) -> None:
    with pytest.raises(UnsafeValueError):
        render_l4(TABLE, VIP, [bad])


def test_two_listeners_on_one_port_are_refused() -> None:
    with pytest.raises(UnsafeValueError):
        render_l4(TABLE, VIP, [L4Listener(80), L4Listener(80)])


def test_table_names_come_from_ids_only() -> None:
    assert l4_table("spl-", LB_ID) == "spl-l4-1b1b1b1b"
    for bad in ("x; drop", "acme.loadbalancer.zzzz", "../../x"):
        with pytest.raises(UnsafeValueError):
            l4_table("spl-", bad)


def test_names_never_take_another_drivers_prefixes() -> None:
    names = [LAYOUT.namespace(LB_ID), LAYOUT.host_leg(LB_ID), LAYOUT.table(LB_ID)]
    assert names == ["splt-l4-1b1b1b1b", "splt-n1b1b1b1b", "splt-l4-1b1b1b1b"]
    for other in ("splt-lb-", "splt-v", "splt-r-", "splt-q", "splt-br-", "splt-fw-", "splt-nat-"):
        assert not any(n.startswith(other) for n in names)
    assert len(L4Layout("abcde-").host_leg(LB_ID)) <= 15


@pytest.mark.routed
def test_every_rendered_ruleset_passes_nft_check() -> None:
    for s in (spec(member(1), member(2, weight=3)), spec(member(1), algorithm="SOURCE_IP"),
              spec(), spec(member(1), lb_up=False),
              spec(*[member(i, weight=i) for i in range(1, 40)])):
        nft_check(render(s))


# -- the plan ---------------------------------------------------------------------------------


def listing(rs: Ruleset) -> dict[str, Any]:
    objs: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}}]
    for handle, obj in enumerate(rs.objects()):
        obj = copy.deepcopy(obj)
        next(iter(obj.values()))["handle"] = handle
        objs.append(obj)
    return {"nftables": objs}


def converged(s: LoadBalancerSpec, down: frozenset[tuple[str, str]] = frozenset(),
              ports: int = 2, **changes: Any) -> Observed:
    """The host as the plan leaves it for ``s`` (then ``changes`` to the slot)."""
    bridge = LAYOUT.bridge(NET)
    seen = SlotSeen(
        "1b1b1b1b", namespace=True,
        links=NamespaceLinks(1, True, frozenset({f"{VIP}/24"}), None, NET.gateway),
        host_leg=True, host_leg_master=bridge, sysctls=dict(LAYOUT.sysctls()),
        tables=nft.observe_tables(listing(render(s, down))))
    seen = SlotSeen(**{**{f: getattr(seen, f) for f in SlotSeen.__slots__}, **changes})
    return Observed(frozenset({bridge}), {bridge: ports}, {"1b1b1b1b": seen})


def kinds(ops: list[Any]) -> list[str]:
    return [type(o).__name__ for o in ops]


def test_a_fresh_host_gets_bridge_namespace_leg_sysctls_table_in_order() -> None:
    s = spec(member(1))
    ops = plan({LB_ID: s}, Observed(), LAYOUT, {})
    assert kinds(ops) == ["EnsureBridge", "EnsureNamespace", "EnsureVipLeg", "SetSysctls",
                          "Tables", "CutFlows"]
    assert ops[0] == EnsureBridge("splt-br-0badcaf")  # cut to 15 bytes
    assert isinstance(ops[2], EnsureVipLeg) and ops[2].leg.host_ifname == "splt-n1b1b1b1b"
    assert isinstance(ops[3], SetSysctls) and dict(ops[3].values) == dict(LAYOUT.sysctls())
    assert dict(ops[3].values)["net/ipv4/ip_forward"] == "1"
    assert dict(ops[3].values)["net/ipv4/conf/splt-vip/send_redirects"] == "0"
    assert dict(ops[3].values)["net/ipv4/conf/all/send_redirects"] == "0"
    assert isinstance(ops[4], Tables) and isinstance(ops[4].ops[0], nft.ReplaceTable)
    assert ops[4].ops[0].ruleset == render(s)


PLAN_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("converged: nothing to do", {}, []),
    ("table deleted by hand: replaced, flows cut", {"tables": {}}, ["Tables", "CutFlows"]),
    ("address flushed: the leg again", {"links": NamespaceLinks(1, True, frozenset(), None,
                                                                NET.gateway)}, ["EnsureVipLeg"]),
    ("leg on another bridge: the leg again", {"host_leg_master": "other"}, ["EnsureVipLeg"]),
    ("a sysctl changed: set again", {"sysctls": {**dict(LAYOUT.sysctls()),
                                                 "net/ipv4/ip_forward": "0"}}, ["SetSysctls"]),
    ("namespace deleted: all of it", {"namespace": False},
     ["EnsureNamespace", "EnsureVipLeg", "SetSysctls", "Tables", "CutFlows"]),
]


@pytest.mark.parametrize(("case", "changes", "expected"), PLAN_CASES,
                         ids=[c[0] for c in PLAN_CASES])
def test_plan_repairs_exactly_the_drift(case: str, changes: dict[str, Any],
                                        expected: list[str]) -> None:
    s = spec(member(1), member(2))
    assert kinds(plan({LB_ID: s}, converged(s, **changes), LAYOUT, {})) == expected, case


def test_a_member_down_replaces_the_table_without_it_and_cuts_only_its_flows() -> None:
    s = spec(member(1), member(2))
    down = {LB_ID: frozenset({(POOL_ID, member(1).id)})}
    ops = plan({LB_ID: s}, converged(s), LAYOUT, down)
    assert kinds(ops) == ["Tables", "CutFlows"]
    assert isinstance(ops[0], Tables)
    (step,) = ops[0].ops
    assert isinstance(step, nft.ReplaceTable) and not step.created
    assert dnat_map(step.ruleset)[1] == [(0, "10.9.0.12", 8080)]
    assert ops[1] == CutFlows("1b1b1b1b", "splt-l4-1b1b1b1b", VIP,
                              ((80, frozenset({("10.9.0.12", 8080)})),))
    assert plan({LB_ID: s}, converged(s, down[LB_ID]), LAYOUT, down) == []


def test_a_stray_table_of_ours_in_the_namespace_goes() -> None:
    s = spec(member(1))
    other = render_l4("splt-l4-99999999", VIP, [])
    tables = {**nft.observe_tables(listing(render(s))), **nft.observe_tables(listing(other))}
    (op,) = plan({LB_ID: s}, converged(s, tables=tables), LAYOUT, {})
    assert isinstance(op, Tables) and op.ops == (nft.DeleteTable("ip", "splt-l4-99999999"),)


def test_a_deleted_lb_leaves_nothing_and_its_bridge_goes_only_when_empty() -> None:
    s = spec(member(1))
    assert plan({}, converged(s, ports=1), LAYOUT, {}) == [
        DeleteSlot("1b1b1b1b", "splt-l4-1b1b1b1b", "splt-n1b1b1b1b"),
        DeleteBridge("splt-br-0badcaf")]
    assert kinds(plan({}, converged(s, ports=3), LAYOUT, {})) == ["DeleteSlot"]  # members
    assert kinds(plan({}, converged(s, ports=1), LAYOUT, {}, keep={"splt-br-0badcaf"})) == [
        "DeleteSlot"]  # another driver of the host needs the bridge


def test_two_lbs_sharing_a_short_id_the_smaller_id_keeps_it() -> None:
    other = "1b1b1b1b-ffff-4000-8000-000000000009"
    s, t = spec(member(1)), spec(member(1), lb_id=other)
    ops = plan({LB_ID: s, other: t}, converged(s), LAYOUT, {})
    assert ops == [ReportError("1b1b1b1b", other, f"short id 1b1b1b1b already used by {LB_ID} "
                                                   "on this host")]


def test_a_state_that_cannot_be_rendered_is_reported_not_applied() -> None:
    bad = spec(member(1))
    bad = bad.with_vip("10.9.0.100; accept")
    ops = plan({LB_ID: bad}, Observed(), LAYOUT, {})
    assert isinstance(ops[-1], ReportError) and "not renderable" in ops[-1].reason
    assert not any(isinstance(o, Tables) for o in ops)


# -- the flows a change cuts ------------------------------------------------------------------


def flow(dst: str, dport: int, reply_src: str, reply_sport: int, src: str = "10.9.0.2") -> Flow:
    return Flow("tcp", 6, src, dst, 40000, dport, reply_src, VIP, reply_sport)


def test_only_flows_dnated_to_a_backend_no_longer_kept_are_cut() -> None:
    keep = kept_backends(spec(member(1), member(2, weight=0), member(3)),
                         frozenset({(POOL_ID, member(3).id)}))
    assert keep == {80: frozenset({("10.9.0.11", 8080), ("10.9.0.12", 8080)})}  # draining kept
    to_1, to_2, to_3 = (flow(VIP, 80, f"10.9.0.1{i}", 8080) for i in (1, 2, 3))
    other_port = flow(VIP, 81, "10.9.0.11", 8080)
    health = Flow("tcp", 6, VIP, "10.9.0.13", 41000, 8080, "10.9.0.13", VIP, 8080)
    not_dnated = Flow("tcp", 6, "10.9.0.2", VIP, 40000, 22, VIP, "10.9.0.2", 22)
    flows = [to_1, to_2, to_3, other_port, health, not_dnated]
    assert flows_to_cut(flows, VIP, keep) == [to_3, other_port]


# -- operating status -------------------------------------------------------------------------


def test_operating_status_rolls_up_like_haproxys() -> None:
    hm = HealthMonitor(type="TCP")
    ms = [member(1), member(2), member(3, weight=0), member(4, admin_state_up=False)]
    s = spec(*ms, monitor=hm)
    st = operating(s, frozenset({(POOL_ID, ms[1].id)}), True)
    assert [st.members[m.id] for m in ms] == [Operating.ONLINE, Operating.ERROR,
                                             Operating.DRAINING, Operating.OFFLINE]
    assert st.pools[POOL_ID] is Operating.DEGRADED
    assert st.loadbalancer is Operating.DEGRADED
    assert set(st.listeners.values()) == {Operating.ONLINE}
    plain = operating(spec(member(1)), frozenset(), True)
    assert plain.members[member(1).id] is Operating.NO_MONITOR
    assert plain.loadbalancer is Operating.ONLINE
    broken = operating(spec(member(1)), frozenset(), False)
    assert broken.loadbalancer is Operating.ERROR
    assert set(broken.listeners.values()) == {Operating.ERROR}
    off = operating(spec(member(1), lb_up=False), frozenset(), True)
    assert off.loadbalancer is Operating.OFFLINE
    assert set(off.listeners.values()) == {Operating.OFFLINE}


# -- the health checks' state machine ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0


T1 = Target(LB_ID, POOL_ID, str(uuid.UUID(int=1)), "10.9.0.11", 8080)
T2 = Target(LB_ID, POOL_ID, str(uuid.UUID(int=2)), "10.9.0.12", 8080)
MON = Monitor(delay=2.0, timeout=1.0, rise=2, fall=3)


def test_targets_are_the_enabled_members_of_monitored_enabled_pools() -> None:
    hm = HealthMonitor(type="TCP", delay=2, timeout=1, max_retries=2, max_retries_down=3)
    s = spec(member(1), member(2), member(3, admin_state_up=False), monitor=hm)
    assert targets({LB_ID: s}) == {T1: MON, T2: MON}
    assert targets({LB_ID: spec(member(1))}) == {}
    off = msgspec.structs.replace(hm, admin_state_up=False)
    assert targets({LB_ID: spec(member(1), monitor=off)}) == {}


def test_members_start_up_fall_after_max_retries_down_and_rise_after_max_retries() -> None:
    checks, clock = Checks(), Clock()
    checks.sync({T1: MON, T2: MON}, clock.now)
    assert checks.down() == {} and checks.due(clock.now) == [T1, T2]
    outcomes = [False, False, True, False, False, False]  # a success resets the failures
    changed = [checks.record(T1, ok) for ok in outcomes]
    assert changed == [False, False, False, False, False, True]
    assert checks.down() == {LB_ID: frozenset({T1.key})} and not checks.is_up(T1)
    changed = [checks.record(T1, ok) for ok in (True, False, True, True)]
    assert changed == [False, False, False, True]  # a failure resets the successes
    assert checks.down() == {}


def test_probes_are_due_every_delay_from_the_last_start() -> None:
    checks, clock = Checks(), Clock()
    checks.sync({T1: MON}, clock.now)
    assert checks.due(clock.now) == [T1]
    assert checks.due(clock.now + 1.9) == []
    assert checks.next_due() == pytest.approx(clock.now + 2.0)
    assert checks.due(clock.now + 2.0) == [T1]
    assert checks.timeout(T1) == 1.0


def test_a_forgotten_or_changed_member_starts_again_from_up() -> None:
    checks, clock = Checks(), Clock()
    checks.sync({T1: MON, T2: MON}, clock.now)
    assert checks.due(clock.now) == [T1, T2]
    for _ in range(3):
        checks.record(T1, False)
    assert not checks.is_up(T1)
    checks.sync({T1: MON, T2: MON}, clock.now + 0.5)  # unchanged: the state stays
    assert not checks.is_up(T1)
    checks.sync({T1: Monitor(1.0, 1.0, 2, 3), T2: MON}, clock.now + 1)  # monitor changed
    assert checks.is_up(T1) and checks.due(clock.now + 1) == [T1]  # and due at once
    checks.sync({T2: MON}, clock.now + 1.5)  # removed: forgotten, its late outcome ignored
    assert checks.record(T1, False) is False and checks.down() == {}
