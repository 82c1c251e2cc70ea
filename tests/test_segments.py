"""VXLAN segments: every tenant network gets a VNI unique across all tenants (from its tenant's
shard of the VNIs, in the network's own write), and hosts register the underlay address their
tunnels end on."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from helpers import event_messages, request
from world import World

from splice.events import contracts as c
from splice.natsserver import NatsServer
from splice.services.codec import decode_payload
from splice.services.common_handlers import Touched
from splice.services.domain import SINGLETON, ExhaustedError, InUseError, Meta, acting, stamp
from splice.services.network import (
    SEGMENT_SHARDS,
    VNI_MAX,
    VNI_MIN,
    Network,
    SegmentPool,
    home_shard,
    shard_of,
    shard_range,
)
from splice.services.network_handlers import SEGMENTS_ID, _allocate, _release, shard_pool_id
from splice.services.service import CommandService

NO_MONITORS = {"SPLICE_MONITORS": "off"}


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    yield world
    world.close()


def vni(w: World, tenant: str, network: str) -> int:
    return int(w.get(tenant, "network", network).segmentation_id)


def pool(w: World, tenant: str) -> SegmentPool:
    """The tenant's home shard of the VNIs."""
    return w.app.repository.get(shard_pool_id(home_shard(tenant)))  # type: ignore[no-any-return]


def first(tenant: str) -> int:
    return shard_range(home_shard(tenant))[0]


# -- allocation -------------------------------------------------------------------------------


def test_the_shards_split_the_vnis_without_overlap_and_the_first_is_the_old_pool() -> None:
    ranges = [shard_range(k) for k in range(SEGMENT_SHARDS)]
    assert ranges[0][0] == VNI_MIN and ranges[-1][1] <= VNI_MAX
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    assert all(shard_of(lo) == shard_of(hi) == k for k, (lo, hi) in enumerate(ranges))
    assert SEGMENTS_ID.endswith(SINGLETON) and shard_pool_id(0) == SEGMENTS_ID
    homes = {home_shard(f"tenant-{i}") for i in range(1000)}
    assert len(homes) == SEGMENT_SHARDS  # the tenants spread over every shard


def test_every_network_gets_the_lowest_free_vni_of_its_tenants_home_shard(w: World) -> None:
    tenants = ["acme", "globex", "acme", "initech", "globex"]
    assert len({home_shard(t) for t in tenants}) == 3  # (distinct homes: no shared shard here)
    nets = [(t, w.cmd(t, "CreateNetwork", name=f"n{i}", cidr=f"10.{i}.0.0/24"))
            for i, t in enumerate(tenants)]
    assert w.last == ["QuotaConsumed", "SegmentAllocated", "NetworkCreated"]
    assert [vni(w, t, n) for t, n in nets] == [
        first("acme"), first("globex"), first("acme") + 1, first("initech"), first("globex") + 1]
    assert pool(w, "acme").allocated == {
        first("acme"): f"acme.network.{nets[0][1]}", first("acme") + 1: f"acme.network.{nets[2][1]}"}
    assert len({vni(w, t, n) for t, n in nets}) == len(nets)


def test_a_deleted_networks_vni_goes_back_to_the_pool_and_the_lowest_free_one_is_given(
    w: World,
) -> None:
    a = w.cmd("acme", "CreateNetwork", name="a", cidr="10.1.0.0/24")
    b = w.cmd("acme", "CreateNetwork", name="b", cidr="10.2.0.0/24")
    c_ = w.cmd("acme", "CreateNetwork", name="c", cidr="10.3.0.0/24")
    w.cmd("acme", "DeleteNetwork", id=b)
    assert "SegmentReleased" in w.last and "NetworkDeleted" in w.last
    w.cmd("acme", "DeleteNetwork", id=a)
    assert pool(w, "acme").allocated == {first("acme") + 2: f"acme.network.{c_}"}
    nets = [w.cmd("acme", "CreateNetwork", name=n, cidr=f"10.{i}.0.0/24")
            for i, n in enumerate("def", 4)]
    assert [vni(w, "acme", n) for n in nets] == [first("acme") + k for k in (0, 1, 3)]


def test_a_vni_goes_back_to_the_shard_that_gave_it_whoever_deletes_it(w: World) -> None:
    """The shard a VNI came from is told by the VNI: a network of shard 0 (made before the
    shards, or handed over) is released there, not to its tenant's home."""
    public = str(uuid.uuid4())
    with acting(Meta("tester", "old", "corr")):
        old_pool = SegmentPool.create(SEGMENTS_ID)
        old_vni = old_pool.allocate(f"acme.network.{public}")
        old = Network.create(f"acme.network.{public}", "old", "10.1.0.0/24", "10.1.0.1", old_vni)
    w.app.save(old_pool, old)
    assert old_vni == VNI_MIN and home_shard("acme") != 0
    other = w.cmd("acme", "CreateNetwork", name="m", cidr="10.2.0.0/24")
    w.cmd("acme", "DeleteNetwork", id=public)
    assert {"NetworkDeleted", "SegmentReleased"} <= set(w.last)
    assert w.app.repository.get(SEGMENTS_ID).allocated == {}
    assert pool(w, "acme").allocated == {first("acme"): f"acme.network.{other}"}


def test_a_full_home_shard_hands_over_to_the_next() -> None:
    """Exhaustion is every shard's: a tenant whose home is full takes the next shard's lowest."""
    with acting(Meta("tester", "c", "corr")):
        pools = {k: SegmentPool.create(shard_pool_id(k)) for k in range(SEGMENT_SHARDS)}
    for p in pools.values():
        p.collect_events()  # as stored
    home = home_shard("acme")

    class Store:  # the stored pools as `Touched` loads them
        def get_or_none(self, agg_id: str) -> SegmentPool | None:
            return next((p for p in pools.values() if p.id == agg_id), None)

    def fill(k: int) -> None:
        pools[k].high, pools[k].free = pools[k].last + 1, set()

    fill(home)
    with acting(Meta("tester", "c1", "corr")):
        t = Touched()
        got = _allocate(Store(), "acme", t, "acme.network.n1")  # type: ignore[arg-type]
    nxt = (home + 1) % SEGMENT_SHARDS
    assert got == shard_range(nxt)[0]
    assert [p.id for p in t.list()] == [shard_pool_id(nxt)]  # the full one is not written
    for k in range(SEGMENT_SHARDS):
        fill(k)
    with acting(Meta("tester", "c2", "corr")), pytest.raises(ExhaustedError):
        _allocate(Store(), "acme", Touched(), "acme.network.n2")  # type: ignore[arg-type]


def test_a_network_still_in_use_keeps_its_vni(w: World) -> None:
    net = w.cmd("acme", "CreateNetwork", name="n", cidr="10.1.0.0/24")
    w.cmd("acme", "CreatePort", network_id=net)
    with pytest.raises(InUseError):
        w.cmd("acme", "DeleteNetwork", id=net)
    assert pool(w, "acme").allocated == {first("acme"): f"acme.network.{net}"}


def test_a_network_created_before_vnis_deletes_without_touching_the_pool(w: World) -> None:
    public = str(uuid.uuid4())
    with acting(Meta("tester", "old", "corr")):  # as a NetworkCreated stored before VNIs
        old = Network.start(f"acme.network.{public}", stamp(
            c.NetworkCreated, name="old", cidr="10.1.0.0/24", gateway="10.1.0.1"))
    w.app.save(old)
    assert vni(w, "acme", public) == 0
    other = w.cmd("acme", "CreateNetwork", name="m", cidr="10.2.0.0/24")
    w.cmd("acme", "DeleteNetwork", id=public)
    assert "NetworkDeleted" in w.last and "SegmentReleased" not in w.last
    assert pool(w, "acme").allocated == {first("acme"): f"acme.network.{other}"}


def test_the_pool_is_the_same_when_replayed_and_says_when_it_is_exhausted(w: World) -> None:
    nets = [w.cmd("acme", "CreateNetwork", name=f"n{i}", cidr=f"10.{i}.0.0/24") for i in range(4)]
    w.cmd("acme", "DeleteNetwork", id=nets[1])
    live = pool(w, "acme")
    replayed: Any = None
    for stored in w.app.recorder.select_events(live.id):
        replayed = w.app.mapper.to_domain_event(stored).mutate(replayed)
    assert (replayed.allocated, replayed.high, replayed.free) == (live.allocated, live.high, live.free)
    assert (live.high, live.free) == (first("acme") + 4, {first("acme") + 1})

    full = pool(w, "acme")
    full.high, full.free = full.last + 1, set()
    assert full.full
    with pytest.raises(ExhaustedError):
        full.allocate("acme.network.x")
    full.free = {first("acme") + 7}
    assert full.allocate("acme.network.x") == first("acme") + 7


def test_old_network_created_events_without_a_segment_decode_with_0() -> None:
    old = {"timestamp": "2024-01-01T00:00:00Z", "actor": "a", "command_id": "c",
           "correlation_id": "c", "aggregate": "network",
           "name": "n", "cidr": "10.0.0.0/24", "gateway": "10.0.0.1"}
    ev = decode_payload("NetworkCreated", json.dumps(old).encode())
    assert isinstance(ev, c.NetworkCreated) and ev.segmentation_id == 0
    assert msgspec.json.decode(json.dumps(old), type=c.NetworkCreated).segmentation_id == 0
    host = {k: v for k, v in old.items() if k in ("timestamp", "actor", "command_id",
                                                 "correlation_id")}
    reg = decode_payload("HostRegistered", json.dumps({**host, "host": "h1", "providers": []}).encode())
    assert isinstance(reg, c.HostRegistered) and reg.underlay_ip is None


# -- hosts' underlay ----------------------------------------------------------------------------


def test_a_host_registers_its_underlay_address_and_the_registry_keeps_it(w: World) -> None:
    w.cmd("_host", "RegisterHost", host="h1", providers=["haproxy"], underlay_ip="192.0.2.11")
    w.cmd("_host", "RegisterHost", host="h2", providers=["haproxy"])
    hosts = w.get("_admin", "hosts", "00000000-0000-0000-0000-000000000000").hosts
    assert hosts["h1"]["underlay_ip"] == "192.0.2.11"
    assert hosts["h2"]["underlay_ip"] is None


def test_an_underlay_address_must_be_an_ipv4_address() -> None:
    for bad in ("192.0.2.256", "h1.example", "192.0.2.1\n", "::1"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(json.dumps({"host": "h1", "providers": [], "underlay_ip": bad}),
                                type=c.RegisterHost)


# -- over NATS ----------------------------------------------------------------------------------


async def send(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"command_id": str(uuid.uuid4()), "actor": "it", **body}
    return await request(nc, f"splice.cmd.{subject}", body, timeout=30)


def of_type(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["subject"].endswith(f".{name}")]


async def test_20_concurrent_network_creates_on_two_replicas_get_20_distinct_vnis(
    fresh_nats: NatsServer, nc: Any
) -> None:
    services = [CommandService(fresh_nats.url, env=NO_MONITORS) for _ in range(2)]
    for s in services:
        await s.start()
    try:
        tenants = ["acme", "globex", "initech", "umbrella"]
        replies = await asyncio.gather(*[
            send(nc, f"{tenants[i % 4]}.network.create", {"name": f"n{i}", "cidr": "10.0.0.0/24"})
            for i in range(20)
        ])
        conflicts = sum(s._executor.counts["conflicts"] for s in services if s._executor)
    finally:
        for s in services:
            await s.stop()
    assert all(r["ok"] for r in replies), replies
    events = await event_messages(fresh_nats.url)
    created = of_type(events, "NetworkCreated")
    assert len(created) == 20
    vnis = sorted(e["payload"]["segmentation_id"] for e in created)
    assert vnis == sorted(first(t) + k for t in tenants for k in range(5))  # each its lowest
    allocated = of_type(events, "SegmentAllocated")
    assert sorted(e["payload"]["segmentation_id"] for e in allocated) == vnis
    assert all(e["subject"].startswith("splice.evt._admin.segments.") for e in allocated)
    by_network = {e["payload"]["network_id"]: e["payload"]["segmentation_id"] for e in allocated}
    for e in created:  # each network's VNI is the one the pool gave it, in the same write
        tenant, _, public = e["subject"].split(".")[2:5]
        assert by_network[f"{tenant}.network.{public}"] == e["payload"]["segmentation_id"]
    print(f"\nconcurrency conflicts retried: {conflicts}")


async def test_a_host_registered_with_an_underlay_address_has_it_in_its_event(
    fresh_nats: NatsServer, nc: Any
) -> None:
    s = CommandService(fresh_nats.url, env=NO_MONITORS)
    await s.start()
    try:
        ok = await send(nc, "_host.host.register",
                        {"host": "h1", "providers": ["haproxy"], "underlay_ip": "198.51.100.7"})
        bad = await send(nc, "_host.host.register",
                         {"host": "h2", "providers": ["haproxy"], "underlay_ip": "198.51.100"})
    finally:
        await s.stop()
    assert ok["ok"], ok
    assert not bad["ok"] and bad["error"]["field"] == "$.underlay_ip", bad
    [registered] = of_type(await event_messages(fresh_nats.url), "HostRegistered")
    assert registered["payload"]["host"] == "h1"
    assert registered["payload"]["underlay_ip"] == "198.51.100.7"


def test_a_pool_from_before_the_shards_past_its_range_deals_none_of_another_shards() -> None:
    """An old single pool that went past shard 0's last VNI (more than 262,080 networks) holds
    free VNIs of shard 1's range: it never deals them, and gives its own back to itself."""
    with acting(Meta("tester", "c", "corr")):
        old = SegmentPool.create(SEGMENTS_ID)
    old.collect_events()
    beyond = old.last + 5
    old.high, old.free = old.last + 10, {old.last + 3}
    old.allocated = {beyond: "acme.network.far"}
    assert old.full
    with acting(Meta("tester", "c1", "corr")), pytest.raises(ExhaustedError):
        old.allocate("acme.network.n")

    class Store:
        def get_or_none(self, agg_id: str) -> SegmentPool | None:
            return old if agg_id == SEGMENTS_ID else None

    t = Touched()
    with acting(Meta("tester", "c2", "corr")):
        _release(Store(), t, beyond, "acme.network.far")  # type: ignore[arg-type]
    assert shard_of(beyond) == 1 and [p.id for p in t.list()] == [SEGMENTS_ID]
    assert beyond not in old.allocated
