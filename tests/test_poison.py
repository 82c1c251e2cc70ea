"""Readers survive poison: a forged event that breaks its schema, published with the services'
own credentials, is set aside by the projector, the agent and the command side, and all three
go on (issue 11, part 3).

The end-to-end test runs the command service, the projector and an agent against a real
nats-server. The agent's host driver is a stand-in that records what the agent asks it to
serve: these tests are about the readers, not haproxy (the dataplane tests cover that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from eventsourcing.persistence import StoredEvent

from splice.agents.model import LoadBalancerSpec
from splice.agents.runtime import Agent
from splice.events import subjects
from splice.events.follow import Delivery
from splice.events.metrics import set_aside_count
from splice.natsserver import NatsServer
from splice.projections.maintenance import verify
from splice.projections.runner import run_projector
from splice.services.domain import PoisonedError
from splice.services.service import CommandService
from tests.helpers import event_messages, wait_for
from tests.world import World

pytestmark = pytest.mark.trust

T, OTHER = "acme", "globex"
HOST = "poison-host"


def forged_update(version: int, **fields: Any) -> tuple[dict[str, str], bytes]:
    """Headers and body of a `LoadBalancerUpdated` as the store writes one, with `fields` over
    a valid body (so that the body breaks its schema exactly where the test says)."""
    command_id = str(uuid.uuid4())
    body = {
        "type": "LoadBalancerUpdated",
        "timestamp": datetime.now(UTC).isoformat(),
        "actor": "mallory",
        "command_id": command_id,
        "correlation_id": command_id,
        "schema": 1,
        "command_tenant": T,
        "name": "web",
        "description": "",
        "admin_state_up": True,
        "generation": version + 1,
        **fields,
    }
    headers = {
        subjects.H_VERSION: str(version),
        subjects.H_TOPIC: "LoadBalancerUpdated",
        subjects.H_ACTOR: "mallory",
        subjects.H_COMMAND_ID: command_id,
        subjects.H_CORRELATION_ID: command_id,
    }
    return headers, json.dumps(body).encode()


# -- the command side, without I/O ---------------------------------------------------------------


def test_a_poisoned_aggregate_refuses_commands_with_poisoned_and_others_go_on() -> None:
    w = World()
    try:
        net = w.cmd(T, "CreateNetwork", name="n", cidr="10.9.0.0/24")
        w.cmd("_admin", "CreateServiceType", name="lb", providers={"loadbalancer": "haproxy"})
        lb1 = w.cmd(T, "CreateLoadBalancer", name="one", vip_network_id=net)
        lb2 = w.cmd(T, "CreateLoadBalancer", name="two", vip_network_id=net)
        agg = w.get(T, "loadbalancer", lb1)
        _, body = forged_update(agg.version + 1, name=42)
        w.app.recorder.insert_events([_stored(agg.id, agg.version + 1, "LoadBalancerUpdated", body)])
        before = set_aside_count("command")
        for command, fields in (("UpdateLoadBalancer", {"id": lb1, "name": "x"}),
                                ("DeleteLoadBalancer", {"id": lb1}),
                                ("CreateListener", {"loadbalancer_id": lb1, "listener": {
                                    "name": "l", "protocol": "TCP", "protocol_port": 80}})):
            with pytest.raises(PoisonedError) as refused:
                w.cmd(T, command, **fields)
            e = refused.value
            assert e.code == "poisoned" and e.field is None
            assert lb1 in e.message and "LoadBalancerUpdated" in e.message
            assert "Expected `str`, got `int`" in e.message
        assert set_aside_count("command") == before + 1  # one event, however many refusals
        w.cmd(T, "UpdateLoadBalancer", id=lb2, name="renamed")  # another aggregate: fine
        assert w.get(T, "loadbalancer", lb2).state.name == "renamed"
        w.cmd(T, "CreateNetwork", name="m", cidr="10.8.0.0/24")  # commands not reading it: fine
    finally:
        w.close()


def _stored(agg_id: str, version: int, topic: str, body: bytes) -> StoredEvent:
    return StoredEvent(originator_id=agg_id, originator_version=version, topic=topic, state=body)


# -- the agent's fold, without I/O ---------------------------------------------------------------


def delivery(seq: int, agg_id: str, topic: str, body: bytes | dict[str, Any]) -> Delivery:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    tenant, kind, ident = agg_id.split(".")
    return Delivery(seq, subjects.event(tenant, kind, ident, topic), topic, data,
                    {subjects.H_TOPIC: topic}, 0, 0)


async def test_the_agent_changes_nothing_on_a_bad_event_and_applies_the_next_ones(
    tmp_path: Path,
) -> None:
    lb = f"{T}.loadbalancer.{uuid.uuid4()}"
    agent = Agent("nats://127.0.0.1:1", HOST, tmp_path, providers=["haproxy"])
    try:
        meta = {"timestamp": datetime.now(UTC).isoformat(), "actor": "a", "command_id": "c",
                "correlation_id": "c"}
        pool = {"id": str(uuid.uuid4()), "name": "p", "protocol": "TCP", "members": []}
        created = {"type": "LoadBalancerCreated", **meta, "name": "web", "description": "",
                   "vip_network_id": str(uuid.uuid4()), "vip_address": "10.0.0.5",
                   "vip_port_id": str(uuid.uuid4()), "generation": 1, "admin_state_up": True,
                   "insertion": {"mode": "floating", "service_type_id": str(uuid.uuid4()),
                                 "provider": "haproxy"}, "pools": [pool], "listeners": []}
        await agent.on_event(delivery(1, lb, "LoadBalancerCreated", created))
        member_id = str(uuid.uuid4())
        agent.lbs[lb].statuses[member_id] = "ONLINE"  # as reported
        served = agent.lbs[lb]
        good = msgspec.json.encode(served)
        _, broken = forged_update(2, name=42)
        with pytest.raises(msgspec.ValidationError):  # the follower sets it aside
            await agent.on_event(delivery(2, lb, "LoadBalancerUpdated", broken))
        assert agent.lbs[lb] is served
        # decodes, but cannot be applied (no such pool), after its applier forgot the status
        member = {"type": "MemberDeleted", **meta, "pool_id": str(uuid.uuid4()),
                  "member_id": member_id, "generation": 2}
        with pytest.raises(KeyError):
            await agent.on_event(delivery(3, lb, "MemberDeleted", member))
        assert agent.lbs[lb] is served and msgspec.json.encode(served) == good
        # a bad first event leaves no empty load balancer behind
        other = f"{T}.loadbalancer.{uuid.uuid4()}"
        with pytest.raises(msgspec.ValidationError):
            await agent.on_event(delivery(4, other, "LoadBalancerCreated", {**created, "name": 7}))
        assert other not in agent.lbs
        update = {"type": "LoadBalancerUpdated", **meta, "name": "next", "description": "",
                  "admin_state_up": True, "generation": 2}
        await agent.on_event(delivery(5, lb, "LoadBalancerUpdated", update))
        assert agent.lbs[lb].name == "next" and agent.seq == 5
    finally:
        for driver in agent.drivers.values():
            driver.close()


# -- end to end: command service, projector, agent; a forged event -------------------------------


class ServingDriver:
    """Stands in for the host driver: what the agent last asked it to serve."""

    provider = "haproxy"

    def __init__(self) -> None:
        self.served: dict[str, LoadBalancerSpec] = {}

    async def converge(self, desired: Mapping[str, LoadBalancerSpec]) -> dict[str, Any]:
        self.served = dict(desired)
        return {}

    async def run_resync(self, interval_s: float, stop: asyncio.Event) -> None:
        await stop.wait()

    def close(self) -> None:
        pass


async def command(nc: Any, tenant: str, what: str, body: dict[str, Any]) -> dict[str, Any]:
    """A command as the CLI sends it: with a command id."""
    body = {"command_id": str(uuid.uuid4()), "actor": "tester", **body}
    msg = await nc.request(f"splice.cmd.{tenant}.{what}", json.dumps(body).encode(), timeout=15)
    return dict(json.loads(msg.data))


async def ok(nc: Any, tenant: str, what: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await command(nc, tenant, what, body)
    assert reply["ok"], (what, reply)
    return reply


async def query(nc: Any, tenant: str, view: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    msg = await nc.request(f"splice.qry.{tenant}.{view}", json.dumps(body).encode(), timeout=15)
    reply = json.loads(msg.data)
    assert reply["ok"], reply
    return list(reply["items"])


@pytest.fixture
async def running(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    url = fresh_nats.url
    db = str(tmp_path / "readmodels.sqlite")
    stop = asyncio.Event()
    svc = CommandService(url)
    await svc.start()
    projecting = asyncio.create_task(run_projector(url, db, stop, batch_size=200))
    agent = Agent(url, HOST, tmp_path / "agent", providers=["haproxy"], resync_s=3600)
    for real in agent.drivers.values():
        real.close()
    driver = ServingDriver()
    agent.drivers = {"haproxy": driver}  # type: ignore[dict-item]
    serving = asyncio.create_task(agent.run(stop))
    nc = await nats.connect(url)
    try:
        await wait_for(agent.ready.is_set, 15)
        yield {"url": url, "db": db, "nc": nc, "agent": agent, "driver": driver}
    finally:
        stop.set()
        for task in (serving, projecting):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 20)
        await nc.close()
        await svc.stop()


async def test_a_forged_event_is_set_aside_by_projector_agent_and_command_side_which_go_on(
    running: dict[str, Any],
) -> None:
    started = time.monotonic()
    nc, agent, driver = running["nc"], running["agent"], running["driver"]
    counts = {r: set_aside_count(r) for r in ("projector", "agent", "command")}
    await ok(nc, "_admin", "servicetype.create",
             {"name": "lb", "providers": {"loadbalancer": "haproxy"}})
    net = (await ok(nc, T, "network.create", {"name": "n", "cidr": "10.66.0.0/24"}))["id"]
    lb1 = (await ok(nc, T, "loadbalancer.create", {"name": "web-1", "vip_network_id": net}))["id"]
    lb2 = (await ok(nc, T, "loadbalancer.create", {"name": "web-2", "vip_network_id": net}))["id"]
    # the agent serves both (its network is known to it: the stand-in driver gets both)
    await wait_for(lambda: {lb1, lb2} <= set(driver.served), 15)

    # the forgery: the next version of lb1, on its subject, with the store's headers
    mine = [m for m in await event_messages(running["url"])
            if m["subject"].startswith(f"splice.evt.{T}.loadbalancer.{lb1}.")]
    version = max(int(m["headers"][subjects.H_VERSION]) for m in mine)
    headers, body = forged_update(version + 1, name=42)
    subject = subjects.event(T, "loadbalancer", lb1, "LoadBalancerUpdated")
    forger = await nats.connect(running["url"])
    try:
        forged = (await forger.jetstream().publish(subject, body, headers=headers)).seq
    finally:
        await forger.close()

    # the command side: lb1 is refused with a structured error, lb2 and others are served
    for what, fields in (("loadbalancer.update", {"id": lb1, "name": "web-x"}),
                         ("loadbalancer.delete", {"id": lb1}),
                         ("listener.create", {"loadbalancer_id": lb1, "listener": {
                             "name": "l", "protocol": "TCP", "protocol_port": 80}})):
        reply = await command(nc, T, what, fields)
        assert not reply["ok"], (what, reply)
        error = reply["error"]
        assert error["code"] == "poisoned", (what, error)
        assert lb1 in error["message"] and f"stream seq {forged}" in error["message"]
        assert error["field"] is None
    renamed = await ok(nc, T, "loadbalancer.update", {"id": lb2, "name": "web-2b"})
    later = await ok(nc, OTHER, "network.create", {"name": "g", "cidr": "10.67.0.0/24"})

    # the projector: the audit log says what was set aside, and the views went on
    [row] = await query(nc, T, "audit", {"from_seq": forged, "to_seq": forged,
                                         "min_seq": forged, "wait": 15})
    assert row["type"] == "LoadBalancerUpdated" and row["actor"] == "mallory"
    assert f"seq {forged} on {subject} was set aside by loadbalancers: " in row["summary"]
    assert "Expected `str`, got `int`" in row["summary"]
    [lb] = await query(nc, T, "loadbalancers", {"id": lb2, "min_seq": renamed["seq"], "wait": 15})
    assert lb["name"] == "web-2b"
    [lb] = await query(nc, T, "loadbalancers", {"id": lb1})
    assert lb["name"] == "web-1"  # what the last readable event said
    assert await query(nc, OTHER, "networks", {"id": later["id"], "min_seq": later["seq"],
                                               "wait": 15})
    js = nc.jetstream()
    report = await asyncio.wait_for(verify(js, running["db"]), 60)
    assert report["identical"] is False  # it skipped something, though a rebuild agrees:
    assert all(t["identical"] for t in report["tables"].values())
    assert report["set_aside"]["events"] == 1
    [example] = report["set_aside"]["examples"]
    assert (example["seq"], example["subject"]) == (forged, subject)
    assert list(example["views"]) == ["loadbalancers"]

    # the agent: set aside, still serving lb1 as it was, and it went on with lb2's rename
    await wait_for(lambda: agent.follower is not None
                   and any(r.seq == forged for r in agent.follower.set_aside), 15)
    await wait_for(lambda: lb2 in driver.served
                   and driver.served[lb2].state.name == "web-2b", 15)
    assert lb1 in driver.served and driver.served[lb1].state.name == "web-1"

    # each reader counted the event once
    assert set_aside_count("projector") == counts["projector"] + 1
    assert set_aside_count("agent") == counts["agent"] + 1
    assert set_aside_count("command") == counts["command"] + 1
    assert time.monotonic() - started < 30
