"""What a steered service chain is on the host of its router, and what everything of it is called.

From the fold's `ChainState`s of one agent to `ChainSpec`s (or the reason a chain is not
steered). Pure: no I/O. Only ``l3`` hops are steered for now; a chain with an ``l2``,
``bump_in_the_wire`` or ``tap`` hop is refused whole (nothing half-made) with its reason. A
``symmetric`` chain needs nothing more here: its replies reuse each hop's mark, table, veth and
namespace in the reverse order (`render`).

Allocation, deterministic from the chain id (`slot`: 10 bits of sha256 of the chain id, the
block of ``169.254.169.0/24`` skipped) and the hop index ``i`` (0..15, a chain has at most 16
hops); two chains of one agent with the same slot collide, and the one whose id sorts later
is refused (`CollisionError` reason):

* packet mark of hop ``i``: ``MARK_BASE + 16 * slot + i`` (``0x5c000000``..``0x5c003fff``);
  the chain's own mark (its ``ct mark``) is the mark of hop 0;
* routing table of hop ``i``: ``TABLE_BASE + 16 * slot + i`` (40000..56383), looked up by
  ``ip rule fwmark <mark> lookup <table>`` (rule preference ``RULE_PREF``); the agent owns
  only rules and tables in these ranges;
* link-local /30 of hop ``i``: ``169.254.<block>.<64 * (slot % 4) + 4 * i>/30``, router side
  ``.1``, hop side ``.2`` (block ``slot // 4``, +1 from 169 on);
* hop namespace ``<prefix>h-<8 hex of the chain id><hex of i>``; router side of the veth
  ``<prefix>c<hex>`` (15 bytes, sha256 of chain id and index), hop side ``hop0`` (alone in
  its namespace);
* the classifier table ``ip <prefix>ch-<8 hex of the router id>`` in the router's namespace
  (`nftables.render.chain_table`; not one of the nftables driver's owned prefixes).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from splice.agents.model import fit_ifname
from splice.events.advanced import Classifier
from splice.events.advanced_fold import FirewallState
from splice.events.chain_fold import ChainState

from ..nftables.render import Ruleset, firewall_table, render_firewall, short_id

MARK_BASE = 0x5C000000
TABLE_BASE = 40000
RULE_PREF = 20000
SLOTS = 1020  # 255 usable /24 blocks of 169.254.0.0/16 (169 skipped) x 4 /26 per block
MAX_HOPS = 16
HOP_IFNAME = "hop0"
STEERED = frozenset({"l3"})


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
    return MARK_BASE <= value < MARK_BASE + 16 * SLOTS


def owns_table(value: int) -> bool:
    return TABLE_BASE <= value < TABLE_BASE + 16 * SLOTS


@dataclass(frozen=True, slots=True)
class ChainLayout:
    prefix: str

    @property
    def namespace_prefix(self) -> str:
        return f"{self.prefix}h-"

    def hop_namespace(self, chain_id: str, index: int) -> str:
        return f"{self.namespace_prefix}{short_id(chain_id)}{index:x}"

    def router_veth(self, chain_id: str, index: int) -> str:
        digest = hashlib.sha256(f"{chain_id}/{index}".encode()).hexdigest()
        return fit_ifname(f"{self.prefix}c", digest)


@dataclass(frozen=True, slots=True)
class HopSpec:
    index: int
    service_id: str
    namespace: str
    router_if: str  # in the router's namespace
    router_address: str  # "169.254.x.y/30"
    hop_address: str  # "169.254.x.y/30"
    mark: int
    table: int
    firewall: Ruleset | None  # an inet forward table in the hop's namespace, or just forward

    @property
    def via(self) -> str:
        return self.hop_address.split("/")[0]


@dataclass(frozen=True, slots=True)
class ChainSpec:
    id: str
    router_id: str
    priority: int
    classifier: Classifier
    hops: tuple[HopSpec, ...]
    symmetric: bool = False

    @property
    def mark(self) -> int:
        return self.hops[0].mark


def refusal(state: ChainState) -> str:
    """Why this chain is not steered ("" when it can be)."""
    if state.router_id is None:
        return "the chain names no router"
    if not 1 <= len(state.hops) <= MAX_HOPS:
        return f"a chain has 1 to {MAX_HOPS} hops"
    odd = sorted({h.insertion for h in state.hops} - STEERED)
    if odd:
        return f"hops inserted {', '.join(odd)} are not steered yet (only l3)"
    if state.classifier.logical_source_port is not None:
        return "a logical source port classifier is not steered yet"
    return ""


def chain_specs(chains: Mapping[str, ChainState], firewalls: Mapping[str, FirewallState],
                prefix: str) -> tuple[dict[str, ChainSpec], dict[str, str]]:
    """The chains to steer by id, and the refused ones' reasons by id. `chains`: the chains
    whose router this agent hosts, by public id; `firewalls`: by public id (a firewall hop
    gets its rules in its namespace; a hop whose service is not a known firewall forwards)."""
    layout = ChainLayout(prefix)
    specs: dict[str, ChainSpec] = {}
    refused: dict[str, str] = {}
    taken: dict[int, str] = {}
    for chain_id, state in sorted(chains.items()):
        reason = refusal(state)
        if not reason and slot(chain_id) in taken:
            reason = f"its marks and addresses collide with chain {taken[slot(chain_id)]}"
        if reason:
            refused[chain_id] = reason
            continue
        taken[slot(chain_id)] = chain_id
        hops = []
        for i, hop in enumerate(state.hops):
            net = link(chain_id, i)
            fw = firewalls.get(hop.service_id) if hop.kind == "firewall" else None
            ruleset = None if fw is None else render_firewall(
                fw, firewall_table(prefix, hop.service_id))
            hops.append(HopSpec(
                i, hop.service_id, layout.hop_namespace(chain_id, i),
                layout.router_veth(chain_id, i), f"{net.network_address + 1}/30",
                f"{net.network_address + 2}/30", mark(chain_id, i), table(chain_id, i), ruleset))
        specs[chain_id] = ChainSpec(chain_id, state.router_id or "", state.priority, state.classifier,
                                    tuple(hops), state.symmetric)
    return specs, refused
