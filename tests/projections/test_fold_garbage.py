"""A rebuild's worker runs without the cyclic collector (`projections/parallel.py`), so what
folding allocates must be freed by reference counts alone. A tenant's day of commands, every
kind of service in it, folded by every view batch after batch, leaves no cyclic garbage."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from world import World

from splice.events import subjects
from splice.projections.envelope import Event, from_parts
from splice.projections.projector import Projector
from splice.projections.store import open_store

T = "acme"
PROVIDERS = {"loadbalancer": "haproxy", "firewall": "nftables", "nat": "nftables",
             "tap": "tc-mirror"}
MEMBER = {"address": "10.1.0.11", "protocol_port": 8080}


def a_day(w: World) -> None:
    """Service types, hosts, networks, ports, a router, then each kind of service made,
    changed and deleted."""
    w.cmd("_host", "RegisterHost", host="h1", providers=["router", "haproxy", "nftables",
                                                           "tc-mirror"])
    st = w.cmd("_admin", "CreateServiceType", name="full", providers=PROVIDERS, default=True)
    w.cmd("_admin", "UpdateServiceType", id=st, description="all of it")
    w.cmd("_admin", "SetQuota", tenant=T, limits={"loadbalancer": 5})
    net = w.cmd(T, "CreateNetwork", name="web", cidr="10.1.0.0/24")
    ext = w.cmd(T, "CreateNetwork", name="ext", cidr="192.0.2.0/28")
    ports = [w.cmd(T, "CreatePort", network_id=net, host="h1") for _ in range(3)]
    w.cmd(T, "UpdatePort", id=ports[0], name="first")
    router = w.cmd(T, "CreateRouter", name="r")
    w.cmd(T, "AddRouterInterface", id=router, network_id=net)
    w.cmd("_admin", "SetNetworkExternal", tenant=T, id=ext)
    w.cmd(T, "SetRouterGateway", id=router, network_id=ext)
    lb = w.cmd(T, "CreateLoadBalancer", name="lb", vip_network_id=net, pools=[
        {"name": "p0", "protocol": "HTTP", "members": [MEMBER],
         "healthmonitor": {"type": "HTTP", "delay": 5, "timeout": 3}}],
        listeners=[{"name": "http", "protocol": "HTTP", "protocol_port": 80,
                    "default_pool": "p0"}])
    pool = next(iter(w.get(T, "loadbalancer", lb).pools))
    member = w.cmd(T, "CreateMember", loadbalancer_id=lb, pool_id=pool,
                   member={"address": "10.1.0.12", "protocol_port": 8080})
    w.cmd(T, "UpdateMember", loadbalancer_id=lb, pool_id=pool, id=member, weight=5)
    w.cmd(T, "DeleteMember", loadbalancer_id=lb, pool_id=pool, id=member)
    w.cmd(T, "DeleteHealthMonitor", loadbalancer_id=lb, pool_id=pool)
    fw = w.cmd(T, "CreateFirewall", name="fw", router_id=router, rules=[
        {"action": "allow", "description": "a"}, {"action": "deny", "description": "b"}])
    w.cmd(T, "InsertFirewallRule", id=fw, rule={"action": "reject", "description": "c"})
    bump = w.cmd(T, "CreateFirewall", name="bump", network_id=net)
    nat = w.cmd(T, "CreateNat", name="n", router_id=router, port_forwards=[
        {"protocol": "tcp", "external_port": 80, "internal_address": "10.1.0.5",
         "internal_port": 80}])
    tap = w.cmd(T, "CreateTap", name="t", port_id=ports[1], monitor_port_id=ports[2])
    chain = w.cmd(T, "CreateServiceChain", name="c", classifier={"protocol": "tcp"},
                  router_id=router, hops=[
                      {"service_id": bump, "kind": "firewall", "insertion": "bump_in_the_wire"}])
    w.cmd(T, "DeleteServiceChain", id=chain)
    for command, ident in (("DeleteTap", tap), ("DeleteNat", nat), ("DeleteFirewall", bump),
                           ("DeleteFirewall", fw), ("DeleteLoadBalancer", lb)):
        w.cmd(T, command, id=ident)
    w.cmd("_admin", "DeclareHostLost", host="h1")


def stored(w: World) -> list[Event]:
    """The world's events as the projector reads them from the stream."""
    out = []
    for n in w.app.recorder.select_notifications(start=1, limit=10_000):
        tenant, aggregate, ident = n.originator_id.split(".", 2)
        out.append(from_parts(
            n.id, time.time_ns(), subjects.event(tenant, aggregate, ident, n.topic),
            {subjects.H_TOPIC: n.topic, subjects.H_VERSION: str(n.originator_version)},
            n.state))
    return out


def test_folding_every_kind_of_event_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    w = World()
    try:
        a_day(w)
        events = stored(w)
    finally:
        w.close()
    kinds = {e.type for e in events}
    assert len(kinds) >= 40, sorted(kinds)  # the day covers most of the registry
    store = open_store(str(tmp_path / "readmodels.sqlite"))
    projector = Projector(store)
    try:
        projector.apply(events[:5])  # the caches, statements and committer thread made
        gc.collect()
        gc.disable()
        try:
            for i in range(5, len(events), 7):
                projector.apply(events[i:i + 7])
            found = gc.collect()
        finally:
            gc.enable()
        assert projector.position == events[-1].seq
        assert found == 0, f"folding left {found} objects in reference cycles"
    finally:
        projector.close()
        store.close()
