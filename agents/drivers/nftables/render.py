"""nftables rulesets, pure: a firewall's or a router's NAT fold state in, nft JSON out.

Only validated values reach a rule, and each is parsed again here before it does: addresses
and networks through `ipaddress` (the rule holds the parsed value's own text), ports as
integers in 1..65535, actions and protocols from closed sets, an interface name from a strict
alphabet. Names and descriptions never become part of a ruleset, not even as comments. A value
that fails raises `UnsafeValueError` (the state was not built by the command side).

Rules are written in the canonical form that ``nft -j list`` gives back (a /32 as a plain
address, no ``meta l4proto`` before a port match, ...), so that `canonical` of what was
rendered equals `canonical` of what the kernel holds once it is loaded: the planner compares
the two, and `apply` checks the read-back with the same function.

Layout (one table per object, named with the agent's prefix and the object's short id):

* a firewall → ``inet <prefix>fw-<8 hex>``, base chain ``forward`` (filter, hook forward,
  priority 0, policy = the default action): ``ct state established,related accept``,
  ``ct state invalid drop``, optionally ``ct status dnat accept``, then the rules in order;
* a router's NAT → ``ip <prefix>nat-<8 hex of the router>``, base chains ``prerouting``
  (nat, -100: one DNAT per port forward) and ``postrouting`` (nat, 100: ``oifname <ext>
  masquerade`` when SNAT is on);
* an in-kernel L4 load balancer (provider ``nftables-l4``, its own driver and namespace) →
  ``ip <prefix>l4-<8 hex of the LB>``: ``prerouting`` (nat, -100: per listener, DNAT from the
  VIP and port to ``numgen inc`` or ``jhash ip saddr … seed S`` over an anonymous map of slots
  to ``address . port``), ``postrouting`` (nat, 100: ``ct status dnat masquerade``, full NAT),
  ``input`` (filter, 0: established accept, then a TCP reset for every listener port: what
  was not DNATed, no live member, reaches the VIP itself), ``forward`` (filter, 0: counts
  only), and per listener port P the named counters ``conn_P`` (connections DNATed), ``in_P``
  and ``out_P`` (bytes forwarded towards the members and back; `l4render`). Not in
  `owned_prefixes`: the nftables driver never touches it.

The replacement batch (`Ruleset.batch`) keeps the table and its base chains, flushes the table
and adds every rule again, all in one transaction: a policy-drop base chain is never deleted
and recreated (the kernel defers a new chain's drop policy and lets packets through).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from splice.events.advanced import FirewallRule, PortForward
from splice.events.advanced_fold import FirewallState, NatState

FIREWALL_FAMILY = "inet"
NAT_FAMILY = "ip"
FORWARD_CHAIN = "forward"
PREROUTING_CHAIN = "prerouting"
POSTROUTING_CHAIN = "postrouting"
INPUT_CHAIN = "input"
L4_FAMILY = "ip"
MAX_SLOTS = 65536  # slots of one listener's map (weights reduced by their gcd)
# Integers, never the names ("filter", "dstnat"): a JSON "prio" given as a string is accepted
# by `nft -c` and makes a chain with no hook at all.
FILTER_PRIO = 0
DSTNAT_PRIO = -100
SRCNAT_PRIO = 100

VERDICTS = {"allow": "accept", "deny": "drop"}
ACTIONS = frozenset({"allow", "deny", "reject"})
PROTOCOLS = frozenset({"tcp", "udp", "icmp", "any"})
FORWARD_PROTOCOLS = frozenset({"tcp", "udp"})

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_SHORT = re.compile(r"[0-9a-f]{8}")
_RANGE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
_DOTTED = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


class UnsafeValueError(ValueError):
    """A value that is not what the wire's types allow: never rendered."""


# --------------------------------------------------------------------------- names


def short_id(ident: str) -> str:
    """The first 8 hex digits of a resource's UUID (public id or ``<tenant>.<kind>.<uuid>``)."""
    short = ident.rsplit(".", 1)[-1].replace("-", "")[:8]
    if not _SHORT.fullmatch(short):
        raise UnsafeValueError(f"not a resource id: {ident!r}")
    return short


def firewall_table(prefix: str, firewall_id: str) -> str:
    return f"{prefix}fw-{short_id(firewall_id)}"


def nat_table(prefix: str, router_id: str) -> str:
    return f"{prefix}nat-{short_id(router_id)}"


def l4_table(prefix: str, lb_id: str) -> str:
    """The nftables-l4 driver's table of one load balancer (its own prefix, not owned here)."""
    return f"{prefix}l4-{short_id(lb_id)}"


def chain_table(prefix: str, router_id: str) -> str:
    """The chain driver's classifier table in a router's namespace (not owned here)."""
    return f"{prefix}ch-{short_id(router_id)}"


def owned_prefixes(prefix: str) -> tuple[str, ...]:
    """The table names this driver owns: never another driver's (``<prefix>l4-…``, the chain
    driver's ``<prefix>ch-…``), never anything without the agent's prefix."""
    return (f"{prefix}fw-", f"{prefix}nat-")


# --------------------------------------------------------------------------- the ruleset


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    type: str
    hook: str
    prio: int
    policy: str

    def object(self, family: str, table: str) -> dict[str, Any]:
        return {"chain": {"family": family, "table": table, "name": self.name, "type": self.type,
                          "hook": self.hook, "prio": self.prio, "policy": self.policy}}


@dataclass(frozen=True, slots=True)
class Rule:
    chain: str
    expr: tuple[Any, ...]  # nft JSON statements

    def object(self, family: str, table: str) -> dict[str, Any]:
        return {"rule": {"family": family, "table": table, "chain": self.chain,
                         "expr": list(self.expr)}}


@dataclass(frozen=True, slots=True)
class Ruleset:
    """One table: its base chains and its rules, in order."""

    family: str
    name: str
    chains: tuple[Chain, ...]
    rules: tuple[Rule, ...]
    counters: tuple[str, ...] = ()  # named counters: a replacement keeps their values

    @property
    def key(self) -> tuple[str, str]:
        return (self.family, self.name)

    def table(self) -> dict[str, Any]:
        return {"table": {"family": self.family, "name": self.name}}

    def objects(self) -> list[dict[str, Any]]:
        """The table as `nft -j list table` shows it, without handles."""
        return [self.table(), *(c.object(self.family, self.name) for c in self.chains),
                *({"counter": {"family": self.family, "table": self.name, "name": n}}
                  for n in self.counters),
                *(r.object(self.family, self.name) for r in self.rules)]

    def batch(self, stale: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
        """The one transaction that makes the table exactly this ruleset, from whatever it
        held: add the table and base chains (no-ops when present; a chain's policy is
        updated in place), flush every rule, delete the ``stale`` (kind, name) objects that
        do not belong (a chain made by hand, one whose hook or priority is wrong), add every
        rule. An existing, correct base chain is never deleted, nor a named counter of the
        ruleset's (added when missing, kept with its values)."""
        ident = {"family": self.family, "table": self.name}
        stale = [s for s in stale if s[0] != "counter" or s[1] not in self.counters]
        stale_chains = {n for k, n in stale if k == "chain"}
        cmds: list[dict[str, Any]] = [{"add": self.table()}]
        cmds += [{"add": c.object(self.family, self.name)} for c in self.chains
                 if c.name not in stale_chains]
        cmds += [{"add": o} for o in self.objects() if "counter" in o]
        cmds.append({"flush": self.table()})
        cmds += [{"delete": {kind: {**ident, "name": name}}} for kind, name in stale]
        cmds += [{"add": c.object(self.family, self.name)} for c in self.chains
                 if c.name in stale_chains]
        cmds += [{"add": r.object(self.family, self.name)} for r in self.rules]
        return {"nftables": cmds}

    def canonical(self) -> dict[str, Any]:
        return canonical(self.objects(), self.family, self.name)

    def digest(self) -> str:
        return digest(self.canonical())


def delete_batch(family: str, name: str) -> dict[str, Any]:
    return {"nftables": [{"delete": {"table": {"family": family, "name": name}}}]}


def canonical(objects: Iterable[Mapping[str, Any]], family: str, name: str) -> dict[str, Any]:
    """One table's content, comparable across a render and ``nft -j list``: no handles, no
    metainfo; chains by name with their hook, type, priority and policy; each chain's rules in
    order; every other object (sets, maps, counters...) by kind and name."""
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[Any]] = {}
    other: list[list[str]] = []
    for obj in objects:
        for kind, body in obj.items():
            if kind in ("metainfo", "table") or body.get("family") != family:
                continue
            if body.get("table") != name:
                continue
            if kind == "chain":
                chains[body["name"]] = {k: body[k] for k in ("type", "hook", "prio", "policy", "dev")
                                        if k in body}
                rules.setdefault(body["name"], [])
            elif kind == "rule":
                entry: Any = body["expr"]
                if "comment" in body:
                    entry = {"expr": body["expr"], "comment": body["comment"]}
                rules.setdefault(body["chain"], []).append(entry)
            else:
                other.append([kind, str(body.get("name", ""))])
    return {"family": family, "name": name, "chains": dict(sorted(chains.items())),
            "rules": dict(sorted(rules.items())), "other": sorted(other)}


def digest(canonical_table: Mapping[str, Any]) -> str:
    text = json.dumps(canonical_table, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- values


def _one_of(value: Any, allowed: frozenset[str], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise UnsafeValueError(f"{what} must be one of {sorted(allowed)}, got {value!r}")
    return value


def ipv4(value: Any) -> str:
    """An IPv4 address as its canonical dotted quad."""
    if not isinstance(value, str) or not _DOTTED.fullmatch(value):
        raise UnsafeValueError(f"not an IPv4 address: {value!r}")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as e:
        raise UnsafeValueError(f"not an IPv4 address: {value!r}") from e


def ipv4_network(value: Any) -> ipaddress.IPv4Network:
    if not isinstance(value, str) or "/" not in value:
        raise UnsafeValueError(f"not an IPv4 network: {value!r}")
    addr, _, length = value.partition("/")
    if not length.isdigit() or len(length) > 2:
        raise UnsafeValueError(f"not an IPv4 network: {value!r}")
    try:
        return ipaddress.IPv4Network(f"{ipv4(addr)}/{int(length)}", strict=True)
    except ValueError as e:
        raise UnsafeValueError(f"not an IPv4 network: {value!r}") from e


def port(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 65535:
        raise UnsafeValueError(f"not a port number: {value!r}")
    return value


def port_range(value: Any) -> tuple[int, int]:
    """``"80"`` → (80, 80); ``"1000-2000"`` → (1000, 2000)."""
    m = _RANGE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise UnsafeValueError(f"not a port or port range: {value!r}")
    low = int(m.group(1))
    high = int(m.group(2) or low)
    if not 1 <= low <= high <= 65535:
        raise UnsafeValueError(f"not a port range within 1-65535: {value!r}")
    return low, high


def ifname(value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value):
        raise UnsafeValueError(f"not an interface name: {value!r}")
    return value


# --------------------------------------------------------------------------- expressions


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _addr(field: str, net: ipaddress.IPv4Network) -> dict[str, Any]:
    right: Any = (str(net.network_address) if net.prefixlen == 32 else
                  {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}})
    return _match({"payload": {"protocol": "ip", "field": field}}, right)


def _port(protocol: str, field: str, low: int, high: int) -> dict[str, Any]:
    right: Any = low if low == high else {"range": [low, high]}
    return _match({"payload": {"protocol": protocol, "field": field}}, right)


def _l4proto(protocol: str) -> dict[str, Any]:
    return _match({"meta": {"key": "l4proto"}}, protocol)


ESTABLISHED = (_match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None})
INVALID = (_match({"ct": {"key": "state"}}, "invalid", "in"), {"drop": None})
DNAT_ACCEPT = (_match({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None})


def rule_expr(rule: FirewallRule) -> tuple[Any, ...]:
    """One firewall rule's statements: protocol, source and destination network, source and
    destination port (or range), then the verdict."""
    action = _one_of(rule.action, ACTIONS, "action")
    protocol = _one_of(rule.protocol, PROTOCOLS, "protocol")
    sports = None if rule.source_port is None else port_range(rule.source_port)
    dports = None if rule.destination_port is None else port_range(rule.destination_port)
    if (sports or dports) and protocol not in FORWARD_PROTOCOLS:
        raise UnsafeValueError(f"ports need protocol tcp or udp, not {protocol}")
    expr: list[Any] = []
    if protocol != "any" and not (sports or dports):
        expr.append(_l4proto(protocol))  # a port match implies it (and nft lists it so)
    if rule.source_cidr is not None:
        expr.append(_addr("saddr", ipv4_network(rule.source_cidr)))
    if rule.destination_cidr is not None:
        expr.append(_addr("daddr", ipv4_network(rule.destination_cidr)))
    if sports:
        expr.append(_port(protocol, "sport", *sports))
    if dports:
        expr.append(_port(protocol, "dport", *dports))
    if action == "reject":
        # icmpx, not icmp: in an inet table `reject with icmp` silently adds "IPv4 only", so
        # an IPv6 packet would skip the rule and meet the next one; on IPv4 both send
        # ICMP port-unreachable.
        expr.append({"reject": {"type": "tcp reset"}} if protocol == "tcp" else
                    {"reject": {"type": "icmpx", "expr": "port-unreachable"}})
    else:
        expr.append({VERDICTS[action]: None})
    return tuple(expr)


# --------------------------------------------------------------------------- renderers


def render_firewall(state: FirewallState, table: str, *, accept_dnat: bool = False) -> Ruleset:
    """A firewall's table: stateful, its rules in the aggregate's order, its default action
    as the forward chain's policy. ``accept_dnat`` lets the router's port forwards through
    before the rules (as OpenWrt's fw4 does); off, the rules decide for forwarded flows too
    (they see the internal address and port)."""
    default = _one_of(state.default_action, frozenset(VERDICTS), "default_action")
    fixed = [ESTABLISHED, INVALID, *([DNAT_ACCEPT] if accept_dnat else [])]
    rules = [Rule(FORWARD_CHAIN, expr) for expr in fixed]
    rules += [Rule(FORWARD_CHAIN, rule_expr(r)) for r in state.rules]
    chain = Chain(FORWARD_CHAIN, "filter", "forward", FILTER_PRIO, VERDICTS[default])
    return Ruleset(FIREWALL_FAMILY, table, (chain,), tuple(rules))


def forwards_of(nats: Iterable[NatState]) -> list[PortForward]:
    """The port forwards of a router's live NATs, in the order given (the first forward of a
    protocol and external port wins, as the first DNAT rule that matches does)."""
    out: list[PortForward] = []
    seen: set[tuple[str, int]] = set()
    for nat in nats:
        if nat.deleted:
            continue
        for f in nat.forwards:
            if (f.protocol, f.external_port) not in seen:
                seen.add((f.protocol, f.external_port))
                out.append(f)
    return out


def render_nat(
    table: str,
    forwards: Sequence[PortForward],
    *,
    external_interface: str,
    external_addresses: Sequence[str],
    snat: bool,
) -> Ruleset:
    """A router's NAT table: DNAT of each port forward from the router's external address(es)
    and port to the internal address and port; masquerade on the external leg with SNAT."""
    ext_if = ifname(external_interface)
    addrs = sorted({ipv4(a) for a in external_addresses}, key=ipaddress.IPv4Address)
    if forwards and not addrs:
        raise UnsafeValueError("port forwards need the router's external address")
    daddr: Any = addrs[0] if len(addrs) == 1 else {"set": addrs}
    rules: list[Rule] = []
    for f in forwards:
        protocol = _one_of(f.protocol, FORWARD_PROTOCOLS, "protocol")
        rules.append(Rule(PREROUTING_CHAIN, (
            _match({"payload": {"protocol": "ip", "field": "daddr"}}, daddr),
            _port(protocol, "dport", port(f.external_port), port(f.external_port)),
            {"dnat": {"addr": ipv4(f.internal_address), "port": port(f.internal_port)}},
        )))
    if snat:
        rules.append(Rule(POSTROUTING_CHAIN, (
            _match({"meta": {"key": "oifname"}}, ext_if), {"masquerade": None},
        )))
    chains = (Chain(PREROUTING_CHAIN, "nat", "prerouting", DSTNAT_PRIO, "accept"),
              Chain(POSTROUTING_CHAIN, "nat", "postrouting", SRCNAT_PRIO, "accept"))
    return Ruleset(NAT_FAMILY, table, chains, tuple(rules))


@dataclass(frozen=True, slots=True)
class L4Listener:
    """One TCP listener of an L4 load balancer, transformed: its port, the backend of each
    slot of its map (slot i → ``(address, port)``; none: every connection is reset) and the
    jhash seed for source affinity (None: round robin with ``numgen inc``)."""

    port: int
    backends: tuple[tuple[str, int], ...] = ()
    seed: int | None = None


def _slot_key(count: int, seed: int | None) -> dict[str, Any]:
    if type(count) is not int or not 1 <= count <= MAX_SLOTS:
        raise UnsafeValueError(f"slot count must be 1..{MAX_SLOTS}, got {count!r}")
    if seed is None:
        return {"numgen": {"mode": "inc", "mod": count, "offset": 0}}
    if type(seed) is not int or not 1 <= seed <= 0xFFFFFFFF:  # 0 is listed without a seed
        raise UnsafeValueError(f"not a jhash seed: {seed!r}")
    return {"jhash": {"mod": count, "seed": seed,
                      "expr": {"payload": {"protocol": "ip", "field": "saddr"}}}}


def render_l4(table: str, vip: str, listeners: Sequence[L4Listener]) -> Ruleset:
    """An L4 load balancer's table (see the module's docstring and `l4render`)."""
    from .l4render import render_l4 as render

    return render(table, vip, listeners)
