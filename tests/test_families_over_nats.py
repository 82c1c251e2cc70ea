"""One full scenario per aggregate family, over NATS, as any client would send them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import cmd, event_messages

from splice.natsserver import NatsServer
from splice.services.service import CommandService

T = "acme"


@pytest.fixture
async def svc(fresh_nats: NatsServer) -> AsyncIterator[CommandService]:
    s = CommandService(fresh_nats.url, env={"SPLICE_QUOTAS": "loadbalancer=3"})
    await s.start()
    yield s
    await s.stop()


async def base(nc: Any) -> dict[str, str]:
    """A default service type with every kind, a network, a router with interface and gateway."""
    st = await cmd(nc, "_admin.servicetype.create", {"name": "full", "providers": {
        "loadbalancer": "haproxy", "firewall": "nftables", "nat": "nftables", "tap": "tc-mirror"}})
    net = await cmd(nc, f"{T}.network.create", {"name": "web", "cidr": "10.20.0.0/24"})
    ext = await cmd(nc, f"{T}.network.create", {"name": "ext", "cidr": "192.0.2.0/28"})
    router = await cmd(nc, f"{T}.router.create", {"name": "r1"})
    await cmd(nc, f"{T}.router.add_interface", {"id": router["id"], "network_id": net["id"]})
    await cmd(nc, "_admin.network.set_external", {"tenant": T, "id": ext["id"]})
    await cmd(nc, f"{T}.router.set_gateway", {"id": router["id"], "network_id": ext["id"]})
    return {"st": st["id"], "net": net["id"], "ext": ext["id"], "router": router["id"]}


async def test_networks_ports_and_ipam_over_nats(svc: CommandService, nc: Any) -> None:
    net = await cmd(nc, f"{T}.network.create", {"name": "n", "cidr": "10.9.0.0/29"})
    ports = [await cmd(nc, f"{T}.port.create", {"network_id": net["id"]}) for _ in range(5)]
    full = await cmd(nc, f"{T}.port.create", {"network_id": net["id"]}, ok=False)
    assert full["error"]["code"] == "exhausted"
    given = await cmd(nc, f"{T}.port.create", {"network_id": net["id"], "ip_address": "10.9.0.2"}, ok=False)
    assert given["error"]["code"] == "address_in_use"
    await cmd(nc, f"{T}.port.delete", {"id": ports[0]["id"]})
    again = await cmd(nc, f"{T}.port.create", {"network_id": net["id"], "ip_address": "10.9.0.2"})
    assert again["ok"]
    busy = await cmd(nc, f"{T}.network.delete", {"id": net["id"]}, ok=False)
    assert busy["error"]["code"] == "in_use"
    other = await cmd(nc, "globex.port.create", {"network_id": net["id"]}, ok=False)
    assert other["error"]["code"] == "not_found"  # another tenant's network does not exist for you


async def test_a_router_gateway_needs_a_network_an_admin_flagged_external(
    svc: CommandService, nc: Any
) -> None:
    await cmd(nc, "_admin.servicetype.create", {"name": "r", "providers": {"loadbalancer": "haproxy"}})
    ext = await cmd(nc, f"{T}.network.create", {"name": "ext", "cidr": "198.51.100.0/28"})
    router = await cmd(nc, f"{T}.router.create", {"name": "r"})
    gw = {"id": router["id"], "network_id": ext["id"]}
    refused = await cmd(nc, f"{T}.router.set_gateway", gw, ok=False)
    assert refused["error"]["field"] == "$.network_id"
    assert "external" in refused["error"]["message"]
    # a tenant cannot flag its own network: the command is the admin's
    own = await cmd(nc, f"{T}.network.set_external", {"tenant": T, "id": ext["id"]}, ok=False)
    assert own["error"]["code"] in ("forbidden", "unknown_command", "invalid")
    await cmd(nc, "_admin.network.set_external", {"tenant": T, "id": ext["id"]})
    await cmd(nc, f"{T}.router.set_gateway", gw)
    # not un-flagged while a gateway uses it, and the refusal changes nothing
    busy = await cmd(nc, "_admin.network.set_external",
                     {"tenant": T, "id": ext["id"], "external": False}, ok=False)
    assert busy["error"]["code"] == "in_use"
    await cmd(nc, f"{T}.router.clear_gateway", {"id": router["id"]})
    await cmd(nc, f"{T}.router.set_gateway", gw)  # still external
    await cmd(nc, f"{T}.router.clear_gateway", {"id": router["id"]})
    await cmd(nc, "_admin.network.set_external", {"tenant": T, "id": ext["id"], "external": False})
    again = await cmd(nc, f"{T}.router.set_gateway", gw, ok=False)
    assert again["error"]["field"] == "$.network_id"


async def test_load_balancer_tree_lifecycle_over_nats(svc: CommandService, nc: Any) -> None:
    b = await base(nc)
    await cmd(nc, "_host.host.register", {"host": "h1", "providers": ["haproxy", "nftables"]})
    lb = await cmd(nc, f"{T}.loadbalancer.create", {
        "name": "lb1", "vip_network_id": b["net"],
        "pools": [{"name": "web", "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                   "session_persistence": {"type": "HTTP_COOKIE"},
                   "members": [{"address": "10.20.0.11", "protocol_port": 8080},
                               {"address": "10.20.0.12", "protocol_port": 8080, "backup": True}],
                   "healthmonitor": {"type": "HTTP", "delay": 2, "timeout": 1, "url_path": "/health",
                                     "expected_codes": "200-204"}}],
        "listeners": [{"name": "http", "protocol": "HTTP", "protocol_port": 80, "default_pool": "web",
                       "l7policies": [{"action": "REJECT", "position": 1, "rules": [
                           {"type": "PATH", "compare_type": "STARTS_WITH", "value": "/admin"}]}]}],
    })
    lbid = lb["id"]
    listener = await cmd(nc, f"{T}.listener.create", {"loadbalancer_id": lbid, "listener": {
        "name": "tcp", "protocol": "TCP", "protocol_port": 9000}})
    pool = await cmd(nc, f"{T}.pool.create", {"loadbalancer_id": lbid, "pool": {
        "name": "tcp", "protocol": "TCP"}})
    await cmd(nc, f"{T}.listener.update", {"loadbalancer_id": lbid, "id": listener["id"],
                                           "default_pool_id": pool["id"]})
    member = await cmd(nc, f"{T}.member.create", {"loadbalancer_id": lbid, "pool_id": pool["id"],
                                                  "member": {"address": "10.20.0.30", "protocol_port": 9000}})
    await cmd(nc, f"{T}.member.update", {"loadbalancer_id": lbid, "pool_id": pool["id"],
                                         "id": member["id"], "weight": 0})
    await cmd(nc, f"{T}.member.batch_update", {"loadbalancer_id": lbid, "pool_id": pool["id"],
                                               "members": [{"address": "10.20.0.30", "protocol_port": 9000},
                                                           {"address": "10.20.0.31", "protocol_port": 9000}]})
    in_use = await cmd(nc, f"{T}.pool.delete", {"loadbalancer_id": lbid, "id": pool["id"]}, ok=False)
    assert in_use["error"]["code"] == "in_use"
    events = await event_messages(svc.nats_url)
    mine = [m for m in events if f".loadbalancer.{lbid}." in m["subject"]]
    types = [m["headers"]["Splice-Topic"] for m in mine]
    assert types[:2] == ["LoadBalancerCreated", "LoadBalancerScheduled"]
    assert mine[1]["payload"]["host"] == "h1"
    generation = max(m["payload"].get("generation", 0) for m in mine)

    # an old generation converged: still pending; the newest: ACTIVE
    await cmd(nc, "_host.loadbalancer.report", {"tenant": T, "loadbalancer_id": lbid, "host": "h1",
                                                "generation": 1, "status": "ACTIVE"})
    await cmd(nc, "_host.loadbalancer.report", {"tenant": T, "loadbalancer_id": lbid, "host": "h1",
                                                "generation": generation, "status": "ACTIVE"})
    await cmd(nc, "_host.loadbalancer.report_status", {"tenant": T, "loadbalancer_id": lbid, "host": "h1",
                                                       "loadbalancer": "ONLINE",
                                                       "members": {member["id"]: "ONLINE"}})
    # the same observation again changes nothing (transitions only)
    before = len(await event_messages(svc.nats_url))
    await cmd(nc, "_host.loadbalancer.report_status", {"tenant": T, "loadbalancer_id": lbid, "host": "h1",
                                                       "loadbalancer": "ONLINE",
                                                       "members": {member["id"]: "ONLINE"}})
    assert len(await event_messages(svc.nats_url)) == before

    await cmd(nc, f"{T}.loadbalancer.delete", {"id": lbid})
    wrong = await cmd(nc, f"{T}.listener.delete", {"loadbalancer_id": lbid, "id": listener["id"]}, ok=False)
    assert wrong["error"]["code"] == "not_found"
    await cmd(nc, "_host.loadbalancer.report", {"tenant": T, "loadbalancer_id": lbid, "host": "h1",
                                                "generation": generation + 1, "status": "DELETED"})
    events = await event_messages(svc.nats_url)
    mine = [m["headers"]["Splice-Topic"] for m in events if f".loadbalancer.{lbid}." in m["subject"]]
    assert mine[-1] == "LoadBalancerDeleted"
    released = [m for m in events if m["headers"]["Splice-Topic"] == "AddressReleased"]
    assert released  # the VIP's address went back to the network


async def test_insertion_rules_and_quota_over_nats(svc: CommandService, nc: Any) -> None:
    b = await base(nc)
    both = await cmd(nc, f"{T}.loadbalancer.create", {"name": "x", "vip_network_id": b["net"],
                                                      "router_id": b["router"], "service_type_id": b["st"]}, ok=False)
    assert both["error"]["field"] == "$.service_type_id"
    lonely = await cmd(nc, "_admin.servicetype.create", {"name": "fw-only", "providers": {"firewall": "nftables"}})
    no_provider = await cmd(nc, f"{T}.loadbalancer.create", {"name": "x", "vip_network_id": b["net"],
                                                             "service_type_id": lonely["id"]}, ok=False)
    assert no_provider["error"]["code"] == "invalid"
    routed = await cmd(nc, f"{T}.loadbalancer.create", {"name": "r", "vip_network_id": b["net"],
                                                        "router_id": b["router"]})
    assert routed["ok"]
    for i in range(2):
        await cmd(nc, f"{T}.loadbalancer.create", {"name": f"f{i}", "vip_network_id": b["net"]})
    over = await cmd(nc, f"{T}.loadbalancer.create", {"name": "over", "vip_network_id": b["net"]}, ok=False)
    assert over["error"]["code"] == "quota_exceeded"
    in_use = await cmd(nc, "_admin.servicetype.delete", {"id": b["st"]}, ok=False)
    assert in_use["error"]["code"] in ("in_use", "default_required")
    await cmd(nc, "_admin.quota.set", {"tenant": T, "limits": {"loadbalancer": 4}})
    assert (await cmd(nc, f"{T}.loadbalancer.create", {"name": "over", "vip_network_id": b["net"]}))["ok"]


async def test_firewall_nat_tap_and_chain_over_nats(svc: CommandService, nc: Any) -> None:
    # the router and the tap on one host: a tap hop's copy is made on the router's host
    await cmd(nc, "_host.host.register", {"host": "h1", "providers": ["router", "tc-mirror"]})
    b = await base(nc)
    fw = await cmd(nc, f"{T}.firewall.create", {"name": "fw", "network_id": b["net"], "rules": [
        {"action": "allow", "protocol": "tcp", "destination_port": "80"},
        {"action": "deny", "protocol": "any", "source_cidr": "10.0.0.0/8"}]})
    r3 = await cmd(nc, f"{T}.firewall.insert_rule", {"id": fw["id"], "rule": {"action": "reject", "protocol": "udp"}})
    await cmd(nc, f"{T}.firewall.move_rule", {"id": fw["id"], "rule_id": r3["id"], "before": None})
    bad = await cmd(nc, f"{T}.firewall.insert_rule", {"id": fw["id"], "rule": {
        "action": "allow", "protocol": "icmp", "destination_port": "80"}}, ok=False)
    assert bad["error"]["field"] == "$.rule.protocol"
    nat = await cmd(nc, f"{T}.nat.create", {"name": "pf", "router_id": b["router"], "port_forwards": [
        {"protocol": "tcp", "external_port": 8080, "internal_address": "10.20.0.5", "internal_port": 80}]})
    outside = await cmd(nc, f"{T}.nat.add_forward", {"id": nat["id"], "forward": {
        "protocol": "tcp", "external_port": 2222, "internal_address": "172.16.0.1", "internal_port": 22}}, ok=False)
    assert outside["error"]["field"] == "$.forward.internal_address"
    p1 = await cmd(nc, f"{T}.port.create", {"network_id": b["net"], "host": "h1"})
    p2 = await cmd(nc, f"{T}.port.create", {"network_id": b["net"], "host": "h1"})
    tap = await cmd(nc, f"{T}.tap.create", {"name": "t", "port_id": p1["id"], "monitor_port_id": p2["id"]})
    lb = await cmd(nc, f"{T}.loadbalancer.create", {"name": "lb", "vip_network_id": b["net"]})
    wrong = await cmd(nc, f"{T}.chain.create", {"name": "c", "classifier": {"protocol": "tcp"},
                                                 "router_id": b["router"], "hops": [
        {"service_id": lb["id"], "kind": "loadbalancer", "insertion": "bump_in_the_wire"}]}, ok=False)
    assert wrong["error"]["field"] == "$.hops[0].insertion"
    classifier = {"protocol": "tcp", "destination_port": "80"}
    chain = await cmd(nc, f"{T}.chain.create", {"name": "c", "classifier": classifier, "router_id": b["router"],
                                                 "priority": 10, "symmetric": True, "hops": [
        {"service_id": fw["id"], "kind": "firewall", "insertion": "bump_in_the_wire"},
        {"service_id": tap["id"], "kind": "tap", "insertion": "tap"}]})
    foreign = await cmd(nc, "globex.chain.create", {"name": "c", "classifier": {}, "router_id": b["router"],
                                                    "hops": [{"service_id": fw["id"], "kind": "firewall",
                                                              "insertion": "l3"}]}, ok=False)
    assert (foreign["error"]["code"], foreign["error"]["field"]) == ("not_found", "$.router_id")
    lb2 = await cmd(nc, f"{T}.loadbalancer.create", {"name": "lb2", "vip_network_id": b["net"]})
    tie = await cmd(nc, f"{T}.chain.create", {"name": "d", "classifier": {"protocol": "any"}, "router_id": b["router"],
                                               "priority": 10, "hops": [
        {"service_id": lb2["id"], "kind": "loadbalancer", "insertion": "l3"}]}, ok=False)
    assert tie["error"]["field"] == "$.priority"
    await cmd(nc, f"{T}.chain.update", {"id": chain["id"], "hops": [
        {"service_id": fw["id"], "kind": "firewall", "insertion": "bump_in_the_wire"},
        {"service_id": tap["id"], "kind": "tap", "insertion": "tap"},
        {"service_id": lb["id"], "kind": "loadbalancer", "insertion": "l3"}]})
    gone = await cmd(nc, f"{T}.router.delete", {"id": b["router"]}, ok=False)
    assert gone["error"]["code"] == "in_use"
    used = await cmd(nc, f"{T}.firewall.delete", {"id": fw["id"]}, ok=False)
    assert used["error"]["code"] == "in_use"
    await cmd(nc, f"{T}.chain.delete", {"id": chain["id"]})
    await cmd(nc, f"{T}.firewall.delete", {"id": fw["id"]})
    await cmd(nc, f"{T}.nat.delete", {"id": nat["id"]})
    await cmd(nc, f"{T}.tap.delete", {"id": tap["id"]})


async def test_scheduler_places_on_least_loaded_host_and_moves_off_a_lost_one(
    svc: CommandService, nc: Any
) -> None:
    b = await base(nc)
    lb0 = await cmd(nc, f"{T}.loadbalancer.create", {"name": "early", "vip_network_id": b["net"]})
    await cmd(nc, "_host.host.register", {"host": "h1", "providers": ["haproxy"]})
    await cmd(nc, "_host.host.register", {"host": "h2", "providers": ["haproxy"]})
    await cmd(nc, "_host.host.register", {"host": "h3", "providers": ["nftables"]})
    lbs = [lb0] + [await cmd(nc, f"{T}.loadbalancer.create", {"name": f"lb{i}", "vip_network_id": b["net"]})
                   for i in range(2)]

    async def hosts() -> dict[str, str]:
        out: dict[str, str] = {}
        for m in await event_messages(svc.nats_url):
            if m["headers"]["Splice-Topic"] == "LoadBalancerScheduled":
                out[m["subject"].split(".")[4]] = m["payload"]["host"]
        return out

    placed = await hosts()
    assert placed[lb0["id"]] == "h1"  # waited for a host; placed when h1 registered
    assert sorted(placed[lb["id"]] for lb in lbs) == ["h1", "h1", "h2"]  # least loaded, ties by name
    await cmd(nc, "_admin.host.lost", {"host": "h2"})
    placed = await hosts()
    assert all(placed[lb["id"]] == "h1" for lb in lbs)
