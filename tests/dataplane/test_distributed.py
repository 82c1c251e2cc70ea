"""Hosts that share networks over VXLAN, and failover, end to end (`tests/dataplane/hosts.py`):
a nats-server on the underlay's address, the command service (with the host monitor), and a
`splice agent --netns` process per simulated host; tenant machines plugged on their hosts.

Tenant network 10.77.60.0/24 (and 10.77.61.0/24 for the router).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from splice.agents import netns
from splice.services.network import mac_for
from tests.dataplane.hosts import Cluster, command, http_lb, lost, registered, running, sh

pytestmark = pytest.mark.distributed

T = "dist"
NET, NET2 = "10.77.60", "10.77.61"
MEMBER = Path(__file__).with_name("member_server.py")


cmd = command


async def until(check: Any, what: str, deadline: float = 20.0) -> float:
    """Seconds it took."""
    start = time.monotonic()
    while True:
        ok = await asyncio.get_running_loop().run_in_executor(None, check)
        if ok:
            return time.monotonic() - start
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(0.05)


def get(machine: str, url: str, timeout: float = 1.0) -> str:
    return subprocess.run(["ip", "netns", "exec", machine, "curl", "-s", "--max-time",
                           str(timeout), url], capture_output=True, text=True,
                          check=False).stdout.strip()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with running(tmp_path, f"sd{os.getpid() % 0xFFF:x}", 2, {
            "loadbalancer": "haproxy", "firewall": "nftables", "nat": "nftables"}) as w:
        yield w


async def port(nc: Any, network: str, host: str, address: str) -> tuple[str, str]:
    """A compute port bound to `host`: its id and MAC (Splice's, from the port's aggregate id)."""
    pid = (await cmd(nc, f"{T}.port.create", {"network_id": network, "host": host,
                                              "ip_address": address}))["id"]
    return pid, mac_for(f"{T}.port.{pid}")


def serve(cluster: Cluster, machine: str, name: str, port_no: int = 8080) -> None:
    ns = cluster.machine(machine)
    subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(MEMBER), name, str(port_no)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def served_lb(world: dict[str, Any], host: str) -> str:
    """A network, a member and a client on `host`, an HTTP load balancer wherever the scheduler
    puts it; returns the client's namespace once the VIP answers it."""
    cluster, nc = world["cluster"], world["nc"]
    net = (await cmd(nc, f"{T}.network.create", {"name": "n", "cidr": f"{NET}.0/24"}))["id"]
    member, mmac = await port(nc, net, host, f"{NET}.11")
    client, cmac = await port(nc, net, host, f"{NET}.21")
    await asyncio.get_running_loop().run_in_executor(None, lambda: (
        cluster.plug(host, "m1", net, member, mmac, f"{NET}.11/24"),
        cluster.plug(host, "c1", net, client, cmac, f"{NET}.21/24")))
    serve(cluster, "m1", "m1")
    await cmd(nc, f"{T}.loadbalancer.create", http_lb(net, f"{NET}.100", f"{NET}.11"))
    c1 = cluster.machine("c1")
    await until(lambda: get(c1, f"http://{NET}.100/") == "m1", "served through the VIP")
    return c1


async def test_a_load_balancer_on_host_1_serves_members_on_host_2_over_vxlan(
        world: dict[str, Any]) -> None:
    cluster, url = world["cluster"], world["url"]
    h1, h2 = list(cluster.hosts)
    cluster.start_agent(h1, url, ("haproxy", "router"))
    cluster.start_agent(h2, url, ("router",))  # no haproxy there: the LB goes to host 1
    await served_lb(world, h2)  # the client on host 2 → the VIP on host 1 → the member on host 2
    # the VIP is served on host 1 (its namespace carries host 1's agent's prefix)
    h1p, h2p = cluster.hosts[h1].prefix, cluster.hosts[h2].prefix
    assert netns.list_namespaces(f"{h1p}lb-") and not netns.list_namespaces(f"{h2p}lb-")
    # one VXLAN device per host on the network, same VNI, flooding to the other host
    for h, other in ((h1, h2), (h2, h1)):
        links = json.loads(sh("ip", "-n", h, "-j", "-d", "link", "show", "type", "vxlan"))
        assert len(links) == 1, links
        fdb = sh("bridge", "-n", h, "fdb", "show", "dev", links[0]["ifname"])
        assert f"dst {cluster.hosts[other].underlay_ip}" in fdb, fdb


async def test_a_router_on_host_1_routes_for_machines_on_host_2(world: dict[str, Any]) -> None:
    cluster, nc, url = world["cluster"], world["nc"], world["url"]
    h1, h2 = list(cluster.hosts)
    cluster.start_agent(h1, url, ("router",))
    cluster.start_agent(h2, url, ("haproxy",))  # no routing there: the router goes to host 1
    nets = [(await cmd(nc, f"{T}.network.create", {"name": n, "cidr": f"{p}.0/24"}))["id"]
            for n, p in (("a", NET), ("b", NET2))]
    rid = (await cmd(nc, f"{T}.router.create", {"name": "r"}))["id"]
    for n in nets:
        await cmd(nc, f"{T}.router.add_interface", {"id": rid, "network_id": n})
    a, amac = await port(nc, nets[0], h2, f"{NET}.31")
    b, bmac = await port(nc, nets[1], h2, f"{NET2}.31")
    await asyncio.get_running_loop().run_in_executor(None, lambda: (
        cluster.plug(h2, "a", nets[0], a, amac, f"{NET}.31/24", f"{NET}.1"),
        cluster.plug(h2, "b", nets[1], b, bmac, f"{NET2}.31/24", f"{NET2}.1")))
    serve(cluster, "b", "b")
    await until(lambda: get(cluster.machine("a"), f"http://{NET2}.31:8080/") == "b",
                "a (host 2) → the router (host 1) → b (host 2)")
    assert netns.list_namespaces(f"{cluster.hosts[h1].prefix}r-")
    assert not netns.list_namespaces(f"{cluster.hosts[h2].prefix}r-")


async def lb_world(world: dict[str, Any]) -> tuple[Cluster, str, str, str]:
    """Both hosts offer haproxy; the member and the client live on host 2; the load balancer
    is placed on host 1 (the least loaded, ties by name). Returns the hosts and the client."""
    cluster, url = world["cluster"], world["url"]
    h1, h2 = list(cluster.hosts)
    cluster.start_agent(h1, url, ("haproxy",))
    await until(lambda: h1 in registered(world["events"]), "host 1 registered first")
    cluster.start_agent(h2, url, ("haproxy",))
    return cluster, h1, h2, await served_lb(world, h2)


def lbs_of(cluster: Cluster, host: str) -> frozenset[str]:
    return netns.list_namespaces(f"{cluster.hosts[host].prefix}lb-")


async def test_failover_serves_from_the_other_host_and_the_returning_host_cleans_up(
        world: dict[str, Any]) -> None:
    cluster, h1, h2, c1 = await lb_world(world)
    assert lbs_of(cluster, h1) and not lbs_of(cluster, h2)

    # host 1 lost: its agent SIGKILLed, its underlay cut (what it made stays behind)
    cluster.kill_agent(h1)
    cluster.cut(h1)
    took = await until(lambda: get(c1, f"http://{NET}.100/", 0.3) == "m1",
                       "served again, from host 2", deadline=30)
    assert lost(world["events"]) == [h1]
    assert lbs_of(cluster, h2) and lbs_of(cluster, h1)  # host 1's copy is cut off, not gone
    print(f"failover: served again {took:.2f} s after the cut")

    # host 1 comes back: its agent starts fenced (tunnels down: the link is mended only then;
    # a link mended under a dead agent would show the old copy, see the README), registers,
    # reads the moves, removes the load balancer it no longer owns, and only then brings its
    # tunnels up
    def tunnels_up() -> list[bool]:
        vx = json.loads(sh("ip", "-n", h1, "-j", "link", "show", "type", "vxlan") or "[]")
        return ["UP" in link["flags"] for link in vx]

    cluster.start_agent(h1, world["url"], ("haproxy",))
    await until(lambda: not any(tunnels_up()), "host 1's agent fenced (its tunnels down)")
    cluster.mend(h1)
    seen: list[tuple[bool, bool]] = []  # (a tunnel up, the old copy there), as host 1 comes back

    def back() -> bool:
        up = tunnels_up()
        seen.append((any(up), bool(lbs_of(cluster, h1))))
        return not seen[-1][1] and all(up)

    await until(back, "host 1 removed its old copy, then unfenced", deadline=30)
    assert (True, True) not in seen, seen  # never a tunnel up while the old copy was there
    answers = [await asyncio.get_running_loop().run_in_executor(
        None, get, c1, f"http://{NET}.100/") for _ in range(10)]
    assert answers == ["m1"] * 10


async def test_a_loaded_host_is_not_declared_lost(world: dict[str, Any]) -> None:
    """Every CPU of the machine busy twice over, inside host 1, for three host timeouts: its
    agent still heartbeats in time, and nothing moves."""
    cluster, h1, h2, c1 = await lb_world(world)
    hogs = await asyncio.get_running_loop().run_in_executor(None, lambda: [
        subprocess.Popen(["ip", "netns", "exec", h1, sys.executable, "-c", "while True: pass"])
        for _ in range(2 * (os.cpu_count() or 1))])
    try:
        await asyncio.sleep(6.0)  # SPLICE_HOST_TIMEOUT is 2 s
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert lost(world["events"]) == []
    assert lbs_of(cluster, h1) and not lbs_of(cluster, h2)
    assert get(c1, f"http://{NET}.100/") == "m1"
