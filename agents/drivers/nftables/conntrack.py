"""Which open flows a new ruleset no longer lets through, pure.

Conntrack keeps an established flow alive after the rule that let it in is gone: its packets
meet ``ct state established accept`` before any rule. So after a firewall or NAT table changes
the driver lists the namespace's conntrack entries, asks the table's guard about each one, and
deletes exactly the entries the new ruleset would refuse, each by its original tuple (see
`apply.cut_flows`). A deleted entry's next packet is looked at afresh (as a new flow, with
``nf_conntrack_tcp_loose``), so the new rules decide it.

Why evaluate every entry against the *new* rules, rather than delete the tuples of the rules
that were removed or changed: a flow can be cut by a change to another rule (a deny moved in
front of the allow that let it in, a default action turned to deny), and a removed rule's
tuple (a CIDR, a port range) is wider than the flows it cut, while conntrack's filters take
single ports. Evaluating is exact both ways: every flow the new rules refuse is cut, and no
flow they allow is touched (flushing the namespace's whole table would cut all of them, and the
router's other services' flows too).

A forward-chain firewall sees a flow as it crosses the router: the original source and the
destination after DNAT (the reply tuple's source). Flows the router itself ends or starts
(an address of its own on either side) never cross the forward hook and are never cut.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from splice.events.advanced import FirewallRule, PortForward
from splice.events.advanced_fold import FirewallState

from .render import FORWARD_PROTOCOLS, ipv4, ipv4_network, port_range

PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17}


@dataclass(frozen=True, slots=True)
class Flow:
    """One conntrack entry: its original tuple, and the reply tuple's source (where DNAT sent
    it) and destination (what SNAT made of the original source)."""

    protocol: str  # tcp, udp, icmp, or the number for others
    number: int  # the IP protocol number
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    reply_src: str | None = None
    reply_dst: str | None = None
    reply_sport: int | None = None
    icmp: tuple[int, int, int] | None = None  # type, code, id of the original direction

    @property
    def inner_dst(self) -> str:
        """The destination after DNAT: what a forward chain sees."""
        return self.reply_src or self.dst

    @property
    def inner_dport(self) -> int | None:
        return self.reply_sport if self.reply_sport is not None else self.dport

    @property
    def dnat(self) -> bool:
        return (self.reply_src is not None and self.reply_src != self.dst) or (
            self.reply_sport is not None and self.reply_sport != self.dport)

    @property
    def snat(self) -> bool:
        return self.reply_dst is not None and self.reply_dst != self.src



def parse_entries(text: str) -> list[Flow]:
    """``conntrack -L`` (IPv4, default output) → flows; lines it cannot read are skipped.

    A line is ``<proto> <number> <timeout> [STATE] key=value ... [FLAGS] key=value ...``: the
    first src/dst/sport/dport (type/code/id for ICMP) are the original tuple, the second the
    reply tuple.
    """
    flows: list[Flow] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].isdigit():
            continue
        name = words[0] if words[0] in PROTOCOL_NUMBERS else words[1]
        number = int(words[1])
        orig: dict[str, str] = {}
        reply: dict[str, str] = {}
        for word in words[2:]:
            key, sep, value = word.partition("=")
            if not sep:
                continue
            if key == "src" and "src" in orig:
                reply["src"] = value
                continue
            (reply if "src" in reply else orig).setdefault(key, value)
        try:
            flows.append(_flow(name, number, orig, reply))
        except (KeyError, ValueError):
            continue
    return flows


def _flow(name: str, number: int, orig: Mapping[str, str], reply: Mapping[str, str]) -> Flow:
    def num(d: Mapping[str, str], key: str) -> int | None:
        return int(d[key]) if key in d else None

    icmp = None
    if name == "icmp" and {"type", "code", "id"} <= orig.keys():
        icmp = (int(orig["type"]), int(orig["code"]), int(orig["id"]))
    return Flow(
        protocol=name, number=number, src=ipv4(orig["src"]), dst=ipv4(orig["dst"]),
        sport=num(orig, "sport"), dport=num(orig, "dport"),
        reply_src=ipv4(reply["src"]) if "src" in reply else None,
        reply_dst=ipv4(reply["dst"]) if "dst" in reply else None,
        reply_sport=num(reply, "sport"), icmp=icmp,
    )


# --------------------------------------------------------------------------- guards


@dataclass(frozen=True, slots=True)
class _Match:
    """A firewall rule, parsed once: what it matches and whether it lets a flow pass."""

    accept: bool
    protocol: str
    src: ipaddress.IPv4Network | None
    dst: ipaddress.IPv4Network | None
    sports: tuple[int, int] | None
    dports: tuple[int, int] | None

    @classmethod
    def of(cls, rule: FirewallRule) -> _Match:
        return cls(
            accept=rule.action == "allow",
            protocol=rule.protocol,
            src=None if rule.source_cidr is None else ipv4_network(rule.source_cidr),
            dst=None if rule.destination_cidr is None else ipv4_network(rule.destination_cidr),
            sports=None if rule.source_port is None else port_range(rule.source_port),
            dports=None if rule.destination_port is None else port_range(rule.destination_port),
        )

    def matches(self, flow: Flow) -> bool:
        if self.protocol != "any" and self.protocol != flow.protocol:
            return False
        if self.src is not None and ipaddress.IPv4Address(flow.src) not in self.src:
            return False
        if self.dst is not None and ipaddress.IPv4Address(flow.inner_dst) not in self.dst:
            return False
        for bounds, value in ((self.sports, flow.sport), (self.dports, flow.inner_dport)):
            if bounds is not None and (value is None or not bounds[0] <= value <= bounds[1]):
                return False
        return True


@dataclass(frozen=True, slots=True)
class FirewallGuard:
    """A firewall's rules as its forward chain evaluates them: the first match decides,
    else the default action."""

    rules: tuple[_Match, ...]
    default_accept: bool
    accept_dnat: bool = False

    @classmethod
    def of(cls, state: FirewallState, *, accept_dnat: bool = False) -> FirewallGuard:
        return cls(tuple(_Match.of(r) for r in state.rules), state.default_action == "allow",
                   accept_dnat)

    def allows(self, flow: Flow) -> bool:
        if self.accept_dnat and flow.dnat:
            return True
        for rule in self.rules:
            if rule.matches(flow):
                return rule.accept
        return self.default_accept

    def cuts(self, flow: Flow, local: frozenset[str]) -> bool:
        if flow.src in local or flow.inner_dst in local:
            return False  # the router's own traffic: input/output, not forward
        return not self.allows(flow)


@dataclass(frozen=True, slots=True)
class NatGuard:
    """A router's NAT: a DNAT'd flow to an external address survives only while a forward
    still sends its protocol and port to the same inner address and port; a flow SNAT'd to
    an external address survives only while SNAT is on."""

    external: frozenset[str]
    forwards: frozenset[tuple[str, int, str, int]]  # protocol, external port, address, port
    snat: bool

    @classmethod
    def of(cls, forwards: Iterable[PortForward], external_addresses: Iterable[str],
           snat: bool) -> NatGuard:
        return cls(
            frozenset(ipv4(a) for a in external_addresses),
            frozenset((f.protocol, f.external_port, ipv4(f.internal_address), f.internal_port)
                      for f in forwards if f.protocol in FORWARD_PROTOCOLS),
            snat,
        )

    def cuts(self, flow: Flow, local: frozenset[str]) -> bool:
        if flow.dnat and flow.dst in self.external:
            return (flow.protocol, flow.dport, flow.inner_dst, flow.inner_dport) not in self.forwards
        if flow.snat and flow.reply_dst in self.external:
            return not self.snat
        return False


Guard = FirewallGuard | NatGuard


def flows_to_cut(flows: Iterable[Flow], guard: Guard, local: Iterable[str]) -> list[Flow]:
    """The flows that ``guard`` (the new ruleset) refuses; ``local``: the namespace's own
    addresses."""
    mine = frozenset(local)
    return [f for f in flows if guard.cuts(f, mine)]
