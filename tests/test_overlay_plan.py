"""The overlay's pure parts: which networks a host joins over VXLAN, with which VNI, flooding to
which hosts, and the plan that makes the host hold exactly that."""

from __future__ import annotations

import pytest

from splice.agents.desired import Folds, desired_segments
from splice.agents.drivers.overlay.plan import (
    FLOOD,
    Attach,
    CreateVxlan,
    DeleteFdb,
    DeleteVxlan,
    EnsureBridge,
    Observed,
    Segment,
    SetFdb,
    Underlay,
    VxlanSeen,
    plan,
    segments,
    vxlan_name,
)
from splice.agents.folds import HostInfo, fold_host
from splice.agents.model import NetworkSpec
from splice.events.port_fold import PortState

pytestmark = pytest.mark.distributed

N1 = "11111111-2222-3333-4444-555555555555"
N2 = "22222222-2222-3333-4444-555555555555"
UNDER = Underlay("10.99.0.1", "ul0")


def seg(net: str = N1, vni: int = 4096, remotes: tuple[str, ...] = ("10.99.0.2",),
        macs: dict[str, str] | None = None) -> Segment:
    return Segment(net, vni, NetworkSpec(net, "", "").bridge_name("spl-"), vxlan_name("spl-", net),
                   frozenset(remotes), macs or {})


def seen(s: Segment, **over: object) -> VxlanSeen:
    fields: dict[str, object] = dict(vni=s.vni, local=UNDER.address, dev=UNDER.dev, port=4789,
                                     learning=False, master=s.bridge, up=True,
                                     floods=s.remotes, macs=dict(s.macs))
    fields.update(over)
    return VxlanSeen(**fields)  # type: ignore[arg-type]


def test_names_fit_and_carry_the_prefix() -> None:
    assert vxlan_name("spl-", N1) == "spl-vx111111112" and len(vxlan_name("abcde-", N1)) == 15


def test_segments_skip_networks_without_a_vni_and_keep_remote_ports_macs() -> None:
    out = segments({N1: 4096, N2: 0}, {N1, N2}, prefix="spl-", remotes={"10.99.0.2"},
                   ports={"p": (N1, "FA:16:3E:00:00:01", "10.99.0.2"), "q": (N2, "fa:16:3e:00:00:02", "x")})
    assert list(out) == [N1]
    assert out[N1].macs == {"fa:16:3e:00:00:01": "10.99.0.2"} and out[N1].vni == 4096


def test_plan_makes_the_bridge_the_device_its_floods_and_macs_then_nothing() -> None:
    s = seg(remotes=("10.99.0.2", "10.99.0.3"), macs={"fa:16:3e:00:00:01": "10.99.0.2"})
    ops = plan({N1: s}, Observed(frozenset(), {}), UNDER, make_bridges={N1})
    assert ops == [EnsureBridge(s.bridge), CreateVxlan(s, UNDER), SetFdb(s.vxlan, FLOOD, "10.99.0.2"),
                   SetFdb(s.vxlan, FLOOD, "10.99.0.3"), SetFdb(s.vxlan, "fa:16:3e:00:00:01", "10.99.0.2")]
    assert plan({N1: s}, Observed(frozenset({s.bridge}), {s.vxlan: seen(s)}), UNDER) == []


@pytest.mark.parametrize(("drift", "first"), [
    ({"vni": 5000}, CreateVxlan), ({"local": "10.99.0.9"}, CreateVxlan),
    ({"learning": True}, CreateVxlan), ({"port": 8472}, CreateVxlan),
    ({"master": None}, Attach), ({"up": False}, Attach),
])
def test_plan_repairs_a_device_that_drifted(drift: dict[str, object], first: type) -> None:
    s = seg()
    ops = plan({N1: s}, Observed(frozenset({s.bridge}), {s.vxlan: seen(s, **drift)}), UNDER)
    assert isinstance(ops[0], first)
    if first is CreateVxlan:  # made anew: its entries are made again too
        assert SetFdb(s.vxlan, FLOOD, "10.99.0.2") in ops


def test_plan_follows_hosts_and_ports_that_come_and_go() -> None:
    s = seg(remotes=("10.99.0.3",), macs={"fa:16:3e:00:00:02": "10.99.0.3"})
    had = seen(s, floods=frozenset({"10.99.0.2"}), macs={"fa:16:3e:00:00:01": "10.99.0.2"})
    ops = plan({N1: s}, Observed(frozenset({s.bridge}), {s.vxlan: had}), UNDER)
    assert ops == [SetFdb(s.vxlan, FLOOD, "10.99.0.3"), DeleteFdb(s.vxlan, FLOOD, "10.99.0.2"),
                   SetFdb(s.vxlan, "fa:16:3e:00:00:02", "10.99.0.3"),
                   DeleteFdb(s.vxlan, "fa:16:3e:00:00:01", "10.99.0.2")]


def test_plan_removes_devices_of_networks_gone_or_bridges_gone_and_holds_nothing_without_underlay() -> None:
    s = seg()
    observed = Observed(frozenset({s.bridge}), {s.vxlan: seen(s)})
    assert plan({}, observed, UNDER) == [DeleteVxlan(s.vxlan)]
    assert plan({N1: s}, Observed(frozenset(), {s.vxlan: seen(s)}), UNDER) == [DeleteVxlan(s.vxlan)]
    assert plan({N1: s}, observed, None, make_bridges={N1}) == [DeleteVxlan(s.vxlan)]


def test_a_host_joins_the_networks_of_its_legs_and_ports_flooding_to_live_hosts() -> None:
    hosts: dict[str, HostInfo] = {}
    for topic, host, ip in (("HostRegistered", "h1", "10.99.0.1"), ("HostRegistered", "h2", "10.99.0.2"),
                            ("HostRegistered", "h3", "10.99.0.3"), ("HostLost", "h3", None)):
        fold_host(hosts, topic, type("E", (), {"host": host, "underlay_ip": ip})())
    folds = Folds(
        networks={f"t.network.{N1}": ("10.0.0.0/24", "10.0.0.1"),
                  f"t.network.{N2}": ("10.0.1.0/24", "10.0.1.1")},
        segments={f"t.network.{N1}": 4096, f"t.network.{N2}": 4097},
        ports={"t.port.p1": PortState(network_id=N2, mac_address="fa:16:3e:00:00:01", host="h1"),
               "t.port.p2": PortState(network_id=N1, mac_address="fa:16:3e:00:00:02", host="h2"),
               "t.port.p3": PortState(network_id=N1, mac_address="fa:16:3e:00:00:03", host="h3")},
        hosts=hosts)
    out = desired_segments(folds, "h1", {NetworkSpec(N1, "", "").bridge_name("spl-")}, prefix="spl-")
    assert sorted(out) == [N1, N2]  # N1: a driver's leg; N2: a port bound here
    assert out[N1].remotes == {"10.99.0.2"}  # h3 is lost; h1 is this host
    assert out[N1].macs == {"fa:16:3e:00:00:02": "10.99.0.2"}  # not the lost host's port
    assert out[N2].vni == 4097 and FLOOD == "00:00:00:00:00:00"
