"""What a router is on a host, and what everything of it is called.

From the fold's `RouterState` (and the networks it is plugged into) to a `RouterSpec`: the
namespace, one leg per network, the default route and the NAT table. Pure: no I/O.

Names, all carrying the agent's prefix (so the agent deletes only what it owns):

* namespace ``<prefix>r-<8 hex of the router id>`` (Neutron's ``qrouter-<id>``, cut to fit);
* host end of a leg ``<prefix>q<8 hex of sha256(router id, network id)>`` (15 bytes at most,
  unique per router and network; never ``<prefix>v…``, the LB driver's VIP legs);
* namespace end ``qr-<8 hex of the network>`` for an interface, ``qg-<…>`` for the gateway;
* bridge ``<prefix>br-<hex of the network id>``, the LB driver's (`NetworkSpec.bridge_name`);
* NAT table ``<prefix>nat-<8 hex of the router id>`` (`nftables.render.nat_table`), with the
  port forwards of the NATs routed on the router; a table ``<prefix>fw-<8 hex>`` per firewall
  routed on it (`routed`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from splice.agents.model import NetworkSpec, fit_ifname
from splice.events.advanced_fold import FirewallState, NatState
from splice.events.router_fold import RouterState

from ..nftables import plan as nft
from ..nftables.conntrack import Guard
from ..nftables.render import Ruleset
from .routed import firewalls_desired, nat_desired

# sysctls of the namespace (paths under /proc/sys), set explicitly: a new namespace inherits
# its IPv4 conf/* values from the root namespace. Loose reverse-path filtering (2): strict mode
# drops flows a chain hop steers; no redirects from a router that may be one-armed.
NAMESPACE_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net/ipv4/conf/default/rp_filter", "2"),
    ("net/ipv4/conf/default/send_redirects", "0"),
    ("net/ipv4/conf/all/rp_filter", "2"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/ip_forward", "1"),
)
LEG_SYSCTLS: tuple[tuple[str, str], ...] = (("rp_filter", "2"), ("send_redirects", "0"))


def short(ident: str) -> str:
    """Eight hex digits of a UUID (public id or ``<tenant>.<kind>.<uuid>``)."""
    return ident.rsplit(".", 1)[-1].replace("-", "")[:8]


@dataclass(frozen=True, slots=True)
class RouterLayout:
    prefix: str

    @property
    def namespace_prefix(self) -> str:
        return f"{self.prefix}r-"

    @property
    def leg_prefix(self) -> str:
        return f"{self.prefix}q"

    def namespace(self, router_id: str) -> str:
        return f"{self.namespace_prefix}{short(router_id)}"

    def host_leg(self, router_id: str, network_id: str) -> str:
        digest = hashlib.sha256(f"{router_id}/{network_id}".encode()).hexdigest()
        return fit_ifname(self.leg_prefix, digest)

    def bridge(self, network_id: str) -> str:
        return NetworkSpec(network_id, "", "").bridge_name(self.prefix)

    @staticmethod
    def interface_leg(network_id: str, kind: str = "qr-") -> str:
        """The namespace end of the router's leg on a network (``qg-`` for the gateway)."""
        return f"{kind}{short(network_id)}"


@dataclass(frozen=True, slots=True)
class Leg:
    """One veth: the host end on the network's bridge, the namespace end with one address."""

    host_ifname: str
    ns_ifname: str
    bridge: str
    address: str  # "ip/prefixlen"
    vips: tuple[str, ...] = ()  # "ip/32": the VIPs of the load balancers routed on this leg

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset({self.address, *self.vips})


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """One router this host serves."""

    id: str  # the router's public id
    namespace: str
    legs: tuple[Leg, ...]
    default_route: tuple[str, str] | None = None  # (via, namespace ifname)
    nat: Ruleset | None = None  # SNAT and the port forwards of its NATs
    firewalls: tuple[nft.Desired, ...] = ()  # one table per firewall routed on it
    nat_guard: Guard | None = None  # which open flows may outlive a change of `nat`

    @property
    def tables(self) -> list[nft.Desired]:
        """Every nftables table the namespace must hold."""
        nat = [] if self.nat is None else [nft.Desired(self.id, self.nat, self.nat_guard)]
        return [*nat, *self.firewalls]

    @property
    def bridges(self) -> frozenset[str]:
        return frozenset(leg.bridge for leg in self.legs)


def router_spec(router_id: str, state: RouterState, networks: Mapping[str, tuple[str, str]],
                prefix: str, *, firewalls: Sequence[tuple[str, FirewallState]] = (),
                nats: Sequence[NatState] = (),
                vips: Mapping[str, Sequence[str]] | None = None) -> RouterSpec:
    """The router as the host must hold it. `networks`: (cidr, gateway) by public network id;
    a network not known yet (its event not seen) gets no leg until it is. `firewalls` (with
    their public ids) and `nats`: the services routed on it (`routed.routed_on`). `vips`: by
    network id, the VIP addresses of the load balancers routed on it (held on that leg)."""
    layout = RouterLayout(prefix)
    vips = vips or {}
    legs: list[Leg] = []
    for network_id, itf in sorted(state.interfaces.items()):
        if network_id in networks:
            legs.append(_leg(layout, router_id, network_id, networks[network_id][0],
                             itf.ip_address, "qr-", vips.get(network_id, ())))
    route: tuple[str, str] | None = None
    nat: nft.Desired | None = None
    gw = state.gateway
    if gw is not None and gw.network_id in networks:
        cidr, gateway = networks[gw.network_id]
        leg = _leg(layout, router_id, gw.network_id, cidr, gw.ip_address, "qg-",
                   vips.get(gw.network_id, ()))
        legs.append(leg)
        route = (gateway, leg.ns_ifname)
        nat = nat_desired(router_id, prefix, nats, external_if=leg.ns_ifname,
                          external_address=gw.ip_address, snat=gw.enable_snat)
    return RouterSpec(router_id, layout.namespace(router_id), tuple(legs), route,
                      None if nat is None else nat.ruleset, firewalls_desired(firewalls, prefix),
                      None if nat is None else nat.guard)


def _leg(layout: RouterLayout, router_id: str, network_id: str, cidr: str, address: str,
         kind: str, vips: Sequence[str] = ()) -> Leg:
    plen = ipaddress.IPv4Network(cidr).prefixlen
    held = tuple(sorted({f"{ipaddress.IPv4Address(v)}/32" for v in vips} - {f"{address}/32"}))
    return Leg(layout.host_leg(router_id, network_id), layout.interface_leg(network_id, kind),
               layout.bridge(network_id), f"{ipaddress.IPv4Address(address)}/{plen}", held)
