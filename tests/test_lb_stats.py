"""Per-service counters, without a dataplane: haproxy's ``show stat`` rows and the
nftables-l4 table's counters and conntrack flows turned into one reading per load balancer;
the answers on ``splice.stats.<tenant>.<host>.<lb>``; the ``splice_lb_*`` metrics; the L4
table's named counters (names from port numbers only, kept across a replacement).

The dataplane side (real haproxy, nft, traffic) is tests/dataplane/test_stats_e2e.py.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from splice.agents import stats
from splice.agents.drivers.haproxy.process import parse_stat
from splice.agents.drivers.haproxy.stats import lb_stats as haproxy_stats
from splice.agents.drivers.l4.stats import Raw, parse_counters
from splice.agents.drivers.l4.stats import lb_stats as l4_stats
from splice.agents.drivers.nftables.conntrack import Flow
from splice.agents.drivers.nftables.l4render import counter_names
from splice.agents.drivers.nftables.render import L4Listener, render_l4
from splice.agents.model import LoadBalancerSpec, NetworkSpec
from splice.events.lbaas import HealthMonitor, Listener, Member, Pool

NET = NetworkSpec("0badcafe-0000-4000-8000-000000000001", "10.9.0.0/24", "10.9.0.1")
LB = "1b1b1b1b-0000-4000-8000-000000000001"
LI, LI2 = str(uuid.UUID(int=901)), str(uuid.UUID(int=902))
POOL, EMPTY = str(uuid.UUID(int=801)), str(uuid.UUID(int=802))
M1, M2 = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
VIP = "10.9.0.100"
MONITOR = HealthMonitor(type="TCP", delay=1, timeout=1, max_retries=2, max_retries_down=2)


def spec(protocol: str = "TCP", monitor: HealthMonitor | None = MONITOR) -> LoadBalancerSpec:
    members = [Member(id=M1, address="10.9.0.11", protocol_port=8080),
               Member(id=M2, address="10.9.0.12", protocol_port=8080)]
    pools = [Pool(id=POOL, name="p", protocol=protocol, healthmonitor=monitor,
                  members=members),
             Pool(id=EMPTY, name="e", protocol=protocol)]
    listeners = [Listener(id=LI, name="l", protocol=protocol, protocol_port=80,
                          default_pool_id=POOL),
                 Listener(id=LI2, name="x", protocol=protocol, protocol_port=81,
                          default_pool_id=EMPTY)]
    return LoadBalancerSpec.build(LB, NET, VIP, listeners=listeners, pools=pools, name="lb")


SHOW_STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,status,weight,check_status\n"
    f"l-{LI},FRONTEND,,,2,5,,40,5120,20480,OPEN,,\n"
    f"l-{LI2},FRONTEND,,,0,0,,0,0,0,OPEN,,\n"
    f"p-{POOL},m-{M1},0,0,2,3,,25,3000,12000,UP,1,L4OK\n"
    f"p-{POOL},m-{M2},0,0,0,2,,15,2120,8480,DOWN,1,* L4CON\n"
    f"p-{POOL},BACKEND,0,0,2,5,,40,5120,20480,UP,2,\n"
    f"p-{EMPTY},BACKEND,0,0,0,0,,0,0,0,DOWN,0,\n"
)


# -- haproxy ----------------------------------------------------------------------------------


def test_haproxy_rows_give_bytes_and_sessions_per_listener_and_each_members_check() -> None:
    r = haproxy_stats(spec(), parse_stat(SHOW_STAT), at=12.5)
    assert (r.provider, r.at, r.status) == ("haproxy", 12.5, "DEGRADED")
    li = r.listeners[LI]
    assert (li.port, li.bytes_in, li.bytes_out, li.active, li.total, li.status) == (
        80, 5120, 20480, 2, 40, "ONLINE")
    one, two = r.members[M1], r.members[M2]
    assert (one.status, one.check, one.active, one.total, one.bytes_in) == (
        "ONLINE", "L4OK", 2, 25, 3000)
    assert (two.status, two.check, two.total) == ("ERROR", "L4CON", 15)
    assert (r.pools[POOL].status, r.pools[POOL].members, r.pools[POOL].members_up) == (
        "DEGRADED", 2, 1)
    assert (r.pools[POOL].active, r.pools[POOL].total) == (2, 40)
    assert r.pools[EMPTY].status == "OFFLINE"


def test_a_silent_haproxy_gives_zero_counters_and_everything_in_error() -> None:
    r = haproxy_stats(spec(), None, at=1.0)
    assert r.status == "ERROR"
    assert (r.listeners[LI].bytes_in, r.listeners[LI].total) == (0, 0)
    assert {m.status for m in r.members.values()} == {"ERROR"}


# -- nftables-l4 ------------------------------------------------------------------------------


def flow(sport: int, member: str, dport: int = 80) -> Flow:
    return Flow(protocol="tcp", number=6, src="10.9.0.2", dst=VIP, sport=sport, dport=dport,
                reply_src=member, reply_dst=VIP, reply_sport=8080)


def test_l4_counters_and_open_flows_give_bytes_connections_and_member_states() -> None:
    conn, b_in, b_out = counter_names(80)
    raw = Raw({conn: (7, 420), b_in: (50, 4000), b_out: (48, 90000)},
              (flow(1000, "10.9.0.11"), flow(1001, "10.9.0.11"), flow(1002, "10.9.0.12"),
               Flow(protocol="tcp", number=6, src="10.9.0.2", dst="10.9.0.50", sport=9,
                    dport=80)))  # not to the VIP: not ours
    r = l4_stats(spec(), raw, down=frozenset({(POOL, M2)}), at=3.0)
    li = r.listeners[LI]
    assert (li.bytes_in, li.bytes_out, li.total, li.active) == (4000, 90000, 7, 3)
    assert (r.listeners[LI2].total, r.listeners[LI2].active) == (0, 0)
    assert (r.members[M1].active, r.members[M1].check, r.members[M1].status) == (2, "UP", "ONLINE")
    assert (r.members[M2].active, r.members[M2].check, r.members[M2].status) == (1, "DOWN", "ERROR")
    assert r.members[M1].total is None  # the kernel counts no totals per member
    assert (r.pools[POOL].members_up, r.pools[POOL].status, r.status) == (1, "DEGRADED", "DEGRADED")


def test_l4_members_without_a_monitor_have_no_check_and_a_missing_table_is_error() -> None:
    r = l4_stats(spec(monitor=None), Raw(), down=frozenset(), at=0.0)
    assert {m.check for m in r.members.values()} == {""}
    assert {m.status for m in r.members.values()} == {"NO_MONITOR"}
    gone = l4_stats(spec(), Raw(found=False), down=frozenset(), at=0.0)
    assert gone.status == "ERROR" and gone.listeners[LI].status == "ERROR"


def test_counters_are_read_from_nfts_json_listing() -> None:
    listing = {"nftables": [{"metainfo": {"version": "1.0.6"}},
                            {"counter": {"family": "ip", "name": "conn_80", "table": "t",
                                         "handle": 5, "packets": 3, "bytes": 180}},
                            {"rule": {"expr": []}}]}
    assert parse_counters(listing) == {"conn_80": (3, 180)}


# -- the table's counters ---------------------------------------------------------------------


def test_the_l4_table_counts_per_listener_port_with_names_made_of_the_port_only() -> None:
    rs = render_l4("splt-l4-1b1b1b1b", VIP, [L4Listener(80, (("10.9.0.11", 8080),)),
                                             L4Listener(81)])
    assert rs.counters == ("conn_80", "in_80", "out_80", "conn_81", "in_81", "out_81")
    (dnat,) = [r for r in rs.rules if r.chain == "prerouting"]
    assert dnat.expr[-2] == {"counter": "conn_80"} and "dnat" in dnat.expr[-1]
    forward = [r.expr[-1] for r in rs.rules if r.chain == "forward"]
    assert forward == [{"counter": n} for n in ("in_80", "out_80", "in_81", "out_81")]
    with pytest.raises(ValueError):
        counter_names("80; flush ruleset")


def test_a_replacement_keeps_the_rulesets_own_counters_and_deletes_others() -> None:
    rs = render_l4("splt-l4-1b1b1b1b", VIP, [L4Listener(80)])
    cmds = rs.batch([("counter", "in_80"), ("counter", "conn_99"), ("chain", "stray")])["nftables"]
    deleted = [next(iter(c["delete"].items())) for c in cmds if "delete" in c]
    assert [(k, v["name"]) for k, v in deleted] == [("counter", "conn_99"), ("chain", "stray")]
    flush = cmds.index({"flush": rs.table()})
    added = [c["add"]["counter"]["name"] for c in cmds[:flush] if "counter" in c.get("add", {})]
    assert added == ["conn_80", "in_80", "out_80"]  # before the flush: no-ops when present


# -- answers and metrics ----------------------------------------------------------------------


def book_with_reading(host: str = "h1") -> stats.Book:
    book = stats.Book(host, interval_s=5.0)
    reading = haproxy_stats(spec("HTTP"), parse_stat(SHOW_STAT), at=1.0)

    class Source:
        provider = "haproxy"

        async def stats(self) -> dict[str, stats.LbStats]:
            return {LB: reading}

    asyncio.run(book.refresh({"haproxy": Source()}, {LB: "acme"}))
    return book


def test_the_agent_answers_only_for_the_subjects_tenant() -> None:
    book = book_with_reading()
    ok = book.answer(stats.subject("acme", "h1", LB), lambda t, i: False)
    assert ok["ok"] and ok["stats"]["listeners"][LI]["bytes_in"] == 5120
    assert ok["stats"]["tenant"] == "acme" and ok["stats"]["host"] == "h1"
    other = book.answer(stats.subject("evil", "h1", LB), lambda t, i: False)
    assert other["error"]["code"] == "not_found" and "stats" not in other
    waiting = book.answer(stats.subject("acme", "h1", str(uuid.UUID(int=7))), lambda t, i: True)
    assert waiting["error"]["code"] == "unavailable" and waiting["error"]["retry_after_ms"] == 5000
    assert book.answer("splice.stats.acme.h1.not-an-id", lambda t, i: True)["error"]["code"] == "invalid"


@pytest.mark.parametrize("bad", [("Acme", "h1", LB), ("acme", "h.1", LB), ("acme", "h1", "x"),
                                 ("acme", "h1", f"{LB}.>")])
def test_stats_subjects_are_built_from_valid_tokens_only(bad: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        stats.subject(*bad)


def test_readings_are_served_as_prometheus_metrics_labelled_with_ids() -> None:
    book = book_with_reading("metrics-host")
    stats.expose(book)
    try:
        base = {"tenant": "acme", "loadbalancer": LB, "provider": "haproxy"}
        get = REGISTRY.get_sample_value
        assert get("splice_lb_listener_bytes_in_total", {**base, "listener": LI}) == 5120
        assert get("splice_lb_listener_bytes_out_total", {**base, "listener": LI}) == 20480
        assert get("splice_lb_listener_connections_total", {**base, "listener": LI}) == 40
        assert get("splice_lb_listener_active_connections", {**base, "listener": LI}) == 2
        member = {**base, "pool": POOL, "member": M2}
        assert get("splice_lb_member_up", member) == 0
        assert get("splice_lb_member_status", {**member, "status": "ERROR"}) == 1
        assert get("splice_lb_member_up", {**member, "member": M1}) == 1
        assert get("splice_lb_pool_members_up", {**base, "pool": POOL}) == 1
    finally:
        stats.withdraw(book)
    assert REGISTRY.get_sample_value("splice_lb_member_up", {**base, "pool": POOL,
                                                              "member": M1}) is None


def test_a_source_that_fails_is_counted_and_its_readings_dropped_the_others_kept() -> None:
    book = book_with_reading("fail-host")
    assert LB in book.latest

    class Broken:
        provider = "nftables-l4"

        async def stats(self) -> dict[str, stats.LbStats]:
            raise RuntimeError("nft is gone")

    class Gone:  # serves a load balancer the agent's folds no longer hold
        provider = "haproxy"

        async def stats(self) -> dict[str, stats.LbStats]:
            return {LB: haproxy_stats(spec("HTTP"), None, at=2.0)}

    errors = {"provider": "nftables-l4"}
    before = REGISTRY.get_sample_value("splice_agent_stats_errors_total", errors) or 0
    asyncio.run(book.refresh({"nftables-l4": Broken(), "haproxy": Gone()}, {}))
    assert book.latest == {} and book.readings == 2
    assert REGISTRY.get_sample_value("splice_agent_stats_errors_total", errors) == before + 1
