"""What one host must serve, from the agent's folds: pure functions, no I/O.

`desired_lbs` hands each provider's driver the load balancers placed on this host; `desired_routers`
hands the router driver the routers placed here, each with the firewalls and NATs routed on it and
the VIPs of the load balancers routed on it (held on the router's legs).

A routed load balancer (insertion mode ``routed``) runs in its router's namespace: it is placed
where its router is (the command side schedules it there and moves it with the router), its VIP
is an address of the router's leg on the VIP's network, and its provider's driver runs its
dataplane in that namespace (`LoadBalancerSpec.hosted_in`). A load balancer this host cannot
serve (no driver for its provider, or its router is not served here) is returned as an error
with the reason, never handed to another driver.

`desired_chains` hands the chain driver, by router, the chains steered in the routers placed
here (`drivers.chain`) with the detours of their out-of-path firewalls, and the chains of those
routers it will not steer, with the reason.

`desired_taps` hands the tap driver the standalone taps placed on this host (where both their
ports are bound), each naming its port's and its monitor's host-side interfaces
(`drivers.tap.port_interface`); a tap it cannot serve is returned with the reason.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from splice.events.advanced_fold import FirewallState, NatState, TapState
from splice.events.chain_fold import ChainState
from splice.events.lbaas_fold import LoadBalancerState
from splice.events.port_fold import PortState
from splice.events.router_fold import RouterState

from .drivers.chain.model import chain_specs, detour
from .drivers.chain.plan import RouterChains
from .drivers.chain.render import render_chains
from .drivers.nftables.render import chain_table
from .drivers.overlay.plan import Segment, segments
from .drivers.router import RouterLayout, RouterSpec, router_spec
from .drivers.router.routed import routed_on
from .drivers.tap.model import TapSpec, port_interface
from .folds import HostInfo
from .model import LoadBalancerSpec, NetworkSpec

GONE = ("PENDING_DELETE", "DELETED")


def public(agg_id: str) -> str:
    return agg_id.rsplit(".", 1)[1]


def tenant(agg_id: str) -> str:
    return agg_id.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class Folds:
    """The agent's folds, by aggregate id (networks: (cidr, gateway))."""

    lbs: Mapping[str, LoadBalancerState] = field(default_factory=dict)
    networks: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    routers: Mapping[str, RouterState] = field(default_factory=dict)
    firewalls: Mapping[str, FirewallState] = field(default_factory=dict)
    nats: Mapping[str, NatState] = field(default_factory=dict)
    taps: Mapping[str, TapState] = field(default_factory=dict)
    ports: Mapping[str, PortState] = field(default_factory=dict)
    chains: Mapping[str, ChainState] = field(default_factory=dict)
    segments: Mapping[str, int] = field(default_factory=dict)  # network aggregate id -> VNI
    hosts: Mapping[str, HostInfo] = field(default_factory=dict)  # by host name


@dataclass(frozen=True, slots=True)
class Refused:
    """A load balancer placed here that this host cannot serve, and why."""

    generation: int
    reason: str


def _router_here(folds: Folds, host: str, agg_id: str, state: LoadBalancerState) -> str | None:
    """The aggregate id of the router a routed LB runs on, if that router is served here."""
    ins = state.insertion
    if ins is None or ins.mode != "routed" or not ins.router_id:
        return None
    router_agg = f"{tenant(agg_id)}.router.{ins.router_id}"
    router = folds.routers.get(router_agg)
    return router_agg if router is not None and router.host == host and not router.deleted else None


def desired_lbs(folds: Folds, host: str, providers: Collection[str], *, prefix: str,
                routing: bool) -> tuple[dict[str, dict[str, LoadBalancerSpec]], dict[str, Refused]]:
    """By provider, the load balancers this host serves (public id -> spec); and, by aggregate
    id, those placed here that it cannot serve. `routing`: this host runs the router driver."""
    out: dict[str, dict[str, LoadBalancerSpec]] = {p: {} for p in providers}
    refused: dict[str, Refused] = {}
    layout = RouterLayout(prefix)
    for agg_id, state in folds.lbs.items():
        if state.host != host or state.provisioning_status in GONE:
            continue
        net = folds.networks.get(f"{tenant(agg_id)}.network.{state.vip_network_id}")
        if net is None:
            continue
        if state.provider not in out:
            refused[agg_id] = Refused(state.generation,
                                      f"host {host} has no driver for provider {state.provider!r}")
            continue
        hosted_in = None
        if state.insertion is not None and state.insertion.mode == "routed":
            router_id = state.insertion.router_id or ""
            if not routing or _router_here(folds, host, agg_id, state) is None:
                refused[agg_id] = Refused(state.generation,
                                          f"its router {router_id} is not served on host {host}")
                continue
            hosted_in = layout.namespace(router_id)
        lb = public(agg_id)
        vip_port = folds.ports.get(f"{tenant(agg_id)}.port.{state.vip_port_id}")
        out[state.provider][lb] = LoadBalancerSpec(
            lb, NetworkSpec(state.vip_network_id, *net), state, hosted_in,
            vip_port.mac_address if vip_port is not None and vip_port.mac_address
            and hosted_in is None else None)  # a routed VIP is on the router's leg
    return out, refused


def routed_vips(folds: Folds, host: str, router_agg: str) -> dict[str, list[str]]:
    """By network id, the VIPs of the live load balancers routed on this router."""
    vips: dict[str, list[str]] = {}
    for agg_id, state in sorted(folds.lbs.items()):
        if (state.host == host and state.provisioning_status not in GONE and state.vip_address
                and _router_here(folds, host, agg_id, state) == router_agg):
            vips.setdefault(state.vip_network_id, []).append(state.vip_address)
    return vips


def desired_routers(folds: Folds, host: str, *, prefix: str) -> dict[str, RouterSpec]:
    """The routers placed on this host, by public id, as the router driver builds them."""
    out: dict[str, RouterSpec] = {}
    for agg_id, state in folds.routers.items():
        if state.host != host or state.deleted:
            continue
        head = f"{tenant(agg_id)}.network."
        nets = {k[len(head):]: v for k, v in folds.networks.items() if k.startswith(head)}
        fws, nats = routed_on(agg_id, folds.firewalls, folds.nats)
        out[public(agg_id)] = router_spec(public(agg_id), state, nets, prefix, firewalls=fws,
                                          nats=nats, vips=routed_vips(folds, host, agg_id))
    return out


def desired_taps(folds: Folds, host: str, providers: Collection[str]
                 ) -> tuple[dict[str, TapSpec], dict[str, str]]:
    """The standalone taps this host serves (public id -> spec), and, by public id, those
    placed here that it cannot serve, with the reason. Routed taps are not served here, nor a
    tap that is a chain's hop: it copies the chain's traffic at its point, not its port's."""
    out: dict[str, TapSpec] = {}
    refused: dict[str, str] = {}
    for agg_id, tap in sorted(folds.taps.items()):
        if tap.host != host or tap.deleted or tap.insertion is None or tap.router_id or tap.chains:
            continue  # a chain's tap hop copies the chain's traffic (`drivers.chain`)
        if tap.insertion.provider not in providers:
            refused[public(agg_id)] = f"host {host} has no driver for provider {tap.insertion.provider!r}"
            continue
        ports = [folds.ports.get(f"{tenant(agg_id)}.port.{p}") for p in (tap.port_id, tap.monitor_port_id)]
        away = [f"{what} port {p} is {'gone' if s is None or s.deleted else f'bound to {s.host}'}"
                for what, p, s in zip(("its", "its monitor"), (tap.port_id, tap.monitor_port_id), ports,
                                      strict=True) if s is None or s.deleted or s.host != host]
        if away:
            refused[public(agg_id)] = "; ".join(away)
            continue
        out[public(agg_id)] = TapSpec(public(agg_id), port_interface(tap.port_id),
                                      port_interface(tap.monitor_port_id), tap.direction)
    return out, refused


def desired_chains(folds: Folds, host: str, *, prefix: str
                   ) -> tuple[dict[str, RouterChains], dict[str, str]]:
    """By router id, the chains of the routers placed on this host, and the detours of their
    out-of-path firewalls (`drivers.chain.model.detour`); by chain id, those of them that are
    not steered, with the reason (`drivers.chain.model.refusal`)."""
    layout = RouterLayout(prefix)
    mine = {public(a) for a, r in folds.routers.items() if r.host == host and not r.deleted}
    chains = {public(a): c for a, c in folds.chains.items()
              if not c.deleted and c.router_id in mine}
    firewalls = {public(a): f for a, f in folds.firewalls.items() if not f.deleted}
    for fid, fw in firewalls.items():
        d = detour(fid, fw)
        if d is not None and d.router_id in mine:
            chains[fid] = d
    monitors = {public(a): port_interface(t.monitor_port_id) for a, t in folds.taps.items()
                if not t.deleted}
    ports = {public(a): p for a, p in folds.ports.items()}
    specs, refused = chain_specs(chains, firewalls, prefix, monitors=monitors, ports=ports)
    out: dict[str, RouterChains] = {}
    for rid in sorted({s.router_id for s in specs.values()}):
        these = tuple(s for _, s in sorted(specs.items()) if s.router_id == rid)
        out[rid] = RouterChains(rid, layout.namespace(rid), these,
                                render_chains(chain_table(prefix, rid), these))
    return out, refused


def desired_segments(folds: Folds, host: str, bridges: Collection[str], *, prefix: str
                     ) -> dict[str, Segment]:
    """The networks this host joins to the others over VXLAN (`drivers.overlay`), by network
    id: those whose bridge one of its drivers needs (`bridges`), and those with a compute port
    bound here; with the MACs that live on other hosts (compute ports, floating VIPs)."""
    by_bridge = {NetworkSpec(public(a), "", "").bridge_name(prefix): public(a) for a in folds.networks}
    present = {by_bridge[b] for b in bridges if b in by_bridge}
    ported = {p.network_id for p in folds.ports.values() if p.host == host and not p.deleted}
    vnis = {public(a): v for a, v in folds.segments.items()}
    remotes = {name: h.underlay_ip for name, h in folds.hosts.items()
               if name != host and h.alive and h.underlay_ip}
    elsewhere = {public(a): (p.network_id, p.mac_address, remotes[p.host])
                 for a, p in folds.ports.items() if p.host in remotes and not p.deleted}
    for agg_id, lb in folds.lbs.items():  # a floating VIP: its port's MAC is where the LB is
        vip_port = folds.ports.get(f"{tenant(agg_id)}.port.{lb.vip_port_id}")
        if (lb.host in remotes and lb.provisioning_status not in GONE and vip_port is not None
                and (lb.insertion is None or lb.insertion.mode != "routed")):
            elsewhere[public(agg_id)] = (lb.vip_network_id, vip_port.mac_address, remotes[lb.host])
    return segments(vnis, present | ported, prefix=prefix, remotes=set(remotes.values()),
                    ports=elsewhere)
