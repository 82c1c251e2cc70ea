"""The whole loop: commands over NATS → events → the agent → namespaces and haproxy → traffic,
and the agent's reports back as events. Real nats-server, real namespaces, real haproxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from splice.agents import netns as agent_netns
from splice.agents.model import NetworkSpec
from splice.agents.runtime import Agent
from splice.natsserver import NatsServer
from splice.services.service import CommandService
from tests.dataplane.fabric import PREFIX, Fabric, sweep

T = "e2e"


async def off_loop(fn: Any, *args: Any) -> Any:
    """pyroute2 runs an event loop of its own: call it from a worker thread."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def lb_namespaces() -> list[str]:
    return list(agent_netns.list_namespaces(f"{PREFIX}lb-"))


def drop_namespaces() -> None:
    for ns in lb_namespaces():
        agent_netns.kill_namespace_processes(ns)
        agent_netns.delete_namespace(ns)


class Running:
    def __init__(self, url: str, agent: Agent, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.url, self.agent, self.stop, self.task = url, agent, stop, task


async def start_agent(url: str, state: Path) -> Running:
    agent = Agent(url, "e2e-host", state, providers=["haproxy"], prefix=PREFIX, resync_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    return Running(url, agent, stop, task)


async def stop_agent(r: Running) -> None:
    r.stop.set()
    await asyncio.wait_for(r.task, 30)


@pytest.fixture
async def world(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    if os.geteuid() != 0:
        raise RuntimeError("needs root")
    svc = CommandService(fresh_nats.url)
    await svc.start()
    nc = await nats.connect(fresh_nats.url)
    fab: Fabric | None = None
    running: Running | None = None
    try:
        st = await cmd(nc, "_admin.servicetype.create", {"name": "e2e", "providers": {"loadbalancer": "haproxy"}})
        net = await cmd(nc, f"{T}.network.create", {"name": "e2e", "cidr": "10.77.7.0/24"})
        fab = Fabric(tag="e2", members=3)
        fab.network = NetworkSpec(net["id"], "10.77.7.0/24", "10.77.7.1")
        fab.bridge = fab.network.bridge_name(PREFIX)
        await off_loop(fab.build)
        running = await start_agent(fresh_nats.url, tmp_path / "agent")
        yield {"nc": nc, "fab": fab, "net": net["id"], "st": st["id"], "agent": running,
               "url": fresh_nats.url, "state": tmp_path / "agent"}
    finally:
        if running is not None and not running.task.done():
            await stop_agent(running)
        if fab is not None:
            await off_loop(fab.teardown)
        await off_loop(sweep, PREFIX)
        await nc.close()
        await svc.stop()


async def cmd(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"command_id": str(uuid.uuid4()), "actor": "e2e", **body}
    reply = json.loads((await nc.request(f"splice.cmd.{subject}", json.dumps(body).encode(), timeout=15)).data)
    assert reply["ok"], (subject, reply)
    return dict(reply)


async def events_of(url: str, lb: str) -> list[tuple[str, dict[str, Any]]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"splice.evt.{T}.loadbalancer.{lb}.*", ordered_consumer=True)
        out = []
        while True:
            try:
                m = await sub.next_msg(timeout=0.5)
            except Exception:
                break
            out.append((m.headers["Splice-Topic"], json.loads(m.data)))
            if m.metadata.num_pending == 0:
                break
        return out
    finally:
        await nc.close()


async def wait_event(url: str, lb: str, pred: Any, deadline: float = 30) -> list[tuple[str, dict[str, Any]]]:
    end = time.monotonic() + deadline
    while True:
        evs = await events_of(url, lb)
        if pred(evs):
            return evs
        if time.monotonic() > end:
            raise AssertionError(f"timed out; events: {[t for t, _ in evs]}")
        await asyncio.sleep(0.2)


def provisioned(generation: int) -> Any:
    return lambda evs: any(t == "LoadBalancerProvisioned" and p["generation"] >= generation for t, p in evs)


def create_body(fab: Fabric, net: str) -> dict[str, Any]:
    return {
        "name": "web", "vip_network_id": net, "vip_address": "10.77.7.100",
        "pools": [{"name": "web", "protocol": "HTTP", "members": [
            {"address": m.address, "protocol_port": 8080} for m in fab.members],
            "healthmonitor": {"type": "HTTP", "delay": 1, "timeout": 1, "max_retries": 1,
                              "max_retries_down": 1, "url_path": "/healthz"}}],
        "listeners": [{"name": "http", "protocol": "HTTP", "protocol_port": 80, "default_pool": "web"}],
    }


async def get(fab: Fabric, host: str, port: int) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fab.get, host, port)


async def test_a_load_balancer_created_by_command_serves_traffic_and_reports_active(
    world: dict[str, Any],
) -> None:
    nc, fab, url = world["nc"], world["fab"], world["url"]
    lb = (await cmd(nc, f"{T}.loadbalancer.create", create_body(fab, world["net"])))["id"]
    evs = await wait_event(url, lb, provisioned(1))
    scheduled = [p for t, p in evs if t == "LoadBalancerScheduled"]
    assert scheduled and scheduled[-1]["host"] == "e2e-host", evs
    # created before the agent registered: it waited for a host offering haproxy, said so
    assert all(p["host"] == "" and p["waiting_for"] == "haproxy" for p in scheduled[:-1]), evs
    bodies = Counter()
    for _ in range(30):
        r = await get(fab, "10.77.7.100", 80)
        assert r.status == 200
        bodies[r.body.split()[0]] += 1
    assert set(bodies) == {"member0", "member1", "member2"}  # round robin reaches every member
    await wait_event(url, lb, lambda e: any(t == "LoadBalancerOperatingStatusChanged" for t, _ in e))

    # a change while the agent works: the next generation converges and is reported
    pool = next(p for t, p in evs if t == "LoadBalancerCreated")["pools"][0]["id"]
    await cmd(nc, f"{T}.member.batch_update", {"loadbalancer_id": lb, "pool_id": pool, "members": [
        {"address": fab.members[0].address, "protocol_port": 8080}]})
    await wait_event(url, lb, provisioned(2))
    assert {(await get(fab, "10.77.7.100", 80)).body.split()[0] for _ in range(6)} == {"member0"}

    # delete: namespace and haproxy gone, the state ends DELETED
    await cmd(nc, f"{T}.loadbalancer.delete", {"id": lb})
    evs = await wait_event(url, lb, lambda e: e[-1][0] == "LoadBalancerDeleted")
    assert not await off_loop(lb_namespaces)


async def test_the_agent_restarts_from_its_snapshot_and_repairs_what_changed_meanwhile(
    world: dict[str, Any],
) -> None:
    nc, fab, url = world["nc"], world["fab"], world["url"]
    lb = (await cmd(nc, f"{T}.loadbalancer.create", create_body(fab, world["net"])))["id"]
    await wait_event(url, lb, provisioned(1))
    await stop_agent(world["agent"])
    snapshot = json.loads((world["state"] / "agent-e2e-host.json").read_text())
    assert snapshot["seq"] > 0 and any(lb in k for k in snapshot["lbs"])

    # while the agent is down: a namespace is deleted by hand and the pool changes
    await off_loop(drop_namespaces)
    pool_id = (await events_of(url, lb))[0][1]["pools"][0]["id"]
    await cmd(nc, f"{T}.member.batch_update", {"loadbalancer_id": lb, "pool_id": pool_id, "members": [
        {"address": fab.members[1].address, "protocol_port": 8080}]})

    world["agent"] = await start_agent(url, world["state"])
    assert world["agent"].agent.seq == snapshot["seq"]  # resumed, not replayed from the start
    await wait_event(url, lb, provisioned(2))
    deadline = time.monotonic() + 20
    while True:
        try:
            r = await get(fab, "10.77.7.100", 80)
            if r.status == 200 and r.body.startswith("member1"):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the load balancer was not repaired"
        await asyncio.sleep(0.2)
    assert len(await off_loop(lb_namespaces)) == 1


# The five load balancers the command side used to accept and the agent then refused: each is
# now refused with the field named (nothing stored), or ends ACTIVE and serving.
FIVE: dict[str, tuple[dict[str, Any], dict[str, Any], str | None]] = {
    "HTTP_COOKIE with a cookie name": (
        {"session_persistence": {"type": "HTTP_COOKIE", "cookie_name": "sid"}}, {},
        "$.pools[0].session_persistence.cookie_name"),
    "a PATH rule with a key": (
        {}, {"l7policies": [{"action": "REJECT", "rules": [
            {"type": "PATH", "compare_type": "EQUAL_TO", "value": "/x", "key": "k"}]}]},
        "$.listeners[0].l7policies[0].rules[0].key"),
    "a monitor delay over 3600 s": (
        {"healthmonitor": {"type": "HTTP", "delay": 7200, "timeout": 5}}, {}, None),
    "a listener timeout of 0": ({}, {"timeout_client_data": 0}, None),
    "connection_limit 0": ({}, {"connection_limit": 0}, "$.listeners[0].connection_limit"),
}


@pytest.mark.parametrize("case", sorted(FIVE))
async def test_each_case_the_agent_used_to_refuse_is_refused_naming_the_field_or_serves(
    world: dict[str, Any], case: str
) -> None:
    nc, fab, url = world["nc"], world["fab"], world["url"]
    pool_extra, listener_extra, field = FIVE[case]
    body = create_body(fab, world["net"])
    body["pools"][0].pop("healthmonitor")
    body["pools"][0].update(pool_extra)
    body["listeners"][0].update(listener_extra)
    msg = await nc.request(f"splice.cmd.{T}.loadbalancer.create", json.dumps(
        {"command_id": str(uuid.uuid4()), "actor": "e2e", **body}).encode(), timeout=15)
    reply = json.loads(msg.data)
    if field is not None:
        assert reply["ok"] is False and reply["error"]["field"] == field, reply
        return
    assert reply["ok"] is True, reply
    lb = reply["id"]
    evs = await wait_event(url, lb, lambda e: any(
        t in ("LoadBalancerProvisioned", "LoadBalancerProvisioningFailed") for t, _ in e))
    assert not any(t == "LoadBalancerProvisioningFailed" for t, _ in evs), evs
    deadline = time.monotonic() + 20
    while True:
        try:
            if (await get(fab, "10.77.7.100", 80)).status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "ACTIVE but not serving"
        await asyncio.sleep(0.2)
    await cmd(nc, f"{T}.loadbalancer.delete", {"id": lb})
    await wait_event(url, lb, lambda e: e[-1][0] == "LoadBalancerDeleted")
