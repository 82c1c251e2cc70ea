"""The background monitors: the PENDING watchdog and the host monitor (heartbeats).

The pure trackers are checked directly; the rest runs against a real nats-server with the
command service in-process, the monitors inside it, and short timeouts.
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

from splice.natsserver import NatsServer
from splice.services.monitors import HostTracker, PendingTracker, _Monitor, lost_command_id
from splice.services.service import CommandService

T = "acme"
ENV = {"SPLICE_PENDING_TIMEOUT": "1", "SPLICE_HOST_TIMEOUT": "1.5"}


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


@pytest.fixture
async def nc(fresh_nats: NatsServer) -> AsyncIterator[Any]:
    conn = await nats.connect(fresh_nats.url)
    yield conn
    await conn.close()


@pytest.fixture
async def svc(fresh_nats: NatsServer) -> AsyncIterator[CommandService]:
    s = CommandService(fresh_nats.url, env=ENV)
    await s.start()
    yield s
    await s.stop()


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


def of_type(events: list[dict[str, Any]], topic: str) -> list[dict[str, Any]]:
    return [m for m in events if m["headers"].get("Splice-Topic") == topic]


def lb_of(m: dict[str, Any]) -> str:
    return str(m["subject"].split(".")[4])


async def until(url: str, cond: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll the stream until `cond(events)` holds; the events then."""
    seen: list[dict[str, Any]] = []

    async def check() -> bool:
        seen[:] = await event_messages(url)
        return bool(cond(seen))

    await wait_for(check, timeout=timeout, every=0.1)
    return seen


@contextlib.asynccontextmanager
async def heartbeats(nc: Any, host: str, every: float = 0.3) -> AsyncIterator[None]:
    """An agent's heartbeats on splice.hb.<host> while the block runs."""

    async def beat() -> None:
        while True:
            await nc.publish(f"splice.hb.{host}", b"")
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watchdog_expires_what_no_agent_reports(svc: CommandService, nc: Any) -> None:
    url = svc.nats_url
    net = await network(nc)
    # reported ACTIVE at once; then a second one, reported for generation 1 and then updated
    active = (await cmd(nc, f"{T}.loadbalancer.create", {"name": "a", "vip_network_id": net}))["id"]
    await cmd(nc, "_host.loadbalancer.report", {"tenant": T, "loadbalancer_id": active, "host": "h1",
                                                "generation": 1, "status": "ACTIVE"})
    updated = (await cmd(nc, f"{T}.loadbalancer.create", {"name": "u", "vip_network_id": net}))["id"]
    await cmd(nc, "_host.loadbalancer.report", {"tenant": T, "loadbalancer_id": updated, "host": "h1",
                                                "generation": 1, "status": "ACTIVE"})
    await cmd(nc, f"{T}.loadbalancer.update", {"id": updated, "description": "v2"})
    stuck = (await cmd(nc, f"{T}.loadbalancer.create", {"name": "s", "vip_network_id": net}))["id"]

    events = await until(url, lambda ev: {lb_of(m) for m in of_type(ev, "LoadBalancerProvisioningTimedOut")}
                         >= {stuck, updated})
    timed_out = {lb_of(m): m for m in of_type(events, "LoadBalancerProvisioningTimedOut")}
    # `active` was due first (oldest first, one command after the other): it would be there
    assert active not in timed_out
    assert timed_out[stuck]["payload"]["generation"] == 1
    assert timed_out[updated]["payload"]["generation"] == 2
    assert timed_out[updated]["headers"]["Splice-Command-Id"] == f"expire-{updated}-2"
    assert timed_out[stuck]["headers"]["Splice-Actor"] == "watchdog"
    assert "PENDING_CREATE" in timed_out[stuck]["payload"]["reason"]
    assert "PENDING_UPDATE" in timed_out[updated]["payload"]["reason"]

    # a new generation of an ERROR load balancer is pending again, and times out again
    await cmd(nc, f"{T}.loadbalancer.update", {"id": stuck, "description": "again"})
    events = await until(url, lambda ev: any(
        lb_of(m) == stuck and m["payload"]["generation"] == 2
        for m in of_type(ev, "LoadBalancerProvisioningTimedOut")))
    assert len([m for m in of_type(events, "LoadBalancerProvisioningTimedOut") if lb_of(m) == stuck]) == 2


async def test_host_monitor_declares_silent_host_lost_and_moves_its_lb(
    svc: CommandService, nc: Any
) -> None:
    url = svc.nats_url
    net = await network(nc)
    async with heartbeats(nc, "h2"):
        async with heartbeats(nc, "h1"):
            await cmd(nc, "_host.host.register", {"host": "h1", "providers": ["haproxy"]})
            lb = (await cmd(nc, f"{T}.loadbalancer.create", {"name": "lb", "vip_network_id": net}))["id"]
            await cmd(nc, "_host.host.register", {"host": "h2", "providers": ["haproxy"]})
            # heartbeats flow for twice the timeout: nobody is lost
            await asyncio.sleep(3.0)
            events = await event_messages(url)
            assert of_type(events, "HostLost") == []
            scheduled = [m for m in of_type(events, "LoadBalancerScheduled") if lb_of(m) == lb]
            assert [m["payload"]["host"] for m in scheduled] == ["h1"]
        # h1 falls silent; h2 keeps beating
        events = await until(url, lambda ev: of_type(ev, "HostLost"), timeout=8)
        lost = of_type(events, "HostLost")
        assert [m["payload"]["host"] for m in lost] == ["h1"]
        registered = [m for m in of_type(events, "HostRegistered") if m["payload"]["host"] == "h1"]
        assert lost[0]["headers"]["Splice-Command-Id"] == f"lost-h1-{registered[-1]['seq']}"
        assert lost[0]["headers"]["Splice-Actor"] == "host-monitor"
        scheduled = [m for m in of_type(events, "LoadBalancerScheduled") if lb_of(m) == lb]
        moved = scheduled[-1]["payload"]
        assert (moved["host"], moved["previous_host"]) == ("h2", "h1")
        # a while longer: h2, still beating, is not lost
        await asyncio.sleep(2.0)
        assert [m["payload"]["host"] for m in of_type(await event_messages(url), "HostLost")] == ["h1"]


async def test_two_replicas_one_effect_and_a_restart_grace(fresh_nats: NatsServer, nc: Any) -> None:
    url = fresh_nats.url
    s1, s2 = CommandService(url, env=ENV), CommandService(url, env=ENV)
    await s1.start()
    await s2.start()
    try:
        net = await network(nc)
        lbs = [(await cmd(nc, f"{T}.loadbalancer.create", {"name": f"l{i}", "vip_network_id": net}))["id"]
               for i in range(3)]
        for h in ("h7", "h8"):
            await cmd(nc, "_host.host.register", {"host": h, "providers": ["haproxy"]})
        events = await until(url, lambda ev: len(of_type(ev, "HostLost")) >= 2
                             and len(of_type(ev, "LoadBalancerProvisioningTimedOut")) >= 3)
        # both replicas keep checking for a few more ticks; still one event each
        await asyncio.sleep(1.5)
        events = await event_messages(url)
        assert sorted(m["payload"]["host"] for m in of_type(events, "HostLost")) == ["h7", "h8"]
        assert sorted(lb_of(m) for m in of_type(events, "LoadBalancerProvisioningTimedOut")) == sorted(lbs)
        sent = []
        for s in (s1, s2):
            assert s._monitors is not None
            sent.append(s._monitors.watchdog.sent + s._monitors.hosts.sent)
        assert sum(sent) >= 5, sent  # commands answered ok (a duplicate gets the first reply)

        # h9 registers and beats while both replicas stop; then it falls silent for longer
        # than the timeout. A replica that starts now grants every registered host a grace
        # period: h9 is declared lost a full timeout after the start, not at the first check.
        async with heartbeats(nc, "h9"):
            await cmd(nc, "_host.host.register", {"host": "h9", "providers": ["haproxy"]})
            await s2.stop()
            await s1.stop()
        await asyncio.sleep(2.0)  # silent, with no monitor running
        s3 = CommandService(url, env=ENV)
        started = time.monotonic()
        await s3.start()
        try:
            events = await until(url, lambda ev: len(of_type(ev, "HostLost")) == 3, timeout=8)
            assert time.monotonic() - started >= 1.5
            assert of_type(events, "HostLost")[-1]["payload"]["host"] == "h9"
        finally:
            await s3.stop()
    finally:
        await s2.stop()
        await s1.stop()


async def test_monitors_follow_the_stream_again_after_a_server_restart(
    fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Monitor, "STALL_CHECK", 0.5)
    s = CommandService(fresh_nats.url, env=ENV)
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
                    net = await network(conn)
                    await cmd(conn, f"{T}.loadbalancer.create", {"name": "late", "vip_network_id": net})
                    return True
                return False

            await wait_for(created, timeout=15, every=0.5)
            await until(fresh_nats.url, lambda ev: of_type(ev, "LoadBalancerProvisioningTimedOut"))
        finally:
            await conn.close()
    finally:
        await s.stop()
