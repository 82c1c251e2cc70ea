"""Why it waits: a service that no live host can serve says so, and stops saying so when placed.

The command side runs in `World` (the production handlers over the library's in-memory store);
its stored events then go through the production projector into a SQLite read model, and the
views are queried as `splice.qry` answers them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from world import World

from splice.events import contracts as c
from splice.projections.envelope import Event as ReadEvent
from splice.projections.envelope import decode_payload
from splice.projections.projector import Projector
from splice.projections.queries import parse_query, run_query
from splice.projections.store import open_store
from splice.projections.views import QUERY_VIEWS

T = "acme"
L4 = "nftables-l4"
REASON = f"waiting for a host that offers {L4}"


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    yield world
    world.close()


def setup(w: World) -> str:
    """The demo's situation: the default type's provider (nftables-l4) is offered by no host;
    the one host there offers haproxy only. Returns the VIP network."""
    w.cmd("_admin", "CreateServiceType", name="silver", providers={"loadbalancer": L4})
    w.cmd("_host", "RegisterHost", host="h1", providers=["haproxy", "router"])
    return w.cmd(T, "CreateNetwork", name="web", cidr="10.1.0.0/24")


def payloads(w: World, aggregate_id: str, event_type: str) -> list[Any]:
    """The aggregate's stored events of one type, decoded with the wire contracts."""
    return [
        msgspec.json.decode(se.state, type=c.EVENT_TYPES[event_type])
        for se in w.app.recorder.select_events(aggregate_id)
        if se.topic == event_type
    ]


class ReadSide:
    """The production projector over a SQLite read model, fed the World's stored events."""

    def __init__(self, w: World, path: Path) -> None:
        self.w = w
        self.store = open_store(str(path))
        self.projector = Projector(self.store)
        self.seq = 0
        self.seen: dict[str, int] = {}  # aggregate id -> the last version applied

    def catch_up(self, *aggregate_ids: str) -> None:
        events = []
        for agg_id in aggregate_ids:
            tenant, kind, ident = agg_id.split(".")
            for se in self.w.app.recorder.select_events(agg_id, gt=self.seen.get(agg_id)):
                self.seq += 1
                self.seen[agg_id] = se.originator_version
                events.append(ReadEvent(
                    seq=self.seq, time_ns=self.seq * 1_000_000_000, tenant=tenant, aggregate=kind,
                    aggregate_id=ident, type=se.topic, version=se.originator_version,
                    payload=decode_payload(se.topic, se.state),
                ))
        self.projector.apply(events)

    def ask(self, view: str, **filters: Any) -> list[dict[str, Any]]:
        query = parse_query(T, QUERY_VIEWS[view], filters)
        return list(run_query(self.store, query)["items"])

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def read(w: World, tmp_path: Path) -> Iterator[ReadSide]:
    side = ReadSide(w, tmp_path / "readmodels.sqlite")
    yield side
    side.close()


def test_a_load_balancer_no_host_can_serve_says_what_it_waits_for(w: World) -> None:
    net = setup(w)
    lb = w.get(T, "loadbalancer", w.cmd(T, "CreateLoadBalancer", name="web", vip_network_id=net))
    assert "LoadBalancerScheduled" in w.last
    (scheduled,) = payloads(w, lb.id, "LoadBalancerScheduled")
    assert (scheduled.host, scheduled.previous_host, scheduled.waiting_for) == ("", None, L4)
    assert (lb.host, lb.waiting_for, lb.provisioning_status) == (None, L4, "PENDING_CREATE")
    # said once: a change while it waits does not repeat it
    w.cmd(T, "UpdateLoadBalancer", id=lb.id.rsplit(".", 1)[1], description="still waiting")
    assert "LoadBalancerScheduled" not in w.last


def test_a_host_offering_the_provider_places_the_waiting_load_balancer_and_clears_the_reason(
    w: World,
) -> None:
    net = setup(w)
    public = w.cmd(T, "CreateLoadBalancer", name="web", vip_network_id=net)
    w.cmd("_host", "RegisterHost", host="h2", providers=["haproxy"])  # not what it waits for
    assert "LoadBalancerScheduled" not in w.last
    assert w.get(T, "loadbalancer", public).waiting_for == L4
    w.cmd("_host", "RegisterHost", host="h3", providers=[L4])
    assert w.last == ["HostRegistered", "ServicePlaced", "LoadBalancerScheduled"]
    lb = w.get(T, "loadbalancer", public)
    assert (lb.host, lb.waiting_for) == ("h3", None)
    placed = payloads(w, lb.id, "LoadBalancerScheduled")[-1]
    assert (placed.host, placed.previous_host, placed.waiting_for) == ("h3", None, None)


def test_a_load_balancer_whose_host_is_lost_says_it_waits_again(w: World) -> None:
    net = setup(w)
    w.cmd("_host", "RegisterHost", host="h3", providers=[L4])
    public = w.cmd(T, "CreateLoadBalancer", name="web", vip_network_id=net)
    assert w.get(T, "loadbalancer", public).host == "h3"
    w.cmd("_admin", "DeclareHostLost", host="h3")
    lb = w.get(T, "loadbalancer", public)
    assert (lb.host, lb.waiting_for) == (None, L4)
    lost = payloads(w, lb.id, "LoadBalancerScheduled")[-1]
    assert (lost.host, lost.previous_host, lost.waiting_for) == ("", "h3", L4)


def test_firewalls_and_routers_say_what_they_wait_for_too(w: World) -> None:
    w.cmd("_admin", "CreateServiceType", name="fw", providers={"firewall": "nftables"})
    w.cmd("_host", "RegisterHost", host="h1", providers=["haproxy"])
    net = w.cmd(T, "CreateNetwork", name="web", cidr="10.1.0.0/24")
    fw = w.get(T, "firewall", w.cmd(T, "CreateFirewall", name="f", network_id=net))
    router = w.get(T, "router", w.cmd(T, "CreateRouter", name="r"))
    assert (fw.host, fw.waiting_for) == (None, "nftables")
    assert (router.host, router.waiting_for) == (None, "router")
    (scheduled,) = payloads(w, fw.id, "ServiceScheduled")
    assert (scheduled.host, scheduled.waiting_for) == ("", "nftables")
    w.cmd("_host", "RegisterHost", host="h2", providers=["nftables", "router"])
    fw, router = w.get(T, "firewall", fw.id.rsplit(".", 1)[1]), w.get(T, "router", router.id.rsplit(".", 1)[1])
    assert (fw.host, fw.waiting_for) == ("h2", None)
    assert (router.host, router.waiting_for) == ("h2", None)


def test_old_scheduling_events_without_the_field_decode_unchanged() -> None:
    old = (b'{"type":"ServiceScheduled","host":"","previous_host":null,"timestamp":'
           b'"2026-01-01T10:00:00Z","actor":"a","command_id":"c","correlation_id":"c"}')
    assert msgspec.json.decode(old, type=c.EVENT_TYPES["ServiceScheduled"]).waiting_for is None
    old_lb = old.replace(b"ServiceScheduled", b"LoadBalancerScheduled")
    assert msgspec.json.decode(old_lb, type=c.EVENT_TYPES["LoadBalancerScheduled"]).waiting_for is None


def test_the_views_show_the_reason_while_it_waits_and_not_once_placed(
    w: World, read: ReadSide
) -> None:
    net = setup(w)
    public = w.cmd(T, "CreateLoadBalancer", name="web", vip_network_id=net)
    fw_public = w.cmd(T, "CreateFirewall", name="f", network_id=net,
                      service_type_id=w.cmd("_admin", "CreateServiceType", name="fw",
                                            providers={"firewall": "nftables"}))
    lb_id, fw_id = f"{T}.loadbalancer.{public}", f"{T}.firewall.{fw_public}"
    read.catch_up(lb_id, fw_id)
    (row,) = read.ask("loadbalancers", id=public)
    assert (row["host"], row["status_reason"], row["provisioning_status"]) == (
        None, REASON, "PENDING_CREATE")
    (fw_row,) = read.ask("firewalls", id=fw_public)
    assert fw_row["status_reason"] == "waiting for a host that offers nftables"
    assert fw_row["fields"]["waiting_for"] == "nftables"

    w.cmd("_host", "RegisterHost", host="h2", providers=[L4, "nftables"])
    read.catch_up(lb_id, fw_id)
    (row,) = read.ask("loadbalancers", id=public)
    assert (row["host"], row["status_reason"]) == ("h2", None)
    (fw_row,) = read.ask("firewalls", id=fw_public)
    assert (fw_row["fields"]["host"], fw_row["status_reason"]) == ("h2", None)


def test_a_deleted_waiting_load_balancer_gives_no_reason(w: World, read: ReadSide) -> None:
    net = setup(w)
    public = w.cmd(T, "CreateLoadBalancer", name="web", vip_network_id=net)
    w.cmd(T, "DeleteLoadBalancer", id=public)  # never placed: deleted at once
    read.catch_up(f"{T}.loadbalancer.{public}")
    (row,) = read.ask("loadbalancers", id=public, deleted=True)
    assert (row["provisioning_status"], row["status_reason"]) == ("DELETED", None)
