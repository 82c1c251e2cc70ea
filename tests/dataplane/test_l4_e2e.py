"""The nftables-l4 provider end to end: commands over NATS → events → the scheduler places the
load balancer on the agent's host → the agent's nftables-l4 driver → a namespace, a VIP leg and
an nft table → real TCP traffic from a client namespace to member namespaces.

Real nats-server, command service, agent (offering haproxy and nftables-l4), namespaces, nft,
conntrack. Everything carries the test-only prefix ``splk-`` (neither production's ``spl-`` nor
the other dataplane tests' ``splt-``), on one network 10.77.41.0/24 whose machines are
namespaces this test makes; the fixture removes all of it, also when a test fails, and then
checks that nothing with the prefix is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import pytest
from pyroute2 import IPRoute, netns

from splice.agents import netns as agent_netns
from splice.agents.drivers.l4.model import L4Layout
from splice.agents.model import NetworkSpec
from splice.agents.runtime import Agent
from splice.natsserver import NatsServer
from splice.services.service import CommandService
from tests.dataplane.fabric import MEMBER_SCRIPT
from tests.dataplane.test_router_e2e import cmd, off_loop, until

pytestmark = pytest.mark.routed

PREFIX = "splk-"
LAYOUT = L4Layout(PREFIX)
T = "lfour"
HOST = "l4-host"
CIDR, SUBNET = "10.77.41.0/24", "10.77.41"
VIP, HA_VIP = f"{SUBNET}.100", f"{SUBNET}.101"
MEMBERS = {f"m{i}": f"{SUBNET}.{21 + i}" for i in range(3)}
CLIENTS = {"c0": f"{SUBNET}.2", "c1": f"{SUBNET}.3"}
PORT = 8080
MONITOR = {"type": "TCP", "delay": 1, "timeout": 1, "max_retries": 2, "max_retries_down": 2}


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _get(host: str, port: int, timeout: float) -> str:
    """One HTTP GET on a new connection: the member's name, or how it failed."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        return conn.getresponse().read().decode()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return f"error:{e}"
    finally:
        conn.close()


class Machines:
    """Members and clients: a namespace each with one veth into the network's bridge."""

    def __init__(self, bridge: str) -> None:
        self.bridge = bridge
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[str, ThreadPoolExecutor] = {}
        self.names: list[str] = []

    def plug(self, key: str, address: str) -> None:
        ns, host_if = f"{PREFIX}{key}", f"{PREFIX}{key}"
        self.names.append(key)
        netns.create(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            idx = ipr.link_lookup(ifname=host_if)[0]
            agent_netns.ensure_bridge(self.bridge)
            bridge = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.link("set", index=idx, master=bridge, state="up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.workers[key] = ThreadPoolExecutor(max_workers=4, initializer=netns.setns,
                                               initargs=(ns, 0, None, False))

    def serve(self, key: str) -> None:
        self.procs[key] = subprocess.Popen(
            ["ip", "netns", "exec", f"{PREFIX}{key}", sys.executable, str(MEMBER_SCRIPT), key,
             str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, key: str) -> None:
        proc = self.procs.pop(key)
        proc.kill()
        proc.wait(timeout=10)

    def get(self, client: str, host: str, port: int = 80, timeout: float = 2.0) -> str:
        return self.workers[client].submit(_get, host, port, timeout).result()

    def connect(self, client: str, host: str, port: int, timeout: float = 2.0) -> str:
        def attempt() -> str:
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    return "ok"
            except ConnectionRefusedError:
                return "refused"
            except TimeoutError:
                return "timeout"
        return self.workers[client].submit(attempt).result()

    def teardown(self) -> None:
        for w in self.workers.values():
            w.shutdown(wait=False, cancel_futures=True)
        for key in list(self.procs):
            with contextlib.suppress(Exception):
                self.kill(key)
        for key in self.names:
            agent_netns.kill_namespace_processes(f"{PREFIX}{key}")
            agent_netns.delete_namespace(f"{PREFIX}{key}")
            agent_netns.delete_link(f"{PREFIX}{key}")


def ours() -> dict[str, set[str]]:
    """Everything on the host with the test's prefix: namespaces, links, root nft tables."""
    links = agent_netns.observe_host(PREFIX)
    tables = {t for t in sh("nft", "list", "tables").split() if t.startswith(PREFIX)}
    return {"namespaces": set(agent_netns.list_namespaces(PREFIX)),
            "links": set(links.veth_master) | set(links.bridges), "tables": tables}


def sweep() -> None:
    for ns in agent_netns.list_namespaces(PREFIX):
        agent_netns.kill_namespace_processes(ns)
        agent_netns.delete_namespace(ns)
    links = agent_netns.observe_host(PREFIX)
    for name in [*links.veth_master, *links.bridges]:
        agent_netns.delete_link(name)


@pytest.fixture
async def world(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A command service, an agent offering haproxy and nftables-l4, a service type for each,
    a network with three members serving and two clients; all of it removed afterwards."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root")
    await off_loop(sweep)  # what a killed earlier run may have left
    url = fresh_nats.url
    svc = CommandService(url)
    await svc.start()
    nc = await nats.connect(url)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    machines: Machines | None = None
    try:
        types = {}
        for provider in ("nftables-l4", "haproxy"):
            types[provider] = (await cmd(nc, "_admin.servicetype.create", {
                "name": f"{T}-{provider}", "providers": {"loadbalancer": provider}}))["id"]
        net = (await cmd(nc, f"{T}.network.create", {"name": "web", "cidr": CIDR}))["id"]
        machines = Machines(NetworkSpec(net, CIDR, f"{SUBNET}.1").bridge_name(PREFIX))
        for key, address in {**MEMBERS, **CLIENTS}.items():
            await off_loop(machines.plug, key, address)
        for key in MEMBERS:
            machines.serve(key)
        m = machines
        for key, address in MEMBERS.items():
            await until(lambda a=address, k=key: m.get("c0", a, PORT, 0.5) == k,
                        f"member {key} to listen")
        # the agent comes last: it deletes a bridge of its prefix that holds no port
        agent = Agent(url, HOST, tmp_path / "agent", providers=["haproxy", "nftables-l4"],
                      prefix=PREFIX, resync_s=1.0)
        task = asyncio.create_task(agent.run(stop))
        yield {"nc": nc, "agent": agent, "machines": machines, "types": types, "net": net}
    finally:
        stop.set()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        if machines is not None:
            await off_loop(machines.teardown)
        await off_loop(sweep)
        await nc.close()
        await svc.stop()
    left = await off_loop(ours)
    assert left == {"namespaces": set(), "links": set(), "tables": set()}, left


def _name(address: str) -> str:
    return next(k for k, a in MEMBERS.items() if a == address)


def lb_body(world: dict[str, Any], provider: str, vip: str, *, protocol: str = "TCP",
            members: list[str] | None = None, **pool: Any) -> dict[str, Any]:
    return {
        "name": provider, "vip_network_id": world["net"], "vip_address": vip,
        "service_type_id": world["types"][provider],
        "pools": [{"name": "p", "protocol": protocol, **pool,
                   "members": [{"address": MEMBERS[k], "protocol_port": PORT}
                               for k in (members or list(MEMBERS))]},
                  {"name": "empty", "protocol": protocol}],
        "listeners": [{"name": "l", "protocol": protocol, "protocol_port": 80,
                       "default_pool": "p"},
                      {"name": "nobody", "protocol": protocol, "protocol_port": 81,
                       "default_pool": "empty"}],
    }


async def create_lb(world: dict[str, Any], body: dict[str, Any]) -> tuple[str, str]:
    """Create it and wait until the agent reports it ACTIVE; its id and aggregate id."""
    lb = (await cmd(world["nc"], f"{T}.loadbalancer.create", body))["id"]
    agg = f"{T}.loadbalancer.{lb}"
    agent = world["agent"]
    await until(lambda: (s := agent.lbs.get(agg)) is not None and s.provisioning_status == "ACTIVE",
                f"load balancer {body['name']} ACTIVE")
    return lb, agg


async def delete_lb(world: dict[str, Any], lb: str) -> None:
    await cmd(world["nc"], f"{T}.loadbalancer.delete", {"id": lb})
    agent = world["agent"]
    await until(lambda: f"{T}.loadbalancer.{lb}" not in agent.lbs, "the load balancer DELETED")


def member_ids(agent: Agent, agg: str) -> dict[str, str]:
    """Member key (m0, m1...) → member id, from the agent's fold."""
    pools = agent.lbs[agg].pools.values()
    return {_name(m.address): m.id for p in pools for m in p.members}


async def test_round_robin_spreads_connections_resets_without_members_and_leaves_nothing(
        world: dict[str, Any]) -> None:
    ms = world["machines"]
    lb, _ = await create_lb(world, lb_body(world, "nftables-l4", VIP))
    ns = LAYOUT.namespace(lb)
    answers = [await off_loop(ms.get, "c0", VIP) for _ in range(9)]
    assert Counter(answers) == {"m0": 3, "m1": 3, "m2": 3}, answers
    # a listener whose pool has no member answers at once with a reset, never hangs
    start = time.monotonic()
    assert await off_loop(ms.connect, "c0", VIP, 81) == "refused"
    assert time.monotonic() - start < 0.5
    # a one-armed router that does not redirect its clients to the members
    assert sh("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert sh("ip", "netns", "exec", ns, "sysctl", "-n",
              f"net.ipv4.conf.{LAYOUT.ns_ifname}.send_redirects").strip() == "0"

    # drift is repaired on resync: a deleted table, a flushed address
    sh("ip", "netns", "exec", ns, "nft", "delete", "table", "ip", LAYOUT.table(lb))
    assert await off_loop(ms.get, "c0", VIP, 80, 0.5) != "m0"  # nothing DNATs now
    sh("ip", "-n", ns, "addr", "flush", "dev", LAYOUT.ns_ifname)
    await until(lambda: ms.get("c0", VIP, 80, 0.5) in MEMBERS, "the table and VIP back")
    assert LAYOUT.table(lb) in sh("ip", "netns", "exec", ns, "nft", "list", "tables")

    await delete_lb(world, lb)
    await until(lambda: ns not in agent_netns.list_namespaces(PREFIX), "the namespace gone")
    left = await off_loop(ours)
    assert not any(n.startswith((LAYOUT.namespace_prefix, f"{PREFIX}lb-"))
                   for n in left["namespaces"]), left
    assert not any(n.startswith((LAYOUT.leg_prefix, f"{PREFIX}v")) for n in left["links"]), left
    assert await off_loop(ms.get, "c0", VIP, 80, 0.5) not in MEMBERS


async def test_source_ip_keeps_each_client_on_one_member(world: dict[str, Any]) -> None:
    ms = world["machines"]
    await create_lb(world, lb_body(world, "nftables-l4", VIP, lb_algorithm="SOURCE_IP"))
    for client in CLIENTS:
        answers = {await off_loop(ms.get, client, VIP) for _ in range(8)}
        assert len(answers) == 1 and answers <= set(MEMBERS), (client, answers)


async def test_a_killed_member_leaves_within_delay_times_fall_and_comes_back(
        world: dict[str, Any]) -> None:
    ms, agent = world["machines"], world["agent"]
    lb, agg = await create_lb(world, lb_body(world, "nftables-l4", VIP, healthmonitor=MONITOR))
    ids = member_ids(agent, agg)
    await until(lambda: all(agent.lbs[agg].statuses.get(i) == "ONLINE" for i in ids.values()),
                "every member ONLINE")
    ns, table = LAYOUT.namespace(lb), LAYOUT.table(lb)

    def in_map(address: str) -> bool:
        return address in sh("ip", "netns", "exec", ns, "nft", "list", "table", "ip", table)

    await off_loop(ms.kill, "m0")
    killed = time.monotonic()
    await until(lambda: not in_map(MEMBERS["m0"]), "m0 out of the map", deadline=10)
    taken_out = time.monotonic() - killed
    limit = MONITOR["delay"] * MONITOR["max_retries_down"] + 0.5
    assert taken_out <= limit, f"m0 taken out after {taken_out:.2f}s (limit {limit}s)"
    answers = [await off_loop(ms.get, "c0", VIP) for _ in range(6)]
    assert Counter(answers) == {"m1": 3, "m2": 3}, answers  # none lost, none to m0
    await until(lambda: agent.lbs[agg].statuses.get(ids["m0"]) == "ERROR",
                "m0 reported ERROR (its event folded)")
    assert agent.lbs[agg].operating_status == "DEGRADED"

    ms.serve("m0")
    await until(lambda: in_map(MEMBERS["m0"]), "m0 back in the map", deadline=10)
    await until(lambda: agent.lbs[agg].statuses.get(ids["m0"]) == "ONLINE", "m0 ONLINE again")
    answers = [await off_loop(ms.get, "c0", VIP) for _ in range(6)]
    assert Counter(answers) == {"m0": 2, "m1": 2, "m2": 2}, answers


async def test_one_host_serves_a_haproxy_and_an_nftables_l4_load_balancer_at_once(
        world: dict[str, Any]) -> None:
    ms, agent = world["machines"], world["agent"]
    l4, _ = await create_lb(world, lb_body(world, "nftables-l4", VIP, members=["m0", "m1"]))
    ha, _ = await create_lb(world, lb_body(world, "haproxy", HA_VIP, protocol="HTTP",
                                           members=["m2"]))
    for _ in range(2):  # each driver's converges and resyncs leave the other's alone
        assert {await off_loop(ms.get, "c0", VIP) for _ in range(4)} == {"m0", "m1"}
        assert await off_loop(ms.get, "c1", HA_VIP) == "m2"
        await agent.converge()
    await delete_lb(world, l4)
    assert await off_loop(ms.get, "c1", HA_VIP) == "m2"
    await delete_lb(world, ha)
    await until(lambda: not any(n.startswith((LAYOUT.namespace_prefix, f"{PREFIX}lb-"))
                                for n in agent_netns.list_namespaces(PREFIX)),
                "both namespaces gone")


async def test_a_member_that_goes_down_has_its_open_flows_cut(world: dict[str, Any]) -> None:
    """Health checks fail (new connections dropped at the member) while a client holds an open
    connection to it: the member leaves the map and its flow leaves the LB's conntrack."""
    ms, agent = world["machines"], world["agent"]
    lb, agg = await create_lb(world, lb_body(world, "nftables-l4", VIP, healthmonitor=MONITOR))
    ns = LAYOUT.namespace(lb)
    held = await off_loop(lambda: ms.workers["c0"].submit(
        socket.create_connection, (VIP, 80), 2.0).result())
    try:
        held.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")  # keep-alive: the flow stays open
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = held.recv(4096)
            assert chunk, f"closed before the answer's head: {head!r}"
            head += chunk
        served = next(line.split(":", 1)[1].strip() for line in head.decode().splitlines()
                      if line.lower().startswith("x-member:"))
        assert served in MEMBERS, served

        def flows_to(member: str) -> str:
            return sh("ip", "netns", "exec", ns, "conntrack", "-L", "-p", "tcp", "-d", VIP,
                      "--reply-src", MEMBERS[member])

        assert "ESTABLISHED" in flows_to(served)
        member_ns = f"{PREFIX}{served}"
        sh("ip", "netns", "exec", member_ns, "nft", "add table ip blk; add chain ip blk in "
           "{ type filter hook input priority 0; policy accept; }; add rule ip blk in "
           f"tcp dport {PORT} ct state new drop")
        await until(lambda: agent.lbs[agg].statuses.get(member_ids(agent, agg)[served]) == "ERROR",
                    f"{served} down", deadline=10)
        await until(lambda: "ESTABLISHED" not in flows_to(served), "its open flow cut", deadline=5)
        assert {await off_loop(ms.get, "c1", VIP) for _ in range(4)} == set(MEMBERS) - {served}
    finally:
        held.close()
