"""The four insertion types, priority, out-of-path detours and logical source ports, end to
end: commands over NATS → the agent hosting the router → hop namespaces, bridges, copies,
policy routing and the classifier table → traffic between a client (10.77.27.2) and a server
(10.77.28.2) on two networks of one router.

Per-hop evidence, by TTL (64 leaving the client; the router takes one off each time it routes,
an ``l3`` or ``tap`` hop one more before its forward hook, a bridged hop none):

* an ``l3`` hop: a counter in its forward hook (a table of the test's own: the agent leaves
  tables without its prefix alone);
* a bridged hop: counters in a ``bridge`` table of the test's, on its in-leg (``hop0``) as
  frames enter and on its out-leg (``hop1``) as they leave, and its bridge's learned MACs;
* a ``tap`` hop: the copies, captured with a raw socket in the monitor port's namespace;
* the out-of-path firewall: counters in its namespace's forward hook, by conntrack direction.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyroute2 import netns

from splice.agents import netns as agent_netns
from splice.agents.drivers.chain.model import ChainLayout, mac
from splice.agents.drivers.nftables.render import chain_table
from splice.agents.drivers.tap.model import port_interface
from tests.dataplane.fabric import PREFIX
from tests.dataplane.test_chain_e2e import (
    CHAINS,
    CLIENT,
    SERVER,
    T,
    chain_things,
    echo,
    ping,
    probe,
    router_between_client_and_server,
    world,  # noqa: F401 (the fixture)
)
from tests.dataplane.test_chain_e2e import count as ttl_count
from tests.dataplane.test_router_e2e import LAYOUT as ROUTERS
from tests.dataplane.test_router_e2e import cmd, off_loop, sh, until
from tests.dataplane.test_tap_e2e import frames

pytestmark = pytest.mark.chains

HOST = "chn-host"
LAYOUT = ChainLayout(PREFIX)
PINGS = 3


def nft_batch(ns: str, batch: dict[str, Any]) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"], input=json.dumps(batch),
                   text=True, check=True, capture_output=True)


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


TTL = {"payload": {"protocol": "ip", "field": "ttl"}}


def probe_bridge(ns: str, ttls: tuple[int, ...]) -> None:
    """Counters by leg and TTL in a bridged hop: entering (prerouting, by in-port) and leaving
    (postrouting, by out-port), each rule labelled ``<in|out>-<port>-<ttl>``."""
    rules = []
    for chain, key in (("pre", "iifname"), ("post", "oifname")):
        for port in ("hop0", "hop1"):
            for ttl in ttls:
                label = f"{'in' if chain == 'pre' else 'out'}-{port}-{ttl}"
                rules.append({"add": {"rule": {
                    "family": "bridge", "table": "probe", "chain": chain, "comment": label,
                    "expr": [_match({"meta": {"key": key}}, port), _match(TTL, ttl),
                             {"counter": None}]}}})
    nft_batch(ns, {"nftables": [
        {"add": {"table": {"family": "bridge", "name": "probe"}}},
        {"add": {"chain": {"family": "bridge", "table": "probe", "name": "pre", "type": "filter",
                           "hook": "prerouting", "prio": -300, "policy": "accept"}}},
        {"add": {"chain": {"family": "bridge", "table": "probe", "name": "post", "type": "filter",
                           "hook": "postrouting", "prio": 300, "policy": "accept"}}},
        *rules]})


def labelled(ns: str, family: str) -> dict[str, int]:
    """Packets counted by each labelled rule of the test's ``probe`` table in `ns`."""
    out = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "table", family, "probe", check=False)
    seen = {}
    for item in json.loads(out or '{"nftables": []}')["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment"):
            seen[rule["comment"]] = int(next(e["counter"]["packets"] for e in rule["expr"]
                                             if "counter" in e))
    return seen


def learned(ns: str) -> dict[str, str]:
    """The MACs the hop's bridge learned (not its own), by MAC: the port."""
    fdb = json.loads(sh("bridge", "-n", ns, "-j", "fdb", "show", "br", "br0") or "[]")
    return {e["mac"]: e["ifname"] for e in fdb
            if e.get("master") == "br0" and e.get("state") != "permanent"}


class Monitor:
    """The tap's two ports as the machine's operator plugs them on the agent's host, veths into
    the monitor's namespace: the tapped port's (``eth1``: nothing is tapped there while the tap
    is a hop) and the monitor port's (``eth0``)."""

    def __init__(self, port: str, monitor: str) -> None:
        self.ns = f"{PREFIX}u{os.getpid() % 0xFFF:x}-mon"
        self.links = [port_interface(port), port_interface(monitor)]
        self.worker = ThreadPoolExecutor(max_workers=1)

    def plug(self) -> None:
        netns.create(self.ns)
        for dev, peer in zip(self.links, ("eth1", "eth0"), strict=True):
            sh("ip", "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", self.ns)
        for dev in self.links:
            sh("ip", "link", "set", dev, "up")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up")
        self.worker = ThreadPoolExecutor(max_workers=1, initializer=netns.setns,
                                         initargs=(self.ns, 0, None, False))

    def capture(self, seconds: float, ready: threading.Event) -> Counter[tuple[int, str, int]]:
        """ICMP between the client and the server arriving on the monitor's eth0, by (ICMP type,
        source, TTL)."""
        return self.worker.submit(_capture, seconds, ready).result()

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        agent_netns.delete_namespace(self.ns)  # its veths go with it


def _capture(seconds: float, ready: threading.Event) -> Counter[tuple[int, str, int]]:
    seen: Counter[tuple[int, str, int]] = Counter()
    for frame in frames(seconds, ready):
        ip = frame[14:]
        if frame[12:14] != b"\x08\x00" or ip[9] != 1:
            continue
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        if {src, dst} == {CLIENT, SERVER}:
            seen[(ip[(ip[0] & 0xF) * 4], src, ip[8])] += 1
    return seen


@contextlib.contextmanager
def monitor_ports(port: str, monitor: str) -> Iterator[Monitor]:
    m = Monitor(port, monitor)
    try:
        m.plug()
        yield m
    finally:
        m.close()


def mirror_veths() -> list[str]:
    return [link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show"))
            if link["ifname"].startswith(LAYOUT.mirror_prefix)]


async def firewall(nc: Any, name: str, network: str, default: str = "allow",
                   rules: list[dict[str, Any]] | None = None, **extra: Any) -> str:
    return str((await cmd(nc, f"{T}.firewall.create", {
        "name": name, "network_id": network, "default_action": default, "rules": rules or [],
        **extra}))["id"])


async def steered(ns: str, rid: str) -> None:
    table = chain_table(PREFIX, rid)
    await until(lambda: table in sh("ip", "netns", "exec", ns, "nft", "list", "tables", check=False),
                "the classifier table in the router")


async def pings(ten: Any, n: int = PINGS) -> int:
    return sum([await off_loop(ping, ten, SERVER) for _ in range(n)])


async def test_three_hops_l3_bump_and_tap_see_the_flow_in_order_both_ways(
        world: dict[str, Any]) -> None:  # noqa: F811
    """A symmetric ICMP chain: an l3 firewall, a stateful bump-in-the-wire firewall that only
    allows the client's echo requests (its replies pass as established), then a tap."""
    nc, ten, made = world["nc"], world["tenants"], world["made"]
    nets = made["nets"]
    rid, ns = await router_between_client_and_server(world)
    await until(lambda: ping(ten, SERVER), "ping A → B, direct")

    l3 = await firewall(nc, "l3", nets["a"])
    bump = await firewall(nc, "bump", nets["a"], "deny", [
        {"action": "allow", "protocol": "icmp", "source_cidr": f"{CLIENT}/32",
         "destination_cidr": f"{SERVER}/32"}])
    ports = [(await cmd(nc, f"{T}.port.create", {"network_id": nets["a"], "host": HOST,
                                                 "name": n}))["id"] for n in ("tapped", "monitor")]
    with monitor_ports(*ports) as mon:
        tap = (await cmd(nc, f"{T}.tap.create", {"name": "copy", "port_id": ports[0],
                                                 "monitor_port_id": ports[1]}))["id"]
        chain = (await cmd(nc, f"{T}.chain.create", {
            "name": "three", "router_id": rid, "priority": 1, "symmetric": True,
            "classifier": {"protocol": "icmp", "destination_cidr": f"{SERVER}/32"},
            "hops": [{"service_id": l3, "kind": "firewall", "insertion": "l3"},
                     {"service_id": bump, "kind": "firewall", "insertion": "bump_in_the_wire"},
                     {"service_id": tap, "kind": "tap", "insertion": "tap"}]}))["id"]
        hops = [CHAINS.hop_namespace(chain, i) for i in range(3)]
        await steered(ns, rid)
        await off_loop(probe, hops[0])  # forward hook: 62 (requests), 60 → 59 (replies)
        await off_loop(probe_bridge, hops[1], (61,))
        await until(lambda: ping(ten, SERVER), "ping A → B through three hops")

        ready = threading.Event()
        cap = mon.worker.submit(_capture, 2.0, ready)
        assert ready.wait(5)
        before = await off_loop(labelled, hops[1], "bridge")
        got = await pings(ten)
        copies = cap.result()
        seen = await off_loop(labelled, hops[1], "bridge")
        delta = {k: seen[k] - before.get(k, 0) for k in seen}

        # the flow arrives, both ways (the echo replies pass the bump as established only)
        assert got == PINGS
        # in order, by TTL: the l3 hop routes requests at 62, the bump carries them at 61 in on
        # hop0 and out on hop1 (the TTL unchanged), the tap copies them at 60; the replies
        # cross in reverse: the tap first (63), the bump from hop1 to hop0 (61), the l3 hop
        assert await off_loop(ttl_count, hops[0], 62) >= PINGS
        assert delta["in-hop0-61"] == delta["out-hop1-61"] == PINGS, delta
        assert delta["in-hop1-61"] == delta["out-hop0-61"] == PINGS, delta
        assert copies[(8, CLIENT, 60)] == PINGS and copies[(0, SERVER, 63)] == PINGS, copies
        assert sum(copies.values()) == 2 * PINGS, copies  # nothing else was copied
        # the bump is stateful: the echo flow is in its conntrack table; it is a wire: its
        # bridge learns no MAC
        assert CLIENT in sh("ip", "netns", "exec", hops[1], "conntrack", "-L", "-p", "icmp")
        assert await off_loop(learned, hops[1]) == {}

        # not classified (TCP): bypasses every hop
        assert ten.connect("cli", SERVER) == f"ok:{CLIENT}"
        assert await off_loop(labelled, hops[1], "bridge") == seen

        # the bump filters: a deny in it blocks the chain's flow, not the rest
        allow = world["agent"].firewalls[f"{T}.firewall.{bump}"].rules[0].id
        await cmd(nc, f"{T}.firewall.insert_rule", {"id": bump, "rule": {
            "action": "deny", "protocol": "icmp"}, "before": allow})
        await until(lambda: not ping(ten, SERVER), "the bump's deny blocks the chain's flow")
        assert ten.connect("cli", SERVER) == f"ok:{CLIENT}"

        await cmd(nc, f"{T}.chain.delete", {"id": chain})
        await until(lambda: not agent_netns.list_namespaces(CHAINS.namespace_prefix),
                    "the hop namespaces gone")
        await until(lambda: chain_things(ns) == [] and mirror_veths() == [],
                    "no veth, rule, route, neighbour or table of the chain")
        await until(lambda: ping(ten, SERVER), "ping A → B direct again")
        await cmd(nc, f"{T}.tap.delete", {"id": tap})


async def test_an_l2_hop_learns_the_macs_and_forwards(world: dict[str, Any]) -> None:  # noqa: F811
    nc, ten, made = world["nc"], world["tenants"], world["made"]
    rid, ns = await router_between_client_and_server(world)
    fw = await firewall(nc, "l2", made["nets"]["a"])
    chain = (await cmd(nc, f"{T}.chain.create", {
        "name": "l2", "router_id": rid, "priority": 1, "symmetric": True,
        "classifier": {"protocol": "icmp"},
        "hops": [{"service_id": fw, "kind": "firewall", "insertion": "l2"}]}))["id"]
    hop = CHAINS.hop_namespace(chain, 0)
    await steered(ns, rid)
    await off_loop(probe_bridge, hop, (63,))  # the router's one hop, none in the bridge
    await until(lambda: ping(ten, SERVER), "ping A → B through the l2 hop")
    assert await pings(ten) == PINGS
    seen = await off_loop(labelled, hop, "bridge")
    assert seen["in-hop0-63"] >= PINGS and seen["out-hop1-63"] >= PINGS, seen
    # the bridge learned the router's in-leg behind hop0 and its out-leg behind hop1
    assert await off_loop(learned, hop) == {mac(chain, 0, "in"): "hop0", mac(chain, 0, "out"): "hop1"}
    await cmd(nc, f"{T}.chain.delete", {"id": chain})
    await until(lambda: chain_things(ns) == [] and not agent_netns.list_namespaces(
        CHAINS.namespace_prefix), "nothing of the chain left")


async def test_the_higher_priority_wins_and_an_update_re_steers(world: dict[str, Any]) -> None:  # noqa: F811
    nc, ten, made = world["nc"], world["tenants"], world["made"]
    rid, ns = await router_between_client_and_server(world)
    fws = [await firewall(nc, f"p{i}", made["nets"]["a"]) for i in range(2)]
    chains = [(await cmd(nc, f"{T}.chain.create", {
        "name": f"p{i}", "router_id": rid, "priority": prio,
        "classifier": {"protocol": "icmp", "destination_cidr": f"{SERVER}/32"},
        "hops": [{"service_id": fws[i], "kind": "firewall", "insertion": "l3"}]}))["id"]
        for i, prio in enumerate((10, 20))]
    hops = [CHAINS.hop_namespace(c, 0) for c in chains]
    await steered(ns, rid)
    await until(lambda: all(h in agent_netns.list_namespaces(CHAINS.namespace_prefix) for h in hops),
                "both hops")
    for h in hops:
        await off_loop(probe, h)
    # until the host has both chains: the first may be steered before the second comes
    await until(lambda: ping(ten, SERVER) and ttl_count(hops[1], 62) > 0,
                "ping through the priority 20 chain")
    for h in hops:  # counters from zero, both chains in place
        await off_loop(reprobe, h)
    assert await pings(ten) == PINGS
    assert await off_loop(ttl_count, hops[1], 62) >= PINGS  # priority 20
    assert await off_loop(ttl_count, hops[0], 62) == 0  # priority 10: never

    await cmd(nc, f"{T}.chain.update", {"id": chains[0], "priority": 30})

    def first_wins() -> bool:
        return ping(ten, SERVER) and ttl_count(hops[0], 62) > 0

    await until(first_wins, "new flows through the chain now of priority 30")
    low = await off_loop(ttl_count, hops[1], 62)
    assert await pings(ten) == PINGS
    assert await off_loop(ttl_count, hops[1], 62) == low
    for c in chains:
        await cmd(nc, f"{T}.chain.delete", {"id": c})
    await until(lambda: chain_things(ns) == [], "nothing of the chains left")


def reprobe(ns: str) -> None:
    """`probe` again, its counters from zero."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "probe"],
                   check=True, capture_output=True)
    probe(ns)


def probe_forward(ns: str) -> None:
    """Counters by conntrack direction and protocol in the forward hook (labelled)."""
    rules = [{"add": {"rule": {"family": "ip", "table": "probe", "chain": "fwd",
                               "comment": f"{proto}-{d}", "expr": [
                                   _match({"meta": {"key": "l4proto"}}, proto),
                                   _match({"ct": {"key": "direction"}}, d), {"counter": None}]}}}
             for proto in ("icmp", "tcp") for d in ("original", "reply")]
    nft_batch(ns, {"nftables": [
        {"add": {"table": {"family": "ip", "name": "probe"}}},
        {"add": {"chain": {"family": "ip", "table": "probe", "name": "fwd", "type": "filter",
                           "hook": "forward", "prio": -10, "policy": "accept"}}},
        *rules]})


async def test_an_out_of_path_firewall_sees_the_detoured_flows_which_still_arrive(
        world: dict[str, Any]) -> None:  # noqa: F811
    nc, ten = world["nc"], world["tenants"]
    rid, ns = await router_between_client_and_server(world)
    fw = await firewall(nc, "oop", world["made"]["nets"]["a"], router_id=rid, out_of_path=True)
    hop = LAYOUT.hop_namespace(fw, 0)
    await steered(ns, rid)
    await until(lambda: hop in agent_netns.list_namespaces(CHAINS.namespace_prefix), "the detour")
    await off_loop(probe_forward, hop)
    await until(lambda: ping(ten, SERVER) and ten.connect("cli", SERVER) == f"ok:{CLIENT}",
                "ICMP and TCP A → B through the detour")
    seen = await off_loop(labelled, hop, "ip")
    assert all(seen[f"{p}-{d}"] >= 1 for p in ("icmp", "tcp") for d in ("original", "reply")), seen

    # the detour really filters: a deny of TCP in it stops TCP, not ICMP
    await cmd(nc, f"{T}.firewall.insert_rule", {"id": fw, "rule": {"action": "deny", "protocol": "tcp"}})
    await until(lambda: ten.connect("cli", SERVER) != f"ok:{CLIENT}", "TCP denied by the detour")
    assert await off_loop(ping, ten, SERVER)

    await cmd(nc, f"{T}.firewall.delete", {"id": fw})
    await until(lambda: hop not in agent_netns.list_namespaces(CHAINS.namespace_prefix)
                and chain_things(ns) == [], "the detour gone")
    await until(lambda: ten.connect("cli", SERVER) == f"ok:{CLIENT}", "TCP A → B direct again")


async def test_a_logical_source_port_classifies_only_its_own_traffic(
        world: dict[str, Any]) -> None:  # noqa: F811
    nc, agent, ten, made = world["nc"], world["agent"], world["tenants"], world["made"]
    nets = made["nets"]
    rid, ns = await router_between_client_and_server(world)
    port = (await cmd(nc, f"{T}.port.create", {"network_id": nets["a"], "ip_address": "10.77.27.9",
                                               "name": "source"}))["id"]
    await until(lambda: f"{T}.port.{port}" in agent.ports, "the port known to the agent")
    mac = agent.ports[f"{T}.port.{port}"].mac_address
    # the port's machine: its address and MAC, on network a
    await off_loop(ten.plug, "srv2", ROUTERS.bridge(nets["a"]), "10.77.27.9", "10.77.27.1")
    sh("ip", "-n", ten.names["srv2"], "link", "set", "eth0", "address", mac)
    fw = await firewall(nc, "src", nets["a"])
    chain = (await cmd(nc, f"{T}.chain.create", {
        "name": "src", "router_id": rid, "priority": 1,
        "classifier": {"protocol": "icmp", "logical_source_port": port},
        "hops": [{"service_id": fw, "kind": "firewall", "insertion": "l3"}]}))["id"]
    hop = CHAINS.hop_namespace(chain, 0)
    await steered(ns, rid)
    await off_loop(probe, hop)

    def from_port() -> bool:
        return bool(ten.workers["srv2"].submit(echo, SERVER).result())

    await until(from_port, "ping from the port's machine")
    assert await off_loop(ttl_count, hop, 62) >= 1
    before = await off_loop(ttl_count, hop, 62)
    assert await pings(ten) == PINGS  # from the client: another source
    assert await off_loop(ttl_count, hop, 62) == before
    await cmd(nc, f"{T}.chain.delete", {"id": chain})
    await until(lambda: chain_things(ns) == [], "nothing of the chain left")
