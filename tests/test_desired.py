"""What one host must serve, from the agent's folds (`agents.desired`, pure): which driver gets
each load balancer, where a routed one runs, which VIPs a router's legs hold, and why a load
balancer placed here is not served."""

from __future__ import annotations

from splice.agents.desired import Folds, desired_lbs, desired_routers
from splice.agents.drivers.router import RouterLayout
from splice.events.lbaas_fold import LoadBalancerState
from splice.events.router_fold import RouterInterface, RouterState
from splice.events.wire import InsertionState

P = "spx-"
T = "acme"
R = "11111111-0000-0000-0000-000000000001"
NET_A, NET_B = "aaaaaaaa-0000-0000-0000-000000000001", "bbbbbbbb-0000-0000-0000-000000000001"
NETWORKS = {f"{T}.network.{NET_A}": ("10.0.1.0/24", "10.0.1.1"),
            f"{T}.network.{NET_B}": ("10.0.2.0/24", "10.0.2.1")}


def lb(provider: str, *, mode: str = "floating", router: str | None = None, host: str = "h1",
       vip: str = "10.0.1.50", network: str = NET_A, status: str = "ACTIVE") -> LoadBalancerState:
    return LoadBalancerState(
        vip_network_id=network, vip_address=vip, host=host, provisioning_status=status,
        generation=3, insertion=InsertionState(mode=mode, service_type_id="st",  # type: ignore[arg-type]
                                               provider=provider, router_id=router))


def router(host: str = "h1") -> RouterState:
    return RouterState(host=host, interfaces={
        NET_A: RouterInterface(port_id="p1", ip_address="10.0.1.1"),
        NET_B: RouterInterface(port_id="p2", ip_address="10.0.2.1")})


def folds(**lbs: LoadBalancerState) -> Folds:
    return Folds(lbs={f"{T}.loadbalancer.{k}": v for k, v in lbs.items()}, networks=NETWORKS,
                 routers={f"{T}.router.{R}": router()})


def test_each_provider_gets_its_own_and_a_routed_one_runs_in_its_routers_namespace() -> None:
    f = folds(a=lb("haproxy"), b=lb("nftables-l4", vip="10.0.1.51"),
              c=lb("haproxy", mode="routed", router=R, network=NET_B, vip="10.0.2.60"))
    out, refused = desired_lbs(f, "h1", ["haproxy", "nftables-l4"], prefix=P, routing=True)
    assert refused == {}
    assert set(out["haproxy"]) == {"a", "c"} and set(out["nftables-l4"]) == {"b"}
    assert out["haproxy"]["a"].hosted_in is None
    assert out["haproxy"]["c"].hosted_in == RouterLayout(P).namespace(R)
    assert out["haproxy"]["c"].network.cidr == "10.0.2.0/24"


def test_the_routers_leg_on_the_vip_network_holds_the_vips_routed_on_it() -> None:
    f = folds(c=lb("haproxy", mode="routed", router=R, network=NET_B, vip="10.0.2.60"),
              d=lb("haproxy", mode="routed", router=R, network=NET_B, vip="10.0.2.61",
                   status="PENDING_DELETE"),
              e=lb("haproxy", vip="10.0.2.62", network=NET_B))  # floating: its own leg
    (spec,) = desired_routers(f, "h1", prefix=P).values()
    vips = {leg.ns_ifname: leg.vips for leg in spec.legs}
    assert vips == {f"qr-{NET_A[:8]}": (), f"qr-{NET_B[:8]}": ("10.0.2.60/32",)}


def test_what_this_host_cannot_serve_is_refused_with_the_reason_never_given_to_another() -> None:
    f = folds(a=lb("tc-mirror"), c=lb("haproxy", mode="routed", router=R, network=NET_B),
              g=lb("haproxy", host="h2"))
    out, refused = desired_lbs(f, "h1", ["haproxy"], prefix=P, routing=False)
    assert out == {"haproxy": {}}  # g is another host's
    assert "no driver for provider 'tc-mirror'" in refused[f"{T}.loadbalancer.a"].reason
    assert f"router {R} is not served" in refused[f"{T}.loadbalancer.c"].reason
    assert refused[f"{T}.loadbalancer.c"].generation == 3
    moved = Folds(lbs=f.lbs, networks=NETWORKS, routers={f"{T}.router.{R}": router("h2")})
    _, refused = desired_lbs(moved, "h1", ["haproxy"], prefix=P, routing=True)
    assert f"{T}.loadbalancer.c" in refused  # its router lives elsewhere now
