"""Routers end to end: commands over NATS → events → the scheduler places the router on the
agent's host → the agent's router driver → a namespace with legs, forwarding and SNAT → traffic.

Real nats-server, command service, agent, namespaces, nftables. Tenant machines are namespaces
this test makes on the networks' bridges (host ends ``splt-u<tag>…``), inside 10.77.21-23.0/24.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import pytest
from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from splice.agents import netns as agent_netns
from splice.agents.drivers.nftables.render import nat_table
from splice.agents.drivers.router import host as router_host
from splice.agents.drivers.router.model import RouterLayout
from splice.agents.runtime import Agent
from splice.events.router_fold import ROUTER_PROVIDER
from splice.natsserver import NatsServer
from splice.services.service import CommandService
from tests.dataplane.fabric import PREFIX
from tests.dataplane.test_firewall import SERVER_CODE, _connect

pytestmark = pytest.mark.routed

T = "rtr"
HOST = "rtr-host"
NETS = {"a": "10.77.21.0/24", "b": "10.77.22.0/24", "x": "10.77.23.0/24"}
CLIENT, SERVER, EXTERNAL = "10.77.21.2", "10.77.22.2", "10.77.23.100"
LAYOUT = RouterLayout(PREFIX)


async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """pyroute2 runs an event loop of its own: call it from a worker thread."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def until(probe: Callable[[], Any], what: str, deadline: float = 15.0) -> Any:
    """Poll ``probe`` (run off the loop) until it returns something truthy."""
    end = time.monotonic() + deadline
    while True:
        value = await off_loop(probe)
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(0.1)


async def cmd(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"command_id": str(uuid.uuid4()), "actor": "e2e", **body}
    reply = json.loads((await nc.request(f"splice.cmd.{subject}", json.dumps(body).encode(),
                                         timeout=15)).data)
    assert reply["ok"], (subject, reply)
    return dict(reply)


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


# A server that greets with its own address (which member answered), not the client's.
MEMBER_CODE = SERVER_CODE.replace("peer[0].encode()", "c.getsockname()[0].encode()")
KEYS = ("cli", "srv", "ext", "srv2")


class Tenants:
    """Client, servers and external machines: a namespace each, one veth into a bridge."""

    def __init__(self) -> None:
        tag = format(os.getpid() % 0xFFF, "x")
        self.names = {k: f"{PREFIX}u{tag}-{k}" for k in KEYS}
        self.veths: list[str] = []
        self.bridges: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, ThreadPoolExecutor] = {}

    def plug(self, key: str, bridge: str, address: str, gateway: str | None) -> None:
        ns, host_if = self.names[key], f"{PREFIX}u{os.getpid() % 0xFFF:x}{KEYS.index(key)}"
        self.bridges.append(bridge)
        netns.create(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            self.veths.append(host_if)
            idx = ipr.link_lookup(ifname=host_if)[0]
            # the bridge carries the agent's prefix: until a port is on it, the agent may remove
            # it as unused (no router leg yet), so make it again until the veth is plugged in
            for _ in range(50):
                agent_netns.ensure_bridge(bridge)
                with contextlib.suppress(IndexError, NetlinkError):
                    ipr.link("set", index=idx, master=ipr.link_lookup(ifname=bridge)[0])
                    break
            else:
                raise AssertionError(f"could not plug {host_if} into {bridge}")
            ipr.link("set", index=idx, state="up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        if gateway:
            sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
        self.workers[key] = ThreadPoolExecutor(max_workers=2, initializer=netns.setns,
                                               initargs=(ns, 0, None, False))

    def serve(self, key: str, port: int, code: str = SERVER_CODE) -> None:
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.names[key], sys.executable, "-c", code, str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def connect(self, key: str, addr: str, port: int = 80, timeout: float = 1.0) -> str:
        return self.workers[key].submit(_connect, addr, port, timeout).result()

    def teardown(self) -> None:
        for w in self.workers.values():
            w.shutdown(wait=False, cancel_futures=True)
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.kill()
                p.wait(timeout=5)
        for ns in self.names.values():
            agent_netns.kill_namespace_processes(ns)
            agent_netns.delete_namespace(ns)
        for name in [*self.veths, *self.bridges]:
            agent_netns.delete_link(name)


def sweep_routers(router_ids: list[str], network_ids: list[str]) -> None:
    """The agent's objects for these routers, should the test fail before it deleted them."""
    for rid in router_ids:
        agent_netns.kill_namespace_processes(LAYOUT.namespace(rid))
        agent_netns.delete_namespace(LAYOUT.namespace(rid))
        for nid in network_ids:
            agent_netns.delete_link(LAYOUT.host_leg(rid, nid))
    for nid in network_ids:
        agent_netns.delete_link(LAYOUT.bridge(nid))


@contextlib.asynccontextmanager
async def router_world(
    url: str, agent_dir: Path, host: str, tenant: str, nets: dict[str, str],
    providers: dict[str, str], agent_providers: tuple[str, ...] = (ROUTER_PROVIDER,),
) -> AsyncIterator[dict[str, Any]]:
    """A command service, an agent offering routing (and `agent_providers`), a default service
    type of `providers`, and `tenant`'s networks; everything the test or the agent made is
    removed afterwards."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root")
    svc = CommandService(url)
    await svc.start()
    nc = await nats.connect(url)
    agent = Agent(url, host, agent_dir, providers={ROUTER_PROVIDER, *agent_providers},
                  prefix=PREFIX, resync_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    tenants = Tenants()
    made: dict[str, Any] = {"routers": [], "nets": {}}
    try:
        await cmd(nc, "_admin.servicetype.create", {
            "name": f"{tenant}-st", "providers": providers, "default": True})
        for key, cidr in nets.items():
            made["nets"][key] = (await cmd(nc, f"{tenant}.network.create",
                                           {"name": key, "cidr": cidr}))["id"]
        yield {"nc": nc, "agent": agent, "tenants": tenants, "made": made}
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await off_loop(tenants.teardown)
        await off_loop(sweep_routers, made["routers"], list(made["nets"].values()))
        await nc.close()
        await svc.stop()


@pytest.fixture
async def world(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with router_world(fresh_nats.url, tmp_path / "agent", HOST, T, NETS,
                            {"loadbalancer": "haproxy"}) as w:
        yield w


def router_state(agent: Agent, rid: str) -> Any:
    return agent.routers.get(f"{T}.router.{rid}")


def legs_of(ns: str) -> dict[str, frozenset[str]]:
    try:
        seen = router_host.observe_namespace(ns, PREFIX)
    except OSError:  # `ip netns add` made the file but has not mounted the namespace yet
        return {}
    return {} if seen is None else {k: v.addresses for k, v in seen.links.items()}


async def test_a_router_joins_networks_masquerades_outward_and_leaves_nothing(
        world: dict[str, Any]) -> None:
    nc, agent, ten, made = world["nc"], world["agent"], world["tenants"], world["made"]
    nets = made["nets"]
    rid = (await cmd(nc, f"{T}.router.create", {"name": "edge"}))["id"]
    made["routers"].append(rid)
    ns = LAYOUT.namespace(rid)
    await until(lambda: (s := router_state(agent, rid)) is not None and s.host == HOST,
                "the router placed on the agent's host (ServiceScheduled)")
    for key in ("a", "b"):
        await cmd(nc, f"{T}.router.add_interface", {"id": rid, "network_id": nets[key]})
    qr_a, qr_b = f"qr-{nets['a'].replace('-', '')[:8]}", f"qr-{nets['b'].replace('-', '')[:8]}"
    await until(lambda: legs_of(ns).get(qr_a) == {"10.77.21.1/24"}
                and legs_of(ns).get(qr_b) == {"10.77.22.1/24"}, "legs holding the gateways")
    assert sh("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"

    # a client on A reaches a server on B through the router, unNATed
    await off_loop(ten.plug, "cli", LAYOUT.bridge(nets["a"]), CLIENT, "10.77.21.1")
    await off_loop(ten.plug, "srv", LAYOUT.bridge(nets["b"]), SERVER, "10.77.22.1")
    await off_loop(ten.serve, "srv", 80)
    await until(lambda: ten.connect("cli", SERVER) == f"ok:{CLIENT}", "client → server via router")

    # an external gateway with SNAT: the external server (no route back) sees the router
    await off_loop(ten.plug, "ext", LAYOUT.bridge(nets["x"]), EXTERNAL, None)
    await off_loop(ten.serve, "ext", 80)
    await cmd(nc, "_admin.network.set_external", {"tenant": T, "id": nets["x"]})
    await cmd(nc, f"{T}.router.set_gateway", {"id": rid, "network_id": nets["x"]})
    gw = await until(lambda: (s := router_state(agent, rid)) is not None and s.gateway,
                     "the gateway in the agent's fold")
    await until(lambda: ten.connect("cli", EXTERNAL) == f"ok:{gw.ip_address}",
                "client → external server, masqueraded")
    assert sh("ip", "-n", ns, "route", "show", "default").split()[:3] == [
        "default", "via", "10.77.23.1"]

    # drift is repaired on resync: a deleted table, a flushed address, a deleted namespace
    table = nat_table(PREFIX, rid)
    sh("ip", "netns", "exec", ns, "nft", "delete", "table", "ip", table)
    sh("ip", "-n", ns, "addr", "flush", "dev", qr_a)
    await until(lambda: ten.connect("cli", EXTERNAL) == f"ok:{gw.ip_address}",
                "the table and address back after a resync")
    assert table in sh("ip", "netns", "exec", ns, "nft", "list", "tables")
    await off_loop(agent_netns.delete_namespace, ns)  # its legs die with it (the kernel may
    # route through the dying namespace a little longer: wait for the new one by its name)
    await until(lambda: len(legs_of(ns)) == 3, "the namespace and its legs rebuilt")
    await until(lambda: ten.connect("cli", EXTERNAL) == f"ok:{gw.ip_address}",
                "traffic through the rebuilt namespace")

    # removing an interface cuts that path, live
    await cmd(nc, f"{T}.router.remove_interface", {"id": rid, "network_id": nets["b"]})
    await until(lambda: set(legs_of(ns)) == {qr_a, f"qg-{nets['x'].replace('-', '')[:8]}"},
                "B's leg gone, the others there")
    assert not ten.connect("cli", SERVER).startswith("ok")
    assert ten.connect("cli", EXTERNAL) == f"ok:{gw.ip_address}"  # the rest still routes

    # deleting the router leaves no namespace, leg or table of the agent's
    await cmd(nc, f"{T}.router.remove_interface", {"id": rid, "network_id": nets["a"]})
    await cmd(nc, f"{T}.router.delete", {"id": rid})
    await until(lambda: ns not in agent_netns.list_namespaces(LAYOUT.namespace_prefix),
                "the router's namespace gone")
    observed = await off_loop(router_host.observe, PREFIX)
    assert observed.legs == {} and ns not in observed.namespaces
    assert not ten.connect("cli", EXTERNAL).startswith("ok")
