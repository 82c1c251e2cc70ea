"""The background monitors: the PENDING watchdog and the host monitor (heartbeats).

The pure trackers are checked directly; the rest runs against a real nats-server with the
command service in-process. Time is a clock the tests move forward themselves, and each check is
a tick the test runs (`Monitor.tick`), so nothing waits for time to pass; the last test runs the
monitors inside the service, on the real clock and timer, through a server restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from helpers import event_messages, request, wait_for

from splice.events import subjects
from splice.natsserver import NatsServer
from splice.services.monitor_state import HostTracker, PendingTracker, lost_command_id
from splice.services.monitors import Monitors, _Monitor
from splice.services.service import CommandService

T = "acme"
PENDING_TIMEOUT, HOST_TIMEOUT = 300.0, 10.0
ENV = {"SPLICE_PENDING_TIMEOUT": str(PENDING_TIMEOUT), "SPLICE_HOST_TIMEOUT": str(HOST_TIMEOUT)}
NO_MONITORS = {"SPLICE_MONITORS": "off"}


# -- the pure trackers --------------------------------------------------------------------------


def _evt(topic: str, lb: str = "lb1", **payload: Any) -> tuple[str, str, bytes]:
    return f"splice.evt.{T}.loadbalancer.{lb}.{topic}", topic, json.dumps(payload).encode()


def test_pending_tracker_follows_generations() -> None:
    p = PendingTracker()
    ts = "2030-01-01T00:00:00Z"
    p.apply(*_evt("LoadBalancerCreated", generation=1, timestamp=ts))
    p.apply(*_evt("LoadBalancerScheduled", host="h1", timestamp=ts))
    assert p.pending["lb1"].generation == 1
    p.apply(*_evt("LoadBalancerUpdated", generation=2, timestamp="2030-01-01T00:00:10Z"))
    p.apply(*_evt("LoadBalancerProvisioned", generation=1, host="h1", timestamp=ts))
    assert p.pending["lb1"].generation == 2  # an old generation converged: still pending
    since = p.pending["lb1"].since
    assert [lb for lb, _ in p.overdue(since + 299, 300)] == []
    assert [lb for lb, _ in p.overdue(since + 300, 300)] == ["lb1"]
    p.apply(*_evt("LoadBalancerProvisioned", generation=2, host="h1", timestamp=ts))
    assert "lb1" not in p.pending
    p.apply(*_evt("MemberCreated", generation=3, timestamp=ts))
    p.apply(*_evt("LoadBalancerProvisioningFailed", generation=3, host="h1", reason="x", timestamp=ts))
    assert "lb1" not in p.pending
    p.apply(*_evt("LoadBalancerDeleteRequested", generation=4, timestamp=ts))
    p.apply(*_evt("LoadBalancerProvisioned", generation=4, host="h1", timestamp=ts))
    assert p.pending["lb1"].deleting  # ACTIVE does not end PENDING_DELETE
    p.apply(*_evt("LoadBalancerProvisioningTimedOut", generation=4, reason="x", timestamp=ts))
    assert "lb1" not in p.pending
    p.apply(*_evt("LoadBalancerDeleted", timestamp=ts))
    assert p.pending == {}


def test_host_tracker_grace_heartbeats_and_command_ids() -> None:
    h = HostTracker()
    h.apply("HostRegistered", 7, json.dumps({"host": "h1", "providers": []}).encode(), now=100.0)
    assert h.overdue(110.0, 10) == []  # a registration counts as a heartbeat (grace)
    assert h.overdue(110.5, 10) == [("h1", 7)]
    h.heartbeat("h1", 110.4)
    assert h.overdue(120.0, 10) == []
    h.apply("HostLost", 9, json.dumps({"host": "h1"}).encode(), now=121.0)
    assert h.overdue(500.0, 10) == []
    h.apply("HostRegistered", 12, json.dumps({"host": "h1", "providers": []}).encode(), now=501.0)
    assert h.overdue(512.0, 10) == [("h1", 12)]
    h.heartbeat("stranger", 0.0)
    h.prune(1000.0, keep=100)
    assert "stranger" not in h.heard and "h1" in h.heard
    assert lost_command_id("h1", 12) == "lost-h1-12"
    assert len(lost_command_id("h" * 63, 123456789)) <= 64


# -- over NATS ----------------------------------------------------------------------------------


class Clock:
    """Time the tests move forward themselves (seconds; it starts at the wall clock's now)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def nc(fresh_nats: NatsServer) -> AsyncIterator[Any]:
    conn = await nats.connect(fresh_nats.url)
    yield conn
    await conn.close()


@pytest.fixture
async def svc(fresh_nats: NatsServer) -> AsyncIterator[CommandService]:
    """The command service without monitors of its own: the tests run theirs."""
    s = CommandService(fresh_nats.url, env=NO_MONITORS)
    await s.start()
    yield s
    await s.stop()


@contextlib.asynccontextmanager
async def monitors(url: str, clock: Clock) -> AsyncIterator[Monitors]:
    """A replica's monitors on `clock`; their timer never fires, the tests tick them."""
    m = Monitors(url, ENV, clock=clock, interval=3600)
    await m.start()
    try:
        await wait_for(lambda: m.watchdog.caught_up and m.hosts.caught_up, timeout=10)
        yield m
    finally:
        await m.stop()


async def cmd(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"command_id": str(uuid.uuid4()), "actor": "it", **body}
    reply = await request(nc, f"splice.cmd.{subject}", body)
    assert reply["ok"], (subject, body, reply)
    return reply


async def network(nc: Any) -> str:
    await cmd(nc, "_admin.servicetype.create", {"name": "gold", "default": True,
                                                "providers": {"loadbalancer": "haproxy"}})
    net = await cmd(nc, f"{T}.network.create", {"name": "web", "cidr": "10.20.0.0/24"})
    return str(net["id"])


async def create_lb(nc: Any, net: str, name: str) -> str:
    return str((await cmd(nc, f"{T}.loadbalancer.create", {"name": name, "vip_network_id": net}))["id"])


async def report_active(nc: Any, lb: str, generation: int = 1) -> None:
    await cmd(nc, "_host.loadbalancer.report", {"tenant": T, "loadbalancer_id": lb, "host": "h1",
                                                "generation": generation, "status": "ACTIVE"})


def of_type(events: list[dict[str, Any]], topic: str) -> list[dict[str, Any]]:
    return [m for m in events if m["headers"].get("Splice-Topic") == topic]


def lb_of(m: dict[str, Any]) -> str:
    return str(m["subject"].split(".")[4])


def pending(m: Monitors) -> dict[str, int]:
    return {lb: st.generation for lb, st in m.watchdog.state.pending.items()}


def since(m: Monitors) -> list[float]:
    return sorted(st.since for st in m.watchdog.state.pending.values())


async def beat(nc: Any, m: Monitors, clock: Clock, *hosts: str) -> None:
    """Heartbeats of `hosts` now, and wait until the monitor heard them."""
    for host in hosts:
        await nc.publish(subjects.heartbeat(host), b"")
    await wait_for(lambda: all(m.hosts.state.heard.get(h) == clock.now for h in hosts), timeout=5)


async def until(url: str, cond: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll the stream until `cond(events)` holds; the events then."""
    seen: list[dict[str, Any]] = []

    async def check() -> bool:
        seen[:] = await event_messages(url)
        return bool(cond(seen))

    await wait_for(check, timeout=timeout, every=0.1)
    return seen


async def test_watchdog_expires_what_no_agent_reports(svc: CommandService, nc: Any) -> None:
    url, clock = svc.nats_url, Clock()
    async with monitors(url, clock) as m:
        net = await network(nc)
        # the load balancers are placed on h1, the one host: only it may report about them
        await cmd(nc, "_host.host.register", {"host": "h1", "providers": ["haproxy"]})
        active = await create_lb(nc, net, "a")  # reported ACTIVE at once
        await report_active(nc, active)
        updated = await create_lb(nc, net, "u")  # reported for generation 1, then updated
        await report_active(nc, updated)
        await cmd(nc, f"{T}.loadbalancer.update", {"id": updated, "description": "v2"})
        stuck = await create_lb(nc, net, "s")
        await wait_for(lambda: pending(m) == {updated: 2, stuck: 1}, timeout=10)

        clock.now = since(m)[0] + PENDING_TIMEOUT - 0.01
        await m.watchdog.tick()
        assert m.watchdog.sent == 0  # not yet
        clock.now = since(m)[-1] + PENDING_TIMEOUT
        await m.watchdog.tick()
        assert m.watchdog.sent == 2
        events = await event_messages(url)
        timed_out = {lb_of(e): e for e in of_type(events, "LoadBalancerProvisioningTimedOut")}
        assert set(timed_out) == {stuck, updated}
        assert timed_out[stuck]["payload"]["generation"] == 1
        assert timed_out[updated]["payload"]["generation"] == 2
        assert timed_out[updated]["headers"]["Splice-Command-Id"] == f"expire-{updated}-2"
        assert timed_out[stuck]["headers"]["Splice-Actor"] == "watchdog"
        assert "PENDING_CREATE" in timed_out[stuck]["payload"]["reason"]
        assert "PENDING_UPDATE" in timed_out[updated]["payload"]["reason"]
        await wait_for(lambda: pending(m) == {}, timeout=10)  # it read its own effect

        # a new generation of an ERROR load balancer is pending again, and times out again
        await cmd(nc, f"{T}.loadbalancer.update", {"id": stuck, "description": "again"})
        await wait_for(lambda: pending(m) == {stuck: 2}, timeout=10)
        clock.now = since(m)[0] + PENDING_TIMEOUT
        await m.watchdog.tick()
        events = await event_messages(url)
        again = [e for e in of_type(events, "LoadBalancerProvisioningTimedOut") if lb_of(e) == stuck]
        assert [e["payload"]["generation"] for e in again] == [1, 2]


async def test_a_bad_event_is_set_aside_and_the_watchdog_goes_on(
    svc: CommandService, nc: Any
) -> None:
    clock = Clock()
    async with monitors(svc.nats_url, clock) as m:
        net = await network(nc)
        bad = await nc.jetstream().publish(
            subjects.event(T, "loadbalancer", str(uuid.uuid4()), "LoadBalancerCreated"),
            b'{"generation": "one"}',
            headers={subjects.H_TOPIC: "LoadBalancerCreated"},
        )
        lb = await create_lb(nc, net, "after-the-bad-one")
        await wait_for(lambda: pending(m) == {lb: 1}, timeout=10)
        assert m.watchdog.follower is not None
        assert [r.seq for r in m.watchdog.follower.set_aside] == [bad.seq]
        clock.now = since(m)[0] + PENDING_TIMEOUT
        await m.watchdog.tick()
        assert m.watchdog.sent == 1


async def test_host_monitor_declares_silent_host_lost_and_moves_its_lb(
    svc: CommandService, nc: Any
) -> None:
    url, clock = svc.nats_url, Clock()
    async with monitors(url, clock) as m:
        net = await network(nc)
        await cmd(nc, "_host.host.register", {"host": "h1", "providers": ["haproxy"]})
        lb = await create_lb(nc, net, "lb")
        await cmd(nc, "_host.host.register", {"host": "h2", "providers": ["haproxy"]})
        await wait_for(lambda: set(m.hosts.state.hosts) == {"h1", "h2"}, timeout=10)
        # both beat: for twice the timeout, nobody is lost
        for _ in range(4):
            clock.advance(HOST_TIMEOUT / 2)
            await beat(nc, m, clock, "h1", "h2")
            await m.hosts.tick()
        assert m.hosts.sent == 0
        events = await event_messages(url)
        assert of_type(events, "HostLost") == []
        scheduled = [e for e in of_type(events, "LoadBalancerScheduled") if lb_of(e) == lb]
        assert [e["payload"]["host"] for e in scheduled] == ["h1"]

        # h1 falls silent; h2 keeps beating
        clock.advance(HOST_TIMEOUT / 2)
        await beat(nc, m, clock, "h2")
        await m.hosts.tick()
        assert m.hosts.sent == 0  # h1: silent for half the timeout only
        clock.advance(HOST_TIMEOUT / 2 + 0.01)
        await beat(nc, m, clock, "h2")
        await m.hosts.tick()
        events = await event_messages(url)
        lost = of_type(events, "HostLost")
        assert [e["payload"]["host"] for e in lost] == ["h1"]
        registered = [e for e in of_type(events, "HostRegistered") if e["payload"]["host"] == "h1"]
        assert lost[0]["headers"]["Splice-Command-Id"] == f"lost-h1-{registered[-1]['seq']}"
        assert lost[0]["headers"]["Splice-Actor"] == "host-monitor"
        moved = [e for e in of_type(events, "LoadBalancerScheduled") if lb_of(e) == lb][-1]
        assert (moved["payload"]["host"], moved["payload"]["previous_host"]) == ("h2", "h1")

        # h2, still beating, is not lost; h1 is not declared lost twice
        for _ in range(3):
            clock.advance(HOST_TIMEOUT / 2)
            await beat(nc, m, clock, "h2")
            await m.hosts.tick()
        hosts_lost = [e["payload"]["host"] for e in of_type(await event_messages(url), "HostLost")]
        assert hosts_lost == ["h1"]


async def test_two_replicas_one_effect_and_a_restart_grace(fresh_nats: NatsServer, nc: Any) -> None:
    url, clock = fresh_nats.url, Clock()
    services = [CommandService(url, env=NO_MONITORS) for _ in range(2)]
    for s in services:
        await s.start()
    try:
        async with monitors(url, clock) as m1, monitors(url, clock) as m2:
            net = await network(nc)
            lbs = {await create_lb(nc, net, f"l{i}") for i in range(3)}
            for h in ("h7", "h8"):
                await cmd(nc, "_host.host.register", {"host": h, "providers": ["haproxy"]})
            for m in (m1, m2):
                await wait_for(lambda m=m: set(pending(m)) == lbs
                               and set(m.hosts.state.hosts) == {"h7", "h8"}, timeout=10)
            clock.now = since(m1)[-1] + PENDING_TIMEOUT + HOST_TIMEOUT
            for _ in range(2):  # both replicas notice everything at once, twice
                await asyncio.gather(*(t for m in (m1, m2) for t in (m.watchdog.tick(), m.hosts.tick())))
            events = await event_messages(url)
            assert sorted(e["payload"]["host"] for e in of_type(events, "HostLost")) == ["h7", "h8"]
            assert {lb_of(e) for e in of_type(events, "LoadBalancerProvisioningTimedOut")} == lbs
            assert len(of_type(events, "LoadBalancerProvisioningTimedOut")) == 3
            sent = [m.watchdog.sent + m.hosts.sent for m in (m1, m2)]
            assert sum(sent) >= 5, sent  # commands answered ok (a duplicate gets the first reply)
            await cmd(nc, "_host.host.register", {"host": "h9", "providers": ["haproxy"]})
            await wait_for(lambda: "h9" in m1.hosts.state.hosts, timeout=10)

        # h9 is silent for long with no monitor running. A replica that starts now grants every
        # registered host a grace period: h9 is lost a full timeout after the start, not at once.
        clock.advance(3 * HOST_TIMEOUT)
        async with monitors(url, clock) as m3:
            await wait_for(lambda: "h9" in m3.hosts.state.hosts, timeout=10)
            await m3.hosts.tick()
            clock.advance(HOST_TIMEOUT)
            await m3.hosts.tick()
            assert m3.hosts.sent == 0
            clock.advance(0.01)
            await m3.hosts.tick()
            lost = [e["payload"]["host"] for e in of_type(await event_messages(url), "HostLost")]
            assert sorted(lost[:2]) == ["h7", "h8"] and lost[2:] == ["h9"]
    finally:
        for s in services:
            await s.stop()


async def test_monitors_follow_the_stream_again_after_a_server_restart(
    fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitors inside the service, on the real clock and timer: a server restart loses
    their consumers; they read on from where they were and act on what comes after."""
    monkeypatch.setattr(_Monitor, "HEARTBEAT", 0.2)
    s = CommandService(fresh_nats.url, env={"SPLICE_PENDING_TIMEOUT": "1"})
    await s.start()
    try:
        assert s._monitors is not None
        watchdog = s._monitors.watchdog
        await wait_for(lambda: watchdog.caught_up, timeout=5)
        fresh_nats.stop()
        fresh_nats.start()  # same port, same store; the monitors' consumer is gone
        conn = await nats.connect(fresh_nats.url)
        try:
            async def created() -> bool:
                with contextlib.suppress(Exception):
                    await create_lb(conn, await network(conn), "late")
                    return True
                return False

            await wait_for(created, timeout=15, every=0.5)
            await until(fresh_nats.url, lambda ev: of_type(ev, "LoadBalancerProvisioningTimedOut"))
            assert watchdog.follower is not None and watchdog.follower.resets >= 1
        finally:
            await conn.close()
    finally:
        await s.stop()
