"""Exact idempotency: a command id has one effect and one answer for as long as the stream
keeps it — after any number of other changes, when sent many times at once, across replicas,
after a restart of the service, and also when its first handling changed nothing.

Real nats-server (the `fresh_nats` fixture), the command service in this process, and a plain
NATS client sending JSON as any client would.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from helpers import event_messages, request, stream_messages
from nats.errors import NoRespondersError

from splice.natsserver import NatsServer
from splice.services.service import CommandService

pytestmark = pytest.mark.trust

T = "acme"
NO_MONITORS = {"SPLICE_MONITORS": "off"}


@pytest.fixture
async def nc(fresh_nats: NatsServer) -> AsyncIterator[Any]:
    conn = await nats.connect(fresh_nats.url)
    yield conn
    await conn.close()


class Replica:
    """One command service that the test can restart (a new process: nothing cached)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.service: CommandService | None = None

    async def start(self) -> None:
        self.service = CommandService(self.url, env=NO_MONITORS)
        await self.service.start()
        await self.answering()

    async def answering(self, timeout: float = 10.0) -> None:
        """Until the service answers a request (a refusal will do): ready for the test."""
        probe = await nats.connect(self.url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await probe.request("splice.cmd.acme.nothing.here", b"{}", timeout=1)
                    return
                except (NoRespondersError, nats.errors.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await probe.close()

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def executor(self) -> Any:
        assert self.service is not None and self.service._executor is not None
        return self.service._executor

    def forget_replies(self) -> None:
        """Drop the service's memory of recent replies (as 10,000 other commands would), so
        that a repeat is recognised from the stream and the aggregates, not from that memory."""
        self.executor._inflight.forget()


@pytest.fixture
async def svc(fresh_nats: NatsServer) -> AsyncIterator[Replica]:
    r = Replica(fresh_nats.url)
    await r.start()
    yield r
    await r.stop()


async def send(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    return await request(nc, f"splice.cmd.{subject}", {"actor": "it", **body})


async def ok(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await send(nc, subject, {"command_id": str(uuid.uuid4()), **body})
    assert reply["ok"], (subject, body, reply)
    return reply


async def lb_with_pool(nc: Any) -> tuple[str, str, str]:
    """A network, a default service type, a load balancer with one pool: (net, lb, pool)."""
    await ok(nc, "_admin.servicetype.create", {"name": "gold", "default": True,
                                               "providers": {"loadbalancer": "haproxy"}})
    net = (await ok(nc, f"{T}.network.create", {"name": "web", "cidr": "10.20.0.0/16"}))["id"]
    lb = (await ok(nc, f"{T}.loadbalancer.create", {"name": "lb", "vip_network_id": net}))["id"]
    pool = await ok(nc, f"{T}.pool.create", {"loadbalancer_id": lb,
                                             "pool": {"name": "p", "protocol": "HTTP"}})
    return str(net), str(lb), str(pool["id"])


def with_command(events: list[dict[str, Any]], command_id: str) -> list[dict[str, Any]]:
    return [m for m in events if m["headers"].get("Splice-Command-Id") == command_id]


def of_type(events: list[dict[str, Any]], topic: str) -> list[dict[str, Any]]:
    return [m for m in events if m["headers"].get("Splice-Topic") == topic]


async def test_a_retry_after_200_changes_gets_its_first_reply_and_changes_nothing(
    fresh_nats: NatsServer, svc: Replica, nc: Any
) -> None:
    """The bug seen: a pool.update resent after 130 other changes to the same load balancer was
    applied a second time and reverted the algorithm (the aggregate remembered 128 ids)."""
    _, lb, pool = await lb_with_pool(nc)
    change = {"command_id": str(uuid.uuid4()), "loadbalancer_id": lb, "id": pool,
              "lb_algorithm": "LEAST_CONNECTIONS"}
    first = await send(nc, f"{T}.pool.update", change)
    assert first["ok"] and first["seq"] is not None, first
    for i in range(199):
        await ok(nc, f"{T}.pool.update", {"loadbalancer_id": lb, "id": pool, "name": f"p{i}"})
    await ok(nc, f"{T}.pool.update", {"loadbalancer_id": lb, "id": pool,
                                      "lb_algorithm": "ROUND_ROBIN"})

    svc.forget_replies()  # recognised by the cached load balancer
    warm = await send(nc, f"{T}.pool.update", change)
    assert svc.executor.counts["repeats"] == 1
    await svc.restart()
    cold = await send(nc, f"{T}.pool.update", change)
    assert svc.executor.counts["repeats"] == 1

    assert warm == first
    assert cold == first
    events = await event_messages(fresh_nats.url)
    assert len(with_command(events, change["command_id"])) == 1
    updates = of_type(events, "PoolUpdated")
    assert len(updates) == 201
    assert updates[-1]["payload"]["pool"]["lb_algorithm"] == "ROUND_ROBIN"  # not reverted
    assert first["seq"] == with_command(events, change["command_id"])[0]["seq"]


@pytest.mark.parametrize("kind", ["one-event change", "multi-event create"])
async def test_concurrent_duplicates_join_the_one_in_flight(
    fresh_nats: NatsServer, svc: Replica, nc: Any, kind: str
) -> None:
    """20 sends of one command id at once: handled once (the others wait for it), one effect,
    20 identical replies."""
    net, lb, pool = await lb_with_pool(nc)
    cid = str(uuid.uuid4())
    if kind == "one-event change":
        subject = f"{T}.pool.update"
        body = {"command_id": cid, "loadbalancer_id": lb, "id": pool, "lb_algorithm": "SOURCE_IP"}
    else:
        subject = f"{T}.port.create"
        body = {"command_id": cid, "network_id": net, "name": "vm"}
    ex = svc.executor
    before = dict(ex.counts)
    replies = await asyncio.gather(*[send(nc, subject, body) for _ in range(20)])
    counts = {k: v - before.get(k, 0) for k, v in ex.counts.items()}
    print(f"\n{kind}: 20 sends -> {counts}")

    assert all(r["ok"] for r in replies), replies
    assert len({json.dumps(r, sort_keys=True) for r in replies}) == 1
    assert counts.get("runs") == 1, counts  # decided once
    assert counts.get("joined", 0) + counts.get("answered", 0) == 19, counts
    assert counts.get("refreshes", 0) == 0, counts  # no duplicate re-read anything
    events = with_command(await event_messages(fresh_nats.url), cid)
    if kind == "one-event change":
        assert [m["headers"]["Splice-Topic"] for m in events] == ["PoolUpdated"]
    else:
        assert len(of_type(events, "PortCreated")) == 1
        assert len(of_type(events, "AddressAllocated")) == 1


async def test_concurrent_duplicates_across_two_replicas_have_one_effect_and_one_reply(
    fresh_nats: NatsServer, nc: Any
) -> None:
    services = [CommandService(fresh_nats.url, env=NO_MONITORS) for _ in range(2)]
    for s in services:
        await s.start()
    try:
        _, lb, pool = await lb_with_pool(nc)
        for i in range(3):  # both replicas have the load balancer cached
            await ok(nc, f"{T}.pool.update", {"loadbalancer_id": lb, "id": pool, "name": f"w{i}"})
        body = {"command_id": str(uuid.uuid4()), "loadbalancer_id": lb, "id": pool,
                "lb_algorithm": "SOURCE_IP"}
        replies = await asyncio.gather(*[send(nc, f"{T}.pool.update", body) for _ in range(20)])
        handled = [s._executor.counts["runs"] for s in services if s._executor]
    finally:
        for s in services:
            await s.stop()
    assert all(r["ok"] for r in replies), replies
    assert len({json.dumps(r, sort_keys=True) for r in replies}) == 1
    assert len(with_command(await event_messages(fresh_nats.url), body["command_id"])) == 1
    print(f"\ncommands run per replica: {handled}")


async def test_a_repeated_expire_pending_always_gets_the_same_reply(
    fresh_nats: NatsServer, svc: Replica, nc: Any
) -> None:
    """The watchdogs of every replica send the same expire_pending, again and again: it times
    the generation out once, and every send gets the first answer — whatever happened since."""
    _, lb, _ = await lb_with_pool(nc)  # generation 2 is pending (no agent reports)
    expire = {"command_id": f"expire-{lb}-2", "id": lb, "generation": 2}
    first = await send(nc, f"{T}.loadbalancer.expire_pending", expire)
    assert first["ok"] and first["seq"] is not None, first
    replies = await asyncio.gather(
        *[send(nc, f"{T}.loadbalancer.expire_pending", expire) for _ in range(5)]
    )
    # the load balancer changes (generation 3 pending), and the repeats go on
    await ok(nc, f"{T}.loadbalancer.update", {"id": lb, "description": "later"})
    svc.forget_replies()
    replies.append(await send(nc, f"{T}.loadbalancer.expire_pending", expire))
    await svc.restart()  # a restarted service: nothing cached
    replies.append(await send(nc, f"{T}.loadbalancer.expire_pending", expire))
    assert all(r == first for r in replies), (first, replies)

    # one that changed nothing (generation 2 is no longer pending): its first answer is kept
    late = {"command_id": f"expire-{lb}-2-late", "id": lb, "generation": 2}
    nothing = await send(nc, f"{T}.loadbalancer.expire_pending", late)
    assert nothing["ok"] and nothing["seq"] is None, nothing
    await ok(nc, f"{T}.loadbalancer.update", {"id": lb, "description": "again"})
    svc.forget_replies()
    assert await send(nc, f"{T}.loadbalancer.expire_pending", late) == nothing
    await svc.restart()
    assert await send(nc, f"{T}.loadbalancer.expire_pending", late) == nothing

    events = await event_messages(fresh_nats.url)
    timed_out = of_type(events, "LoadBalancerProvisioningTimedOut")
    assert [m["headers"]["Splice-Command-Id"] for m in timed_out] == [expire["command_id"]]
    assert timed_out[0]["seq"] == first["seq"]


async def test_a_command_that_changed_nothing_keeps_its_first_answer(
    fresh_nats: NatsServer, svc: Replica, nc: Any
) -> None:
    """A command whose first send changed nothing is claimed (with no seq): sent again after the
    resource changed, it gets that first answer, not the resource's current version."""
    created = await ok(nc, "_admin.servicetype.create", {"name": "s", "description": "d",
                                                         "providers": {"loadbalancer": "haproxy"}})
    same = {"command_id": str(uuid.uuid4()), "id": created["id"], "description": "d"}
    first = await send(nc, "_admin.servicetype.update", same)
    assert first["ok"] and first["seq"] is None and first["version"] == created["version"], first
    await ok(nc, "_admin.servicetype.update", {"id": created["id"],
                                               "providers": {"loadbalancer": "nftables-l4"}})
    svc.forget_replies()
    assert await send(nc, "_admin.servicetype.update", same) == first
    await svc.restart()
    assert await send(nc, "_admin.servicetype.update", same) == first

    # Within the process that answered it, a repeat is not decided again at all, even once it
    # would change something (across processes, see the note in services/executor.py).
    again = {"command_id": str(uuid.uuid4()), "id": created["id"], "description": "d"}
    first_again = await send(nc, "_admin.servicetype.update", again)
    assert first_again["ok"] and first_again["seq"] is None, first_again
    changed = await ok(nc, "_admin.servicetype.update", {"id": created["id"], "description": "e"})
    assert await send(nc, "_admin.servicetype.update", again) == first_again

    messages = await stream_messages(fresh_nats.url)
    for cid in (same["command_id"], again["command_id"]):
        claims = [m for m in messages if m["subject"] == f"splice.idem._admin.{cid}"]
        assert [c["payload"]["changed"] for c in claims] == [False]
        assert with_command(messages, cid) == []
    updates = of_type(messages, "ServiceTypeUpdated")
    assert [m["payload"]["description"] for m in updates] == ["d", "e"]
    assert updates[-1]["seq"] == changed["seq"]


async def test_a_repeat_of_a_long_aggregates_old_command_reads_no_history(
    fresh_nats: NatsServer, svc: Replica, nc: Any
) -> None:
    """A duplicate must not cost a re-read of its aggregate: its answer's seq is found with a
    few direct gets, not by reading the aggregate's events."""
    created = await ok(nc, "_admin.servicetype.create", {"name": "long",
                                                         "providers": {"loadbalancer": "haproxy"}})
    other = await ok(nc, "_admin.servicetype.create", {"name": "other",
                                                       "providers": {"loadbalancer": "haproxy"}})
    old = {"command_id": str(uuid.uuid4()), "id": created["id"], "description": "old"}
    first = await send(nc, "_admin.servicetype.update", old)
    for i in range(300):  # interleaved with another aggregate's changes, unevenly
        await ok(nc, "_admin.servicetype.update", {"id": created["id"], "description": f"d{i}"})
        for j in range(i % 3):
            await ok(nc, "_admin.servicetype.update", {"id": other["id"],
                                                       "description": f"o{i}-{j}"})
    svc.forget_replies()
    ds = svc.executor.recorder.datastore
    reads: list[str] = []
    real_read = ds.read
    ds.read = lambda subject, start, limit: reads.append(subject) or real_read(subject, start, limit)
    try:
        started = time.perf_counter()
        again = await send(nc, "_admin.servicetype.update", old)
        took = time.perf_counter() - started
    finally:
        del ds.read
    assert again == first
    assert reads == [], reads
    print(f"\nrepeat of a command 300 changes old: {took * 1000:.1f} ms")
