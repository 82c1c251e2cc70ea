"""Standalone taps end to end: `tap.create` over NATS → the tap placed on its ports' host → the
agent's tc-mirror driver → tc mirred on the port's interface → copies in the monitor.

Real nats-server, command service, agent (offering only ``tc-mirror``), namespaces and
traffic. Two machines (``a``, ``b``) and a monitor are namespaces on one bridge of this test
(``splt-tb<tag>``), plugged as the machine's operator would plug them: the host end of each is
named as Neutron names a port's interface (``tap`` + 11 characters of the port id), the ports
made by command with the agent's host. Evidence is counted in the monitor's namespace with a
raw AF_PACKET socket: UDP datagrams of a known flow, by direction, while the machines' own
receivers prove the original traffic still arrives. 10.77.45.0/24.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import pytest
from pyroute2 import IPRoute, netns

from splice.agents import netns as agent_netns
from splice.agents.drivers.tap import host as tap_host
from splice.agents.drivers.tap.model import TC_EGRESS, TC_INGRESS, PrefBand, port_interface
from splice.agents.runtime import Agent
from splice.natsserver import NatsServer
from splice.services.service import CommandService
from tests.dataplane.fabric import PREFIX
from tests.dataplane.test_router_e2e import cmd, off_loop, sh, until

pytestmark = pytest.mark.chains

T, HOST = "tapt", "tap-host"
SUBNET = "10.77.45"
ADDR = {"a": f"{SUBNET}.11", "b": f"{SUBNET}.12", "mon": f"{SUBNET}.13"}
UDP_PORT, COUNT = 9999, 20
BAND = PrefBand.of(PREFIX)


class Machines:
    """A namespace per machine, its host end a port interface on the test's bridge."""

    def __init__(self) -> None:
        tag = format(os.getpid() % 0xFFF, "x")
        self.bridge = f"splt-tb{tag}"
        self.names = {k: f"splt-t{tag}-{k}" for k in ADDR}
        self.links: list[str] = [self.bridge]
        self.workers: dict[str, ThreadPoolExecutor] = {}

    def plug(self, key: str, port_id: str) -> str:
        ns, host_if = self.names[key], port_interface(port_id)
        if not self.workers:
            agent_netns.ensure_bridge(self.bridge)
        netns.create(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            self.links.append(host_if)
            idx = ipr.link_lookup(ifname=host_if)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        sh("ip", "-n", ns, "addr", "add", f"{ADDR[key]}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.workers[key] = ThreadPoolExecutor(max_workers=2, initializer=netns.setns,
                                               initargs=(ns, 0, None, False))
        return host_if

    def teardown(self) -> None:
        for w in self.workers.values():
            w.shutdown(wait=False, cancel_futures=True)
        for ns in self.names.values():
            agent_netns.delete_namespace(ns)
        for name in self.links:
            agent_netns.delete_link(name)


def frames(seconds: float, ready: threading.Event, dev: str = "eth0") -> Iterator[bytes]:
    """Every frame arriving on `dev` (of the calling thread's namespace) for `seconds`, read
    with a raw AF_PACKET socket; `ready` is set once the socket listens."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as s:
        s.bind((dev, 0))
        s.settimeout(0.1)
        ready.set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                yield s.recv(65535)
            except TimeoutError:
                continue


def _capture(marker: bytes, ready: threading.Event, seconds: float) -> Counter[tuple[str, str]]:
    """In the monitor's namespace: the IPv4 frames on eth0 carrying `marker`, by (src, dst)."""
    return Counter((socket.inet_ntoa(f[26:30]), socket.inet_ntoa(f[30:34]))
                   for f in frames(seconds, ready) if f[12:14] == b"\x08\x00" and marker in f)


def _receive(marker: bytes, ready: threading.Event, seconds: float) -> int:
    """In a machine's namespace: the datagrams carrying `marker` it receives."""
    got = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", UDP_PORT))
        s.settimeout(0.1)
        ready.set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got += marker in s.recv(2048)
            except TimeoutError:
                continue
    return got


def _send(marker: bytes, to: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(COUNT):
            s.sendto(marker, (to, UDP_PORT))
            time.sleep(0.002)


def exchange(m: Machines, label: str) -> tuple[Counter[tuple[str, str]], dict[str, int]]:
    """`COUNT` datagrams a → b and b → a; what the monitor copied, and what each received."""
    marker = f"splice-tap-{label}-{time.monotonic_ns()}".encode()
    readies = [threading.Event() for _ in range(3)]
    cap = m.workers["mon"].submit(_capture, marker, readies[0], 1.0)
    got = {k: m.workers[k].submit(_receive, marker, r, 0.9) for k, r in zip("ab", readies[1:],
                                                                               strict=True)}
    for r in readies:
        assert r.wait(5)
    m.workers["a"].submit(_send, marker, ADDR["b"]).result()
    m.workers["b"].submit(_send, marker, ADDR["a"]).result()
    return cap.result(), {k: f.result() for k, f in got.items()}


A_TO_B, B_TO_A = (ADDR["a"], ADDR["b"]), (ADDR["b"], ADDR["a"])


def ours(dev: str) -> dict[tuple[int, int], frozenset[int]] | None:
    """The band's filters on `dev` (None: no clsact qdisc on it at all)."""
    seen = tap_host.observe(BAND, ()).interfaces.get(dev)
    return None if seen is None or not seen.clsact else dict(seen.ours)


@pytest.fixture
async def world(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    if os.geteuid() != 0:
        raise RuntimeError("needs root (namespaces, tc)")
    url = fresh_nats.url
    svc = CommandService(url)
    await svc.start()
    nc = await nats.connect(url)
    agent = Agent(url, HOST, tmp_path / "agent", providers={"tc-mirror"}, prefix=PREFIX,
                  resync_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    machines = Machines()
    try:
        await cmd(nc, "_admin.servicetype.create", {
            "name": "taps", "providers": {"tap": "tc-mirror"}, "default": True})
        net = (await cmd(nc, f"{T}.network.create", {"name": "n", "cidr": f"{SUBNET}.0/24"}))["id"]
        ports, devs = {}, {}
        for key, addr in ADDR.items():
            ports[key] = (await cmd(nc, f"{T}.port.create", {
                "network_id": net, "ip_address": addr, "host": HOST, "name": key}))["id"]
            devs[key] = await off_loop(machines.plug, key, ports[key])
        yield {"nc": nc, "agent": agent, "m": machines, "ports": ports, "devs": devs}
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await off_loop(machines.teardown)
        await nc.close()
        await svc.stop()


async def test_a_standalone_tap_copies_its_ports_traffic_to_the_monitor(world: dict[str, Any]) -> None:
    nc, m, ports, devs = world["nc"], world["m"], world["ports"], world["devs"]
    dev = devs["a"]
    # warm up ARP and the bridge's MAC learning; without a tap the monitor sees nothing
    await off_loop(exchange, m, "warm")
    cap, got = await off_loop(exchange, m, "none")
    assert got == {"a": COUNT, "b": COUNT} and cap[A_TO_B] == cap[B_TO_A] == 0, (cap, got)

    expect = {"ingress": ({TC_EGRESS}, {B_TO_A}), "egress": ({TC_INGRESS}, {A_TO_B}),
              "both": ({TC_INGRESS, TC_EGRESS}, {A_TO_B, B_TO_A})}
    tap = ""
    for direction, (parents, copied) in expect.items():
        tap = (await cmd(nc, f"{T}.tap.create", {
            "name": direction, "port_id": ports["a"], "monitor_port_id": ports["mon"],
            "direction": direction}))["id"]
        await until(lambda p=parents: {k[0] for k in (ours(dev) or {})} == p,
                    f"{direction} filters on {dev}")
        cap, got = await off_loop(exchange, m, direction)
        assert got == {"a": COUNT, "b": COUNT}, (direction, got)  # the original still arrives
        for flow in (A_TO_B, B_TO_A):
            assert cap[flow] == (COUNT if flow in copied else 0), (direction, flow, cap)
        if direction != "both":
            await cmd(nc, f"{T}.tap.delete", {"id": tap})
            await until(lambda: ours(dev) is None, f"{dev} without our clsact")

    # drift: a filter deleted by hand comes back on resync
    parent, pref = next(k for k in sorted(await off_loop(ours, dev) or {}) if k[0] == TC_EGRESS)
    sh("tc", "filter", "del", "dev", dev, "egress", "pref", str(pref))
    assert (parent, pref) not in (await off_loop(ours, dev) or {})
    await until(lambda: (parent, pref) in (ours(dev) or {}), "the filter put back", 10)
    cap, _ = await off_loop(exchange, m, "repaired")
    assert cap[B_TO_A] == COUNT, cap

    # a tapped port keeps its host
    moved = json.loads((await nc.request(f"splice.cmd.{T}.port.update", json.dumps(
        {"id": ports["a"], "host": "elsewhere"}).encode(), timeout=10)).data)
    assert moved["error"]["code"] == "in_use" and moved["error"]["field"] == "$.host", moved

    # deleting the tap stops the copies and leaves nothing of ours
    await cmd(nc, f"{T}.tap.delete", {"id": tap})
    await until(lambda: ours(dev) is None, f"{dev} without our clsact")
    assert "clsact" not in sh("tc", "qdisc", "show", "dev", dev)
    cap, got = await off_loop(exchange, m, "deleted")
    assert got == {"a": COUNT, "b": COUNT} and cap[A_TO_B] == cap[B_TO_A] == 0, (cap, got)


async def test_a_tap_whose_monitor_is_not_plugged_yet_is_served_once_it_is(
    world: dict[str, Any],
) -> None:
    nc, m, agent, devs = world["nc"], world["m"], world["agent"], world["devs"]
    net = agent.ports[f"{T}.port.{world['ports']['a']}"].network_id
    monitor = (await cmd(nc, f"{T}.port.create", {
        "network_id": net, "host": HOST, "name": "late"}))["id"]
    tap = (await cmd(nc, f"{T}.tap.create", {
        "name": "late", "port_id": world["ports"]["b"], "monitor_port_id": monitor}))["id"]
    late = port_interface(monitor)
    await until(lambda: agent.tap_driver.reasons.get(tap) == f"no monitor interface {late} on this host",
                "the reason, logged")
    assert await off_loop(ours, devs["b"]) is None
    m.links.append(late)  # the machine's operator plugs the monitor port now
    sh("ip", "link", "add", late, "type", "veth", "peer", "name", f"splt-tl{os.getpid() % 0xFFF:x}")
    await until(lambda: (f := ours(devs["b"])) and set(f.values()) == {frozenset({_index(late)})},
                "filters to the late monitor (on resync)")
    assert agent.tap_driver.reasons.get(tap) == ""
    await cmd(nc, f"{T}.tap.delete", {"id": tap})
    await until(lambda: ours(devs["b"]) is None, "no clsact of ours left")


def _index(name: str) -> int:
    with IPRoute() as ipr:
        return int(ipr.link_lookup(ifname=name)[0])
