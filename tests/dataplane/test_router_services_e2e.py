"""Firewalls and port forwards routed on a router, end to end: commands over NATS → events →
the agent folds the router, its firewall and its NAT → nftables tables in the router's
namespace → traffic.

Real nats-server, command service, agent, namespaces, nftables, conntrack. Tenant machines
are namespaces this test makes on the networks' bridges, inside 10.77.24-26.0/24.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from splice.agents import netns as agent_netns
from splice.agents.drivers.nftables.render import firewall_table, nat_table
from splice.natsserver import NatsServer
from tests.dataplane.fabric import PREFIX
from tests.dataplane.test_firewall import _open, echoes
from tests.dataplane.test_router_e2e import (
    LAYOUT,
    MEMBER_CODE,
    cmd,
    off_loop,
    router_world,
    sh,
    until,
)

pytestmark = pytest.mark.routed

T = "rsv"
HOST = "rsv-host"
NETS = {"a": "10.77.24.0/24", "b": "10.77.25.0/24", "x": "10.77.26.0/24"}
CLIENT, SERVER, EXTERNAL = "10.77.24.2", "10.77.25.2", "10.77.26.100"
SERVER2 = "10.77.25.3"


@pytest.fixture
async def world(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    providers = {"loadbalancer": "haproxy", "firewall": "nftables", "nat": "nftables"}
    async with router_world(fresh_nats.url, tmp_path / "agent", HOST, T, NETS, providers,
                            ("haproxy",)) as w:
        yield w


async def refused(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(f"splice.cmd.{subject}", json.dumps(
        {"command_id": str(uuid.uuid4()), "actor": "e2e", **body}).encode(), timeout=15)
    reply = json.loads(msg.data)
    assert reply["ok"] is False, reply
    return dict(reply["error"])


def tables(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, "nft", "list", "tables", check=False)


async def test_a_routed_firewall_and_port_forward_live_in_the_router_namespace(
        world: dict[str, Any]) -> None:
    nc, agent, ten, made = world["nc"], world["agent"], world["tenants"], world["made"]
    nets = made["nets"]
    rid = (await cmd(nc, f"{T}.router.create", {"name": "edge"}))["id"]
    made["routers"].append(rid)
    ns = LAYOUT.namespace(rid)
    await until(lambda: (s := agent.routers.get(f"{T}.router.{rid}")) is not None
                and s.host == HOST, "the router placed on the agent's host")
    for key in ("a", "b"):
        await cmd(nc, f"{T}.router.add_interface", {"id": rid, "network_id": nets[key]})
    await cmd(nc, "_admin.network.set_external", {"tenant": T, "id": nets["x"]})
    await cmd(nc, f"{T}.router.set_gateway", {"id": rid, "network_id": nets["x"]})
    await off_loop(ten.plug, "cli", LAYOUT.bridge(nets["a"]), CLIENT, "10.77.24.1")
    await off_loop(ten.plug, "srv", LAYOUT.bridge(nets["b"]), SERVER, "10.77.25.1")
    await off_loop(ten.plug, "ext", LAYOUT.bridge(nets["x"]), EXTERNAL, None)
    for port in (80, 81):
        await off_loop(ten.serve, "srv", port)
    await until(lambda: ten.connect("cli", SERVER, 81) == f"ok:{CLIENT}", "A → B via the router")

    # a firewall on the router: a deny before an allow wins; port 81 allowed
    fid = (await cmd(nc, f"{T}.firewall.create", {
        "name": "edge-fw", "router_id": rid, "default_action": "deny", "rules": [
            {"action": "deny", "protocol": "tcp", "destination_port": "80"},
            {"action": "allow", "protocol": "tcp", "destination_port": "80"},
            {"action": "allow", "protocol": "tcp", "destination_port": "81"}]}))["id"]
    fw_table = firewall_table(PREFIX, fid)
    await until(lambda: fw_table in tables(ns), "the firewall's table in the router namespace")
    await until(lambda: ten.connect("cli", SERVER, 80) == "timeout", "the deny before the allow")
    assert ten.connect("cli", SERVER, 81) == f"ok:{CLIENT}"
    deny, allow80, allow81 = (r.id for r in agent.firewalls[f"{T}.firewall.{fid}"].rules)
    await cmd(nc, f"{T}.firewall.move_rule", {"id": fid, "rule_id": deny, "after": allow80})
    await until(lambda: ten.connect("cli", SERVER, 80) == f"ok:{CLIENT}", "the allow first now")

    # removing the allow rule cuts an open connection it let through
    conn = await off_loop(lambda: ten.workers["cli"].submit(_open, SERVER, 81).result())
    try:
        assert await off_loop(echoes, conn, 1.0)
        await cmd(nc, f"{T}.firewall.remove_rule", {"id": fid, "rule_id": allow81})
        await until(lambda: not echoes(conn, 0.5), "the open connection cut")
    finally:
        conn.close()
    assert ten.connect("cli", SERVER, 81) == "timeout"

    # a port forward on the router's external address passes the default-deny firewall
    gw = agent.routers[f"{T}.router.{rid}"].gateway
    assert gw is not None
    nat_id = (await cmd(nc, f"{T}.nat.create", {"name": "pf", "router_id": rid, "port_forwards": [
        {"protocol": "tcp", "external_port": 8081, "internal_address": SERVER,
         "internal_port": 81}]}))["id"]
    await until(lambda: ten.connect("ext", gw.ip_address, 8081) == f"ok:{EXTERNAL}",
                "external client → router:8081 → server:81")
    assert ten.connect("cli", SERVER, 81) == "timeout"  # the rules still refuse A's direct flow

    # level-triggered: a deleted table comes back; a table not the agent's stays
    sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "tenant-own")
    sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", fw_table)
    await until(lambda: fw_table in tables(ns), "the firewall's table back after a resync")
    await until(lambda: ten.connect("cli", SERVER, 81) == "timeout", "its rules in force again")
    assert "tenant-own" in tables(ns)

    # deleting the NAT stops the forward (the router's SNAT table stays)
    await cmd(nc, f"{T}.nat.delete", {"id": nat_id})
    await until(lambda: not ten.connect("ext", gw.ip_address, 8081).startswith("ok"),
                "the forward gone")
    assert nat_table(PREFIX, rid) in tables(ns)

    # deleting the firewall removes its table only; then the router takes everything
    await cmd(nc, f"{T}.firewall.delete", {"id": fid})
    await until(lambda: fw_table not in tables(ns), "the firewall's table gone")
    assert ten.connect("cli", SERVER, 81) == f"ok:{CLIENT}"
    for key in ("a", "b"):
        await cmd(nc, f"{T}.router.remove_interface", {"id": rid, "network_id": nets[key]})
    await cmd(nc, f"{T}.router.delete", {"id": rid})
    await until(lambda: ns not in agent_netns.list_namespaces(LAYOUT.namespace_prefix),
                "the router's namespace gone")


def lb_body(rid: str, network: str, port: int = 8000) -> dict[str, Any]:
    return {"name": "routed", "router_id": rid, "vip_network_id": network,
            "pools": [{"name": "p", "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN", "members": [
                {"address": a, "protocol_port": 81} for a in (SERVER, SERVER2)]}],
            "listeners": [{"name": "l", "protocol": "TCP", "protocol_port": port,
                           "default_pool": "p"}]}


async def test_a_routed_load_balancer_serves_from_the_router_namespace(
        world: dict[str, Any]) -> None:
    """The seed's case: the VIP on the router, members on another network; round robin over
    them, reachable from every network the router joins; the VIP's leg stays while it is used."""
    nc, agent, ten, made = world["nc"], world["agent"], world["tenants"], world["made"]
    nets = made["nets"]
    rid = (await cmd(nc, f"{T}.router.create", {"name": "edge"}))["id"]
    made["routers"].append(rid)
    ns = LAYOUT.namespace(rid)
    for key in ("a", "b"):
        await cmd(nc, f"{T}.router.add_interface", {"id": rid, "network_id": nets[key]})
    await cmd(nc, "_admin.network.set_external", {"tenant": T, "id": nets["x"]})
    await cmd(nc, f"{T}.router.set_gateway", {"id": rid, "network_id": nets["x"]})
    await off_loop(ten.plug, "cli", LAYOUT.bridge(nets["a"]), CLIENT, "10.77.24.1")
    await off_loop(ten.plug, "srv", LAYOUT.bridge(nets["b"]), SERVER, "10.77.25.1")
    await off_loop(ten.plug, "srv2", LAYOUT.bridge(nets["b"]), SERVER2, "10.77.25.1")
    await off_loop(ten.plug, "ext", LAYOUT.bridge(nets["x"]), EXTERNAL, None)
    for key in ("srv", "srv2"):
        await off_loop(ten.serve, key, 81, MEMBER_CODE)

    # the VIP must be on one of the router's legs
    err = await refused(nc, f"{T}.loadbalancer.create", lb_body(rid, made["nets"]["b"]) | {
        "vip_network_id": (await cmd(nc, f"{T}.network.create",
                                     {"name": "far", "cidr": "10.77.27.0/24"}))["id"]})
    assert err["field"] == "$.vip_network_id"

    lb = (await cmd(nc, f"{T}.loadbalancer.create", lb_body(rid, nets["x"])))["id"]
    state = await until(lambda: (s := agent.lbs.get(f"{T}.loadbalancer.{lb}")) is not None
                        and s.host == HOST and s, "the LB placed where its router is")
    vip = state.vip_address
    await until(lambda: ten.connect("ext", vip, 8000).startswith("ok"), "the VIP answers")
    seen = {ten.connect("ext", vip, 8000) for _ in range(8)}
    assert seen == {f"ok:{SERVER}", f"ok:{SERVER2}"}, seen  # round robin over both members
    # from network A too (its client was plugged last: its first ARP may still be answered late)
    await until(lambda: ten.connect("cli", vip, 8000).startswith("ok"), "the VIP answers A")
    assert {ten.connect("cli", vip, 8000) for _ in range(4)} == seen
    assert not agent_netns.list_namespaces(f"{PREFIX}lb-")  # no namespace of its own
    await until(lambda: agent.lbs[f"{T}.loadbalancer.{lb}"].provisioning_status == "ACTIVE",
                "the LB reported ACTIVE")

    # the leg that holds the VIP cannot go while the LB is there
    err = await refused(nc, f"{T}.router.clear_gateway", {"id": rid})
    assert err["code"] == "in_use"
    # the router's namespace rebuilt by hand: the VIP and haproxy come back in the new one
    agent_netns.kill_namespace_processes(ns)
    agent_netns.delete_namespace(ns)
    await until(lambda: ten.connect("ext", vip, 8000).startswith("ok"), "served again", 30)

    await cmd(nc, f"{T}.loadbalancer.delete", {"id": lb})
    await until(lambda: f"{T}.loadbalancer.{lb}" not in agent.lbs, "the LB deleted")
    await until(lambda: not ten.connect("ext", vip, 8000).startswith("ok"), "the VIP gone")
    # the router may drop the VIP before the haproxy driver's pass stops haproxy: wait for it
    await until(lambda: not sh("ip", "netns", "pids", ns, check=False).split(),
                "its haproxy stopped")
    await cmd(nc, f"{T}.router.clear_gateway", {"id": rid})
