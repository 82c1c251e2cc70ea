"""A steered chain of two ``l3`` hops, end to end: commands over NATS → events → the agent
hosting the router folds the chain → hop namespaces, veths, policy routing and the classifier
table in the router's namespace → traffic.

Classified: ICMP from the client to the server (a one-way chain: the replies take the direct
path; the last test steers a `symmetric` chain's TCP both ways through a stateful hop, and shows
the same chain one way failing). Per-hop evidence: a
counter table of the test's own in each hop (not the agent's prefix: the agent leaves it),
counting by TTL in the hop's forward hook, which proves the order (the router takes one off
before each hop, and each hop one more before its forward hook: 62 in the first, 60 in the
second).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from splice.agents import netns as agent_netns
from splice.agents.drivers.chain import host as chain_host
from splice.agents.drivers.chain.model import ChainLayout, owns_mark, owns_table
from splice.agents.drivers.nftables.render import chain_table
from splice.natsserver import NatsServer
from tests.dataplane.fabric import PREFIX
from tests.dataplane.test_router_e2e import LAYOUT, cmd, off_loop, router_world, sh, until

pytestmark = pytest.mark.chains

T = "chn"
HOST = "chn-host"
NETS = {"a": "10.77.27.0/24", "b": "10.77.28.0/24"}
CLIENT, SERVER = "10.77.27.2", "10.77.28.2"
CHAINS = ChainLayout(PREFIX)
IDENTS = itertools.count(os.getpid() * 64)


@pytest.fixture
async def world(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    providers = {"loadbalancer": "haproxy", "firewall": "nftables", "nat": "nftables",
                  "tap": "tc-mirror"}
    try:
        async with router_world(fresh_nats.url, tmp_path / "agent", HOST, T, NETS,
                                providers, ("tc-mirror",)) as w:
            yield w
    finally:  # once the agent has stopped (it would make them again)
        await off_loop(sweep_hops)


def sweep_hops() -> None:
    """The agent's hop namespaces (their veths go with them), should the test fail."""
    for ns in agent_netns.list_namespaces(CHAINS.namespace_prefix):
        agent_netns.delete_namespace(ns)


def count(ns: str, ttl: int) -> int:
    """Packets the test's counter in hop `ns` saw with this TTL."""
    out = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "probe", check=False)
    for item in json.loads(out or '{"nftables": []}')["nftables"]:
        rule = item.get("rule")
        if rule and any(e.get("match", {}).get("right") == ttl for e in rule["expr"]):
            return int(next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e))
    return -1


def probe(ns: str) -> None:
    """A counter per TTL in the hop's forward path (a table the agent does not own)."""
    batch = {"nftables": [
        {"add": {"table": {"family": "ip", "name": "probe"}}},
        {"add": {"chain": {"family": "ip", "table": "probe", "name": "fwd", "type": "filter",
                           "hook": "forward", "prio": -10, "policy": "accept"}}},
        *({"add": {"rule": {"family": "ip", "table": "probe", "chain": "fwd", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "ttl"}},
                       "right": ttl}}, {"counter": None}]}}} for ttl in (62, 60))]}
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"], input=json.dumps(batch),
                   text=True, check=True, capture_output=True)


def echo(addr: str, timeout: float = 1.0) -> bool:
    """One ICMP echo request to `addr`, True when its reply comes (a raw socket: no ping).
    Each with an identifier of its own: a new flow for conntrack, classified afresh."""
    ident = next(IDENTS) & 0xFFFF
    head = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"splice"
    total = sum(struct.unpack(f"!{len(head) // 2}H", head))
    total = (total >> 16) + (total & 0xFFFF)
    packet = head[:2] + struct.pack("!H", ~(total + (total >> 16)) & 0xFFFF) + head[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (addr, 0))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                data, peer = sock.recvfrom(1500)
            except TimeoutError:
                return False
            icmp = data[(data[0] & 0xF) * 4:]
            if peer[0] == addr and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                return True
    return False


def ping(ten: Any, addr: str) -> bool:
    return bool(ten.workers["cli"].submit(echo, addr).result())


def chain_things(ns: str) -> list[str]:
    """What of the chains is left in the router's namespace: veths, rules, routes, table."""
    left = [link["ifname"] for link in json.loads(sh("ip", "-n", ns, "-j", "link", "show"))
            if link["ifname"].startswith(f"{PREFIX}c")]
    left += [str(r) for r in json.loads(sh("ip", "-n", ns, "-j", "rule", "show"))
             if "fwmark" in r and owns_mark(int(r["fwmark"], 0))]
    left += [str(r) for r in json.loads(sh("ip", "-n", ns, "-j", "route", "show", "table", "all"))
             if str(r.get("table", "")).isdigit() and owns_table(int(r["table"]))]
    return left + [t for t in sh("ip", "netns", "exec", ns, "nft", "list", "tables").split()
                   if t.startswith(f"{PREFIX}ch-")]


async def router_between_client_and_server(world: dict[str, Any]) -> tuple[str, str]:
    """A router on networks a and b, placed on the agent's host, a client on a and a server on
    b answering through it; returns the router's id and namespace."""
    nc, agent, ten, made = world["nc"], world["agent"], world["tenants"], world["made"]
    nets = made["nets"]
    rid = (await cmd(nc, f"{T}.router.create", {"name": "edge"}))["id"]
    made["routers"].append(rid)
    await until(lambda: (s := agent.routers.get(f"{T}.router.{rid}")) is not None
                and s.host == HOST, "the router placed on the agent's host")
    for key in ("a", "b"):
        await cmd(nc, f"{T}.router.add_interface", {"id": rid, "network_id": nets[key]})
    await off_loop(ten.plug, "cli", LAYOUT.bridge(nets["a"]), CLIENT, "10.77.27.1")
    await off_loop(ten.plug, "srv", LAYOUT.bridge(nets["b"]), SERVER, "10.77.28.1")
    await off_loop(ten.serve, "srv", 80)
    await until(lambda: ten.connect("cli", SERVER) == f"ok:{CLIENT}", "A → B via the router")
    return rid, LAYOUT.namespace(rid)


async def test_two_l3_hops_steer_the_classified_flow_in_order_and_leave_nothing(
        world: dict[str, Any]) -> None:
    nc, ten, made = world["nc"], world["tenants"], world["made"]
    nets = made["nets"]
    rid, ns = await router_between_client_and_server(world)
    await until(lambda: ping(ten, SERVER), "ping A → B, direct")

    fws = [(await cmd(nc, f"{T}.firewall.create", {
        "name": f"hop{i}", "network_id": nets["a"], "default_action": "allow",
        "rules": [{"action": "allow", "protocol": "tcp", "destination_port": "9"}]}))["id"]
        for i in range(2)]
    chain = (await cmd(nc, f"{T}.chain.create", {
        "name": "c", "router_id": rid, "priority": 1,
        "classifier": {"protocol": "icmp", "destination_cidr": f"{SERVER}/32"},
        "hops": [{"service_id": f, "kind": "firewall", "insertion": "l3"} for f in fws]}))["id"]
    hops = [CHAINS.hop_namespace(chain, i) for i in range(2)]
    table = chain_table(PREFIX, rid)
    await until(lambda: table in sh("ip", "netns", "exec", ns, "nft", "list", "tables",
                                    check=False), "the classifier table in the router")
    for hop in hops:
        await off_loop(probe, hop)

    # the classified flow crosses both hops in order; TCP (not classified) bypasses them
    await until(lambda: ping(ten, SERVER), "ping A → B through the chain")
    assert await off_loop(count, hops[0], 62) >= 1 and await off_loop(count, hops[1], 60) >= 1
    assert await off_loop(count, hops[0], 60) == 0 and await off_loop(count, hops[1], 62) == 0
    before = [await off_loop(count, h, t) for h, t in zip(hops, (62, 60), strict=True)]
    assert ten.connect("cli", SERVER) == f"ok:{CLIENT}"
    assert [await off_loop(count, h, t) for h, t in zip(hops, (62, 60), strict=True)] == before

    # drift is repaired on resync: a hop namespace and the classifier table deleted by hand
    await off_loop(agent_netns.delete_namespace, hops[0])
    sh("ip", "netns", "exec", ns, "nft", "delete", "table", "ip", table)
    await until(lambda: hops[0] in agent_netns.list_namespaces(CHAINS.namespace_prefix)
                and table in sh("ip", "netns", "exec", ns, "nft", "list", "tables"),
                "the hop and the table rebuilt")
    await off_loop(probe, hops[0])
    await until(lambda: ping(ten, SERVER) and count(hops[0], 62) >= 1, "steered again")

    # the second hop's firewall denies ICMP: the classified flow is blocked, TCP passes
    await cmd(nc, f"{T}.firewall.insert_rule", {"id": fws[1], "rule": {
        "action": "deny", "protocol": "icmp"}})
    await until(lambda: not ping(ten, SERVER), "the second hop's deny blocks the chain's flow")
    assert ten.connect("cli", SERVER) == f"ok:{CLIENT}"

    # an update that leaves only the first hop re-steers: the second hop (and its deny) goes
    first = await off_loop(count, hops[0], 62)
    await cmd(nc, f"{T}.chain.update", {"id": chain, "hops": [
        {"service_id": fws[0], "kind": "firewall", "insertion": "l3"}]})
    await until(lambda: hops[1] not in agent_netns.list_namespaces(CHAINS.namespace_prefix),
                "the second hop gone")
    await until(lambda: ping(ten, SERVER), "ping A → B through the first hop only")
    assert await off_loop(count, hops[0], 62) > first

    # deleting the chain restores the direct path and leaves nothing
    await cmd(nc, f"{T}.chain.delete", {"id": chain})
    await until(lambda: not agent_netns.list_namespaces(CHAINS.namespace_prefix),
                "the hop namespaces gone")
    await until(lambda: chain_things(ns) == [], "no veth, rule, route or table of the chain")
    await until(lambda: ping(ten, SERVER), "ping A → B direct again")
    observed = await off_loop(chain_host.observe, PREFIX)
    assert observed.hops == {}
    with contextlib.suppress(Exception):
        for f in fws:
            await cmd(nc, f"{T}.firewall.delete", {"id": f})


def probe_directions(ns: str) -> None:
    """A counter per conntrack direction of TCP in the hop's forward path (the test's table)."""
    batch = {"nftables": [
        {"add": {"table": {"family": "ip", "name": "probe"}}},
        {"add": {"chain": {"family": "ip", "table": "probe", "name": "fwd", "type": "filter",
                           "hook": "forward", "prio": -10, "policy": "accept"}}},
        *({"add": {"rule": {"family": "ip", "table": "probe", "chain": "fwd", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": d}},
            {"counter": None}]}}} for d in ("original", "reply"))]}
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"], input=json.dumps(batch),
                   text=True, check=True, capture_output=True)


def directions(ns: str) -> dict[str, int]:
    """TCP packets the hop forwarded, by conntrack direction."""
    out = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "probe", check=False)
    seen: dict[str, int] = {}
    for item in json.loads(out or '{"nftables": []}')["nftables"]:
        rule = item.get("rule")
        if rule:
            d = next(e["match"]["right"] for e in rule["expr"]
                     if e.get("match", {}).get("left") == {"ct": {"key": "direction"}})
            seen[d] = int(next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e))
    return seen


async def test_a_symmetric_chain_takes_replies_back_through_a_stateful_hop(
        world: dict[str, Any]) -> None:
    """TCP to the server through a firewall hop that allows it and denies everything else,
    statefully: with `symmetric` the hop sees both directions and the connection succeeds; the
    same chain one way only leaves the hop a SYN and then an ACK it finds invalid."""
    nc, ten, made = world["nc"], world["tenants"], world["made"]
    nets = made["nets"]
    rid, ns = await router_between_client_and_server(world)

    fw = (await cmd(nc, f"{T}.firewall.create", {
        "name": "stateful", "network_id": nets["a"], "default_action": "deny",
        "rules": [{"action": "allow", "protocol": "tcp", "destination_port": "80",
                   "destination_cidr": f"{SERVER}/32"}]}))["id"]
    chain = (await cmd(nc, f"{T}.chain.create", {
        "name": "c", "router_id": rid, "priority": 1, "symmetric": True,
        "classifier": {"protocol": "tcp", "destination_cidr": f"{SERVER}/32"},
        "hops": [{"service_id": fw, "kind": "firewall", "insertion": "l3"}]}))["id"]
    hop = CHAINS.hop_namespace(chain, 0)
    table = chain_table(PREFIX, rid)
    await until(lambda: table in sh("ip", "netns", "exec", ns, "nft", "list", "tables",
                                    check=False), "the classifier table in the router")
    await off_loop(probe_directions, hop)

    # both directions cross the hop: its stateful firewall lets the connection through
    await until(lambda: ten.connect("cli", SERVER) == f"ok:{CLIENT}", "TCP A → B, symmetric")
    seen = await off_loop(directions, hop)
    assert seen["original"] >= 3 and seen["reply"] >= 2, seen  # SYN, ACK, ...; SYN-ACK, ...

    # one way only: the hop sees the SYN, not the SYN-ACK, and drops the ACK as invalid
    await cmd(nc, f"{T}.chain.update", {"id": chain, "symmetric": False})
    await until(lambda: ten.connect("cli", SERVER) != f"ok:{CLIENT}", "TCP fails one way")
    before = (await off_loop(directions, hop))["reply"]
    assert ten.connect("cli", SERVER) != f"ok:{CLIENT}"
    assert (await off_loop(directions, hop))["reply"] == before

    # symmetric again, then gone: the direct path is back and nothing is left
    await cmd(nc, f"{T}.chain.update", {"id": chain, "symmetric": True})
    await until(lambda: ten.connect("cli", SERVER) == f"ok:{CLIENT}", "TCP A → B, symmetric again")
    await cmd(nc, f"{T}.chain.delete", {"id": chain})
    await until(lambda: chain_things(ns) == [], "no veth, rule, route or table of the chain")
    await until(lambda: ten.connect("cli", SERVER) == f"ok:{CLIENT}", "TCP A → B direct again")
    with contextlib.suppress(Exception):
        await cmd(nc, f"{T}.firewall.delete", {"id": fw})
