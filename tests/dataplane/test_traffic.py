"""Real traffic through a converged load balancer: balancing, persistence, health, reloads."""

from __future__ import annotations

import threading
from collections import Counter

from splice.agents.drivers.haproxy.driver import HaproxyDriver
from splice.agents.drivers.reports import ACTIVE
from splice.events.lbaas import HealthMonitor, SessionPersistence
from tests.dataplane.fabric import Fabric, Recorder, lb_spec, wait_until

FAST_MONITOR = HealthMonitor(type="HTTP", delay=1, timeout=1, max_retries=1,
                                 max_retries_down=1, url_path="/healthz")


def serving(net: Fabric, vip: str) -> bool:
    try:
        return net.get(vip, 80, timeout=1).status == 200
    except OSError:
        return False


def spread(net: Fabric, vip: str, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    return Counter(net.get(vip, 80, headers=headers).body for _ in range(n))


async def test_round_robin_spreads_requests_over_all_members(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    spec = lb_spec(net)
    results = await reconciler.converge({spec.id: spec})
    assert results[spec.id].provisioning_status == ACTIVE, results[spec.id].reason
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    counts = spread(net, spec.vip_address, 40)
    assert set(counts) == {m.name for m in net.members}
    assert max(counts.values()) - min(counts.values()) <= 1, counts


async def test_source_ip_persistence_keeps_a_client_on_one_member(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    spec = lb_spec(net, persistence=SessionPersistence(type="SOURCE_IP"))
    results = await reconciler.converge({spec.id: spec})
    assert results[spec.id].provisioning_status == ACTIVE, results[spec.id].reason
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    assert len(spread(net, spec.vip_address, 12)) == 1


async def test_source_ip_algorithm_keeps_a_client_on_one_member(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    spec = lb_spec(net, algorithm="SOURCE_IP")
    results = await reconciler.converge({spec.id: spec})
    assert results[spec.id].provisioning_status == ACTIVE, results[spec.id].reason
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    assert len(spread(net, spec.vip_address, 12)) == 1


async def test_http_cookie_persistence_keeps_a_client_on_one_member(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    spec = lb_spec(net, persistence=SessionPersistence(type="HTTP_COOKIE"))
    await reconciler.converge({spec.id: spec})
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    first = net.get(spec.vip_address, 80)
    cookie = first.headers["set-cookie"].split(";")[0]
    assert cookie.startswith("SRV=")
    assert spread(net, spec.vip_address, 12, {"Cookie": cookie}) == Counter({first.body: 12})
    assert len(spread(net, spec.vip_address, 8)) > 1  # without the cookie: balanced again


async def test_app_cookie_persistence_follows_the_application_cookie(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    spec = lb_spec(net, persistence=SessionPersistence(type="APP_COOKIE",
                                                           cookie_name="JSESSIONID"))
    await reconciler.converge({spec.id: spec})
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    login = net.get(spec.vip_address, 80, "/login")
    cookie = login.headers["set-cookie"].split(";")[0]
    assert spread(net, spec.vip_address, 12, {"Cookie": cookie}) == Counter({login.body: 12})


async def test_dead_member_is_marked_down_avoided_reported_and_comes_back(
    net: Fabric, reconciler: HaproxyDriver, recorder: Recorder
) -> None:
    spec = lb_spec(net, monitor=FAST_MONITOR)
    await reconciler.converge({spec.id: spec})
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    victim = net.members[0]
    victim_id = spec.pools[0].members[0].id

    async def status() -> str:
        results = await reconciler.resync()
        return str(results[spec.id].operating.members[victim_id])

    assert await _poll(status, "ONLINE", 10)
    net.stop_member(victim)
    assert await _poll(status, "ERROR", 10)
    results = await reconciler.resync()
    assert str(results[spec.id].operating.pools[spec.pools[0].id]) == "DEGRADED"
    counts = spread(net, spec.vip_address, 20)
    assert victim.name not in counts and sum(counts.values()) == 20
    assert ("ONLINE", "ERROR") in recorder.member_changes(victim_id)

    net.start_member(victim)
    assert await _poll(status, "ONLINE", 10)
    assert recorder.member_changes(victim_id)[-1] == ("ERROR", "ONLINE")
    assert victim.name in spread(net, spec.vip_address, 8)


async def _poll(probe, wanted: str, deadline_s: float) -> bool:  # type: ignore[no-untyped-def]
    import asyncio
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if await probe() == wanted:
            return True
        await asyncio.sleep(0.2)
    raise AssertionError(f"status never became {wanted} within {deadline_s}s")


async def test_members_added_and_removed_under_steady_traffic_lose_no_request(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    first, second = net.members[:2], net.members[2:]
    spec = lb_spec(net, members=first, monitor=FAST_MONITOR)
    await reconciler.converge({spec.id: spec})
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")

    stop = threading.Event()
    outcomes: Counter[str] = Counter()

    def load() -> None:
        while not stop.is_set():
            try:
                outcomes[net.get(spec.vip_address, 80, timeout=5).body] += 1
            except OSError as exc:
                outcomes[f"failed: {type(exc).__name__}"] += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        generation = 1
        for chosen in (net.members, second, net.members, first, net.members):
            generation += 1
            changed = lb_spec(net, members=chosen, lb_id=spec.id, generation=generation,
                              monitor=FAST_MONITOR)
            result = (await reconciler.converge({spec.id: changed}))[spec.id]
            assert result.provisioning_status == ACTIVE, result.reason
            before = sum(outcomes.values())
            wait_until(lambda b=before: sum(outcomes.values()) > b + 20, 10, "traffic to flow")
    finally:
        stop.set()
        for w in workers:
            w.join()
    failed = {k: v for k, v in outcomes.items() if k.startswith("failed")}
    assert not failed, (failed, outcomes)
    assert set(outcomes) == {m.name for m in net.members}, outcomes
