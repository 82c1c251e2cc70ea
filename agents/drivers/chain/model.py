"""What a steered service chain is on the host of its router, and what everything of it is called.

From the fold's `ChainState`s of one agent to `ChainSpec`s (or the reason a chain is not
steered). Pure: no I/O. Every hop is a namespace of its own beside the router's, joined to it
by veths; the router's policy routing sends a chain's packets into hop ``i`` and the
classifier table (`render`) picks them up when they come back. Per insertion:

* ``l3``: one veth (router ``<prefix>c…`` - hop ``hop0``) with a link-local /30, router side
  ``.1``, hop side ``.2``; the hop routes (``ip_forward=1``) back to ``.1``;
* ``tap``: as ``l3``, and tc ``mirred`` copies whatever enters ``hop0`` to ``mon0``, a veth
  whose other end (``<prefix>m…``, in the agent's root namespace) redirects it to the tap's
  monitor port (`drivers.tap.port_interface`): the copy, the original goes on;
* ``l2`` and ``bump_in_the_wire``: two veths, in (``hop0``) and out (``hop1``), bridged by
  ``br0`` in the hop, which has no address (the router's ends hold the /30's ``.0`` and ``.3``
  as /32s: its loose reverse-path filter drops packets arriving on a leg with none). The router sends the chain's packets out of its end
  of the in-leg to a made-up next hop (the /30's ``.2``) whose permanent neighbour entry is the
  MAC of its end of the out-leg, so they cross the bridge and come back in there; replies of a
  symmetric chain go the other way (``.1``, the in-leg's MAC). An ``l2`` hop's bridge learns
  MACs; a bump's does not (a wire: it floods to its one other port). A firewall's rules filter
  the bridged flows statefully (br_netfilter, the inet table). The TTL is unchanged inside.

Allocation, deterministic from the chain id (`slot`: 10 bits of sha256 of the chain id, the
block of ``169.254.169.0/24`` skipped) and the hop index ``i`` (0..15, a chain has at most 16
hops); two chains of one agent with the same slot collide, and the one whose id sorts later
is refused (`CollisionError` reason):

* packet mark of hop ``i``: ``MARK_BASE + 16 * slot + i`` (``0x5c000000``..``0x5c003fbf``),
  and the reverse mark of a bridged hop (its replies) ``REVERSE`` above it; the chain's own
  mark (its ``ct mark``) is the mark of hop 0;
* routing table of hop ``i``: ``TABLE_BASE + 16 * slot + i`` (and ``REVERSE`` above it), looked
  up by ``ip rule fwmark <mark> lookup <table>`` (rule preference ``RULE_PREF``); the agent owns
  only rules and tables in these ranges;
* link-local /30 of hop ``i``: ``169.254.<block>.<64 * (slot % 4) + 4 * i>/30`` (block
  ``slot // 4``, +1 from 169 on);
* hop namespace ``<prefix>h-<8 hex of the chain id><hex of i>``; router ends of the veths
  ``<prefix>c<hex>`` (15 bytes, sha256 of chain id, index and leg); MACs of a bridged hop's
  router ends ``02:5c:`` + 4 bytes of the same;
* the classifier table ``ip <prefix>ch-<8 hex of the router id>`` in the router's namespace
  (`nftables.render.chain_table`; not one of the nftables driver's owned prefixes).

An out-of-path firewall (inserted ``out_of_path`` with a router) is a detour: `detour` makes
it a symmetric chain of one ``l3`` hop, its own id as the chain's, classifying every flow the
router forwards, below every chain (priority -1): the router sends the traffic through the
firewall's namespace and takes it back.

A ``logical_source_port`` classifier matches where that port's traffic enters the router: the
leg on the port's network, the port's MAC and its address (`SourcePort`). A port that is gone
sends nothing: the chain stays built and classifies nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace

from splice.agents.model import fit_ifname
from splice.events.advanced import Classifier, Hop
from splice.events.advanced_fold import FirewallState
from splice.events.chain_fold import ChainState
from splice.events.port_fold import PortState

from ..nftables.render import Ruleset, firewall_table, render_firewall, short_id
from ..router.model import RouterLayout

MARK_BASE = 0x5C000000
TABLE_BASE = 40000
RULE_PREF = 20000
SLOTS = 1020  # 255 usable /24 blocks of 169.254.0.0/16 (169 skipped) x 4 /26 per block
MAX_HOPS = 16
REVERSE = 16 * SLOTS  # a bridged hop's reverse mark and table, above the forward ones
HOP_IFNAME = "hop0"  # a hop's in-leg (its only leg when one-armed)
OUT_IFNAME = "hop1"  # a bridged hop's out-leg
BRIDGE = "br0"
MIRROR_IFNAME = "mon0"  # a tap hop's copy leg
ONE_ARMED = frozenset({"l3", "tap"})
BRIDGED = frozenset({"l2", "bump_in_the_wire"})
DETOUR_PRIORITY = -1  # below every chain (their priorities are 0..65535)


def slot(chain_id: str) -> int:
    return int(hashlib.sha256(chain_id.encode()).hexdigest(), 16) % SLOTS


def mark(chain_id: str, index: int) -> int:
    return MARK_BASE + 16 * slot(chain_id) + index


def table(chain_id: str, index: int) -> int:
    return TABLE_BASE + 16 * slot(chain_id) + index


def link(chain_id: str, index: int) -> ipaddress.IPv4Network:
    s = slot(chain_id)
    block = s // 4
    block += block >= 169
    return ipaddress.IPv4Network(f"169.254.{block}.{64 * (s % 4) + 4 * index}/30")


def owns_mark(value: int) -> bool:
    return MARK_BASE <= value < MARK_BASE + 2 * REVERSE


def owns_table(value: int) -> bool:
    return TABLE_BASE <= value < TABLE_BASE + 2 * REVERSE


def _digest(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainLayout:
    prefix: str

    @property
    def namespace_prefix(self) -> str:
        return f"{self.prefix}h-"

    @property
    def mirror_prefix(self) -> str:
        return f"{self.prefix}m"

    def hop_namespace(self, chain_id: str, index: int) -> str:
        return f"{self.namespace_prefix}{short_id(chain_id)}{index:x}"

    def router_veth(self, chain_id: str, index: int) -> str:
        return fit_ifname(f"{self.prefix}c", _digest(chain_id, index))

    def out_veth(self, chain_id: str, index: int) -> str:
        return fit_ifname(f"{self.prefix}c", _digest(chain_id, index, "out"))

    def mirror_veth(self, chain_id: str, index: int) -> str:
        return fit_ifname(self.mirror_prefix, _digest(chain_id, index, "mirror"))


def mac(*parts: object) -> str:
    """A locally administered unicast MAC, 02:5c: + 4 bytes of sha256 of `parts`."""
    d = _digest(*parts)
    return "02:5c:" + ":".join(d[i:i + 2] for i in range(0, 8, 2))


@dataclass(frozen=True, slots=True)
class HopSpec:
    index: int
    service_id: str
    namespace: str
    router_if: str  # in the router's namespace: the hop's (in-)leg
    link: str  # "169.254.x.y/30"
    mark: int
    table: int
    firewall: Ruleset | None  # an inet forward table in the hop's namespace, or just forward
    insertion: str = "l3"
    out_if: str = ""  # bridged: the router's end of the out-leg
    router_mac: str = ""  # bridged: MACs of the router's ends of the in- and out-leg
    out_mac: str = ""
    mirror_if: str = ""  # tap: the root-namespace end of the copy leg
    monitor_if: str = ""  # tap: the monitor port's interface in the root namespace

    @property
    def bridged(self) -> bool:
        return self.insertion in BRIDGED

    def _host(self, n: int) -> str:
        return str(ipaddress.IPv4Network(self.link).network_address + n)

    @property
    def router_address(self) -> str:
        """"ip/30" on `router_if` (one-armed hops); a bridged hop's in-leg holds the /30's
        first address as a /32: the router's reverse-path filter (loose) drops what arrives
        on a leg without an address, and neither made-up next hop may be local."""
        return f"{self._host(0)}/32" if self.bridged else f"{self._host(1)}/30"

    @property
    def out_address(self) -> str:
        """A bridged hop's out-leg: the /30's last address, as a /32 ("" when one-armed)."""
        return f"{self._host(3)}/32" if self.bridged else ""

    @property
    def hop_address(self) -> str:
        return "" if self.bridged else f"{self._host(2)}/30"

    @property
    def via(self) -> str:
        """The next hop of the forward table: the hop's address, or a bridged hop's made-up
        one (its neighbour entry on `router_if` is `out_mac`)."""
        return self._host(2)

    @property
    def reverse_mark(self) -> int:
        return self.mark + REVERSE if self.bridged else self.mark

    @property
    def reverse_table(self) -> int:
        return self.table + REVERSE if self.bridged else self.table

    def entry(self, direction: str) -> int:
        """The mark that sends a packet of `direction` (original | reply) into the hop."""
        return self.mark if direction == "original" else self.reverse_mark

    def back_if(self, direction: str) -> str:
        """Where a packet of `direction` comes back from the hop into the router."""
        if self.bridged:
            return self.out_if if direction == "original" else self.router_if
        return self.router_if

    @property
    def rules(self) -> frozenset[tuple[int, int]]:
        return frozenset({(self.mark, self.table), (self.reverse_mark, self.reverse_table)})

    @property
    def routes(self) -> dict[int, tuple[str, str]]:
        """By table: (via, dev) of its default route in the router's namespace."""
        out = {self.table: (self.via, self.router_if)}
        if self.bridged:
            out[self.reverse_table] = (self._host(1), self.out_if)
        return out

    @property
    def neighbours(self) -> frozenset[tuple[str, str, str]]:
        """(dev, address, MAC): the permanent neighbour entries of a bridged hop's legs."""
        if not self.bridged:
            return frozenset()
        return frozenset({(self.router_if, self.via, self.out_mac),
                          (self.out_if, self._host(1), self.router_mac)})


@dataclass(frozen=True, slots=True)
class SourcePort:
    """Where a logical source port's traffic enters the router: the leg on its network, its
    MAC and address."""

    iif: str
    mac: str
    address: str


@dataclass(frozen=True, slots=True)
class ChainSpec:
    id: str
    router_id: str
    priority: int
    classifier: Classifier
    hops: tuple[HopSpec, ...]
    symmetric: bool = False
    source: SourcePort | None = None  # a logical source port classifier, where it enters
    silent: bool = False  # its logical source port is gone: it classifies nothing

    @property
    def mark(self) -> int:
        return self.hops[0].mark


def refusal(state: ChainState) -> str:
    """Why this chain is not steered ("" when it can be)."""
    if state.router_id is None:
        return "the chain names no router"
    if not 1 <= len(state.hops) <= MAX_HOPS:
        return f"a chain has 1 to {MAX_HOPS} hops"
    odd = sorted({h.insertion for h in state.hops} - ONE_ARMED - BRIDGED)
    if odd:
        return f"hops inserted {', '.join(odd)} are not steered"
    return ""


def detour(firewall_id: str, state: FirewallState) -> ChainState | None:
    """An out-of-path firewall as the chain that detours its router's traffic through it
    (None: not out of path)."""
    ins = state.insertion
    if state.deleted or ins is None or ins.mode != "out_of_path" or not ins.router_id:
        return None
    return ChainState(name=f"detour {firewall_id}", router_id=ins.router_id, classifier=Classifier(),
                      hops=[Hop(service_id=firewall_id, kind="firewall", insertion="l3")],
                      priority=DETOUR_PRIORITY, symmetric=True)


def _hop(layout: ChainLayout, chain_id: str, i: int, hop: Hop, firewall: Ruleset | None,
         monitor_if: str) -> HopSpec:
    spec = HopSpec(i, hop.service_id, layout.hop_namespace(chain_id, i),
                   layout.router_veth(chain_id, i), str(link(chain_id, i)), mark(chain_id, i),
                   table(chain_id, i), firewall, hop.insertion)
    if hop.insertion in BRIDGED:
        return replace(spec, out_if=layout.out_veth(chain_id, i), router_mac=mac(chain_id, i, "in"),
                       out_mac=mac(chain_id, i, "out"))
    if hop.insertion == "tap":
        return replace(spec, mirror_if=layout.mirror_veth(chain_id, i), monitor_if=monitor_if)
    return spec


def chain_specs(chains: Mapping[str, ChainState], firewalls: Mapping[str, FirewallState],
                prefix: str, *, monitors: Mapping[str, str] | None = None,
                ports: Mapping[str, PortState] | None = None,
                ) -> tuple[dict[str, ChainSpec], dict[str, str]]:
    """The chains to steer by id, and the refused ones' reasons by id. `chains`: the chains
    whose router this agent hosts, by public id; `firewalls`: by public id (a firewall hop
    gets its rules in its namespace; a hop whose service is not a known firewall forwards);
    `monitors`: by tap id, its monitor port's interface; `ports`: by port id."""
    layout = ChainLayout(prefix)
    monitors, ports = monitors or {}, ports or {}
    specs: dict[str, ChainSpec] = {}
    refused: dict[str, str] = {}
    taken: dict[int, str] = {}
    for chain_id, state in sorted(chains.items()):
        reason = refusal(state)
        if not reason and slot(chain_id) in taken:
            reason = f"its marks and addresses collide with chain {taken[slot(chain_id)]}"
        unknown = [h.service_id for h in state.hops if h.insertion == "tap" and h.service_id not in monitors]
        if not reason and unknown:
            reason = f"tap {unknown[0]} is not known on this host yet"
        if reason:
            refused[chain_id] = reason
            continue
        taken[slot(chain_id)] = chain_id
        hops = []
        for i, hop in enumerate(state.hops):
            fw = firewalls.get(hop.service_id) if hop.kind == "firewall" else None
            ruleset = None if fw is None else render_firewall(
                fw, firewall_table(prefix, hop.service_id))
            hops.append(_hop(layout, chain_id, i, hop, ruleset, monitors.get(hop.service_id, "")))
        source, silent = None, False
        if state.classifier.logical_source_port is not None:
            port = ports.get(state.classifier.logical_source_port)
            if port is None or port.deleted:
                silent = True
            else:
                source = SourcePort(RouterLayout.interface_leg(port.network_id),
                                    port.mac_address, port.ip_address)
        specs[chain_id] = ChainSpec(chain_id, state.router_id or "", state.priority, state.classifier,
                                    tuple(hops), state.symmetric, source, silent)
    return specs, refused
