"""Per-service counters on real traffic: an nftables-l4 and a haproxy load balancer serve HTTP
through their VIPs; the agent's readings, its Prometheus families, its answer on the bus and
`splice loadbalancer stats` show non-zero bytes and connections, and a member that dies shows
as DOWN/ERROR (and leaves the counters as they were).

The world (nats-server, command service, an agent offering haproxy and nftables-l4, three
members and two clients on one network, everything with the prefix ``splk-``) is
test_l4_e2e's fixture; this file adds a projector, so that the CLI finds the load balancer by
name.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from splice.agents import stats
from splice.events import metrics
from splice.projections.runner import run_projector
from tests.dataplane import test_l4_e2e as l4
from tests.dataplane.test_l4_e2e import HA_VIP, HOST, MEMBERS, MONITOR, VIP, T, create_lb, lb_body
from tests.dataplane.test_l4_e2e import member_ids as ids_of
from tests.dataplane.test_router_e2e import off_loop, until
from tests.helpers import request

pytestmark = pytest.mark.routed

world = l4.world  # the fixture (its module's teardown checks that nothing is left)
SPLICE = str(Path(sys.executable).parent / "splice")


@pytest.fixture
async def projected(world: dict[str, Any], fresh_nats: Any,
                    tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The world with a projector (the CLI resolves names in the read models) and readings
    every 0.3 s."""
    world["agent"].stats.interval_s = 0.3
    stop = asyncio.Event()
    task = asyncio.create_task(run_projector(fresh_nats.url, str(tmp_path / "rm.db"), stop))
    try:
        yield {**world, "url": fresh_nats.url, "metrics_url": metrics_url()}
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@functools.cache
def metrics_url() -> str:
    return metrics.serve(0)  # one endpoint for this test process, as `splice up` has one


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for family in text_string_to_metric_families(text) for x in family.samples}


def reading(world: dict[str, Any], lb: str) -> stats.LbStats | None:
    return world["agent"].stats.latest.get(lb)


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def hold_open(world: dict[str, Any], vip: str) -> socket.socket:
    """One keep-alive HTTP exchange from c0 on a connection left open."""
    s: socket.socket = world["machines"].workers["c0"].submit(
        socket.create_connection, (vip, 80), 2.0).result()
    s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    return s


def cli(world: dict[str, Any], *args: str, deadline_s: float = 15.0) -> subprocess.CompletedProcess[str]:
    """`splice loadbalancer stats ARGS`, once the projector has the load balancer (the
    CLI finds it by name in the read models)."""
    env = {"SPLICE_NATS_URL": world["url"], "SPLICE_TENANT": T, "COLUMNS": "200",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SPLICE_STATE_DIR": "/nonexistent"}
    end = time.monotonic() + deadline_s
    while True:
        res = subprocess.run([SPLICE, "loadbalancer", "stats", *args], env=env,
                             capture_output=True, text=True, timeout=60)
        if "no loadbalancer named" not in res.stderr or time.monotonic() > end:
            return res
        time.sleep(0.2)


async def traffic_then_a_member_dies(world: dict[str, Any], provider: str, vip: str,
                                     **pool: Any) -> tuple[str, str, dict[str, str], str]:
    """Create the load balancer (named after its provider), send 6 GETs and hold one
    connection open; wait for a reading that counts them. Returns its id, aggregate id,
    member ids and the port-80 listener's id."""
    ms, agent = world["machines"], world["agent"]
    lb, agg = await create_lb(world, lb_body(world, provider, vip, healthmonitor=MONITOR, **pool))
    listener = next(li.id for li in agent.lbs[agg].listeners.values() if li.protocol_port == 80)
    answers = [await off_loop(ms.get, "c0", vip) for _ in range(6)]
    assert set(answers) <= set(MEMBERS) and len(answers) == 6, answers
    return lb, agg, ids_of(agent, agg), listener


async def check_counts(world: dict[str, Any], lb: str, listener: str, provider: str) -> None:
    def counted() -> bool:
        r = reading(world, lb)
        li = None if r is None else r.listeners[listener]
        return (li is not None and li.total >= 7 and li.active >= 1 and li.bytes_in > 0
                and li.bytes_out > 0)

    await until(counted, f"{provider}: 7 connections, one open, bytes both ways", deadline=10)
    r = reading(world, lb)
    assert r is not None and r.provider == provider and r.tenant == T and r.host == HOST
    labels = {"tenant": T, "loadbalancer": lb, "provider": provider, "listener": listener}
    assert (metric("splice_lb_listener_connections_total", **labels) or 0) >= 7
    assert (metric("splice_lb_listener_bytes_in_total", **labels) or 0) > 0
    assert (metric("splice_lb_listener_bytes_out_total", **labels) or 0) > 0
    # over HTTP too, as `splice up` serves its process's registry (its agent's counters in it)
    served = await off_loop(scrape, world["metrics_url"])
    assert served.get(("splice_lb_listener_connections_total",
                       tuple(sorted(labels.items()))), 0) >= 7
    reply = await request(world["nc"], stats.subject(T, HOST, lb), {})
    assert reply["ok"] and reply["stats"]["listeners"][listener]["total"] >= 7, reply


async def check_death(world: dict[str, Any], lb: str, ids: dict[str, str], listener: str,
                      provider: str, dead_check: str) -> None:
    before = reading(world, lb)
    assert before is not None
    pool = before.members[ids["m0"]].pool_id
    base = {"tenant": T, "loadbalancer": lb, "provider": provider, "pool": pool}
    assert metric("splice_lb_member_up", **base, member=ids["m0"]) == 1
    await off_loop(world["machines"].kill, "m0")

    def dead() -> bool:
        r = reading(world, lb)
        m = None if r is None else r.members[ids["m0"]]
        return m is not None and m.status == "ERROR" and dead_check in m.check

    await until(dead, f"{provider}: m0 ERROR ({dead_check})", deadline=10)
    after = reading(world, lb)
    assert after is not None and after.pools[pool].members_up == 2
    assert after.members[ids["m1"]].status == "ONLINE"
    assert metric("splice_lb_member_up", **base, member=ids["m0"]) == 0
    assert metric("splice_lb_member_status", **base, member=ids["m0"], status="ERROR") == 1
    assert metric("splice_lb_member_up", **base, member=ids["m1"]) == 1
    # the counters stay (the nftables table was replaced without m0: its named counters kept)
    assert after.listeners[listener].total >= before.listeners[listener].total


async def test_nftables_l4_counts_traffic_and_shows_a_dead_member(
        projected: dict[str, Any]) -> None:
    w = projected
    lb, _, ids, listener = await traffic_then_a_member_dies(w, "nftables-l4", VIP)
    held = await off_loop(hold_open, w, VIP)
    try:
        await check_counts(w, lb, listener, "nftables-l4")
        r = reading(w, lb)
        assert r is not None and sum(m.active or 0 for m in r.members.values()) >= 1
        assert {m.check for m in r.members.values()} == {"UP"}
        # the CLI, by name: the same figures
        shown = await off_loop(cli, w, "nftables-l4", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        data = json.loads(shown.stdout)
        assert data["loadbalancer_id"] == lb and data["listeners"][listener]["total"] >= 7
        table = await off_loop(cli, w, "nftables-l4")
        assert table.returncode == 0, table.stderr
        for word in ("listeners", "bytes in", "active", "members", MEMBERS["m0"], "UP"):
            assert word in table.stdout, (word, table.stdout)
    finally:
        held.close()
    await check_death(w, lb, ids, listener, "nftables-l4", "DOWN")


async def test_haproxy_counts_traffic_and_shows_a_dead_member(projected: dict[str, Any]) -> None:
    w = projected
    lb, _, ids, listener = await traffic_then_a_member_dies(w, "haproxy", HA_VIP, protocol="HTTP")
    held = await off_loop(hold_open, w, HA_VIP)
    try:
        await check_counts(w, lb, listener, "haproxy")
        r = reading(w, lb)
        assert r is not None and sum(m.total or 0 for m in r.members.values()) >= 7
        checks = {m.check for m in r.members.values()}
        assert "L4OK" in checks and checks <= {"L4OK", "INI"}, checks  # INI: not checked yet
        value = await off_loop(cli, w, "haproxy", "-o", "value")
        assert value.returncode == 0, value.stderr
        line = next(x.split("\t") for x in value.stdout.splitlines() if x.startswith(listener))
        assert line[1] == "80" and int(line[6]) >= 7
    finally:
        held.close()
    await check_death(w, lb, ids, listener, "haproxy", "L4CON")
