"""The classifier table of one router's chains, pure: `ChainSpec`s in, nft JSON out.

``ip <prefix>ch-<8 hex of the router>``, one base chain ``prerouting`` (filter, hook
prerouting, priority -150: mangle), its rules in this order:

1. per chain (higher priority first, then by id) and hop ``i``: a packet coming back from the
   hop (``iifname``: the hop's router-side veth; a bridged hop's out-leg) gets the mark that
   sends it into hop ``i + 1`` (`HopSpec.entry`), or 0 after the last hop (the normal route),
   and leaves the chain (``accept``: the rules below would mark it again); for a ``symmetric``
   chain this rule matches ``ct direction original`` and a second one ``ct direction reply``
   (from a bridged hop's in-leg): the reverse entry of hop ``i - 1``, or 0 after the first hop;
2. per chain in the same order: a new flow that no chain marked yet (``ct mark 0``) and that
   matches the classifier gets ``ct mark`` = the chain's mark (its hop 0's); a logical source
   port classifier matches the leg on the port's network, its MAC and its address; a chain
   whose logical source port is gone has no such rule;
3. per ``symmetric`` chain: a packet of the reply direction whose ``ct mark`` is the chain's
   gets the reverse entry of its last hop (replies cross the hops in reverse);
4. every packet of the original direction whose ``ct mark`` is one of the agent's forward marks
   gets ``meta mark`` from ``ct mark`` (the replies of a chain that is not symmetric take the
   direct path).

Matches come from `nftables.render.rule_expr` (the classifier has a firewall rule's fields):
only validated, re-parsed values reach a rule. Marks and interface names are checked here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from splice.events.advanced import FirewallRule

from ..nftables.render import Chain, Rule, Ruleset, UnsafeValueError, ifname, ipv4, rule_expr
from .model import MARK_BASE, REVERSE, ChainSpec, owns_mark

FAMILY = "ip"
CHAIN = "prerouting"
MANGLE_PRIO = -150


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _mark(value: int) -> int:
    if type(value) is not int or not (value == 0 or owns_mark(value)):
        raise UnsafeValueError(f"not one of the agent's marks: {value!r}")
    return value


def _set(key: dict[str, Any], value: Any) -> dict[str, Any]:
    return {"mangle": {"key": key, "value": value}}


CT_MARK = {"ct": {"key": "mark"}}
META_MARK = {"meta": {"key": "mark"}}
CT_DIRECTION = {"ct": {"key": "direction"}}
_MAC = re.compile("[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def classifier_expr(spec: ChainSpec) -> tuple[Any, ...]:
    """The classifier's matches (no verdict)."""
    c = spec.classifier
    rule = FirewallRule(action="allow", protocol=c.protocol, source_cidr=c.source_cidr,
                        destination_cidr=c.destination_cidr, source_port=c.source_port,
                        destination_port=c.destination_port, id="")
    return rule_expr(rule)[:-1]


def source_expr(spec: ChainSpec) -> tuple[Any, ...]:
    """Where a logical source port's traffic enters: its leg, MAC and address."""
    if spec.source is None:
        return ()
    src = spec.source
    if not _MAC.fullmatch(src.mac):
        raise UnsafeValueError(f"not a MAC address: {src.mac!r}")
    return (_match({"meta": {"key": "iifname"}}, ifname(src.iif)),
            _match({"payload": {"protocol": "ether", "field": "saddr"}}, src.mac),
            _match({"payload": {"protocol": "ip", "field": "saddr"}}, ipv4(src.address)))


def _returns(spec: ChainSpec) -> list[Rule]:
    """Rules 1: packets coming back from each hop, to the next one (or out)."""
    rules: list[Rule] = []
    hops = spec.hops
    for i, hop in enumerate(hops):
        following = hops[i + 1].entry("original") if i + 1 < len(hops) else 0
        if not spec.symmetric:
            iif = _match({"meta": {"key": "iifname"}}, ifname(hop.back_if("original")))
            rules.append(Rule(CHAIN, (iif, _set(META_MARK, _mark(following)), {"accept": None})))
            continue
        previous = hops[i - 1].entry("reply") if i > 0 else 0
        for direction, value in (("original", following), ("reply", previous)):
            rules.append(Rule(CHAIN, (
                _match({"meta": {"key": "iifname"}}, ifname(hop.back_if(direction))),
                _match(CT_DIRECTION, direction),
                _set(META_MARK, _mark(value)),
                {"accept": None},
            )))
    return rules


def render_chains(table: str, specs: Iterable[ChainSpec]) -> Ruleset:
    ordered = sorted(specs, key=lambda s: (-s.priority, s.id))
    rules = [r for spec in ordered for r in _returns(spec)]
    for spec in ordered:
        if spec.silent:
            continue
        rules.append(Rule(CHAIN, (
            _match({"ct": {"key": "state"}}, "new", "in"),
            _match(CT_MARK, 0),
            *source_expr(spec),
            *classifier_expr(spec),
            _set(CT_MARK, _mark(spec.mark)),
        )))
    for spec in ordered:
        if spec.symmetric:
            rules.append(Rule(CHAIN, (
                _match(CT_DIRECTION, "reply"),
                _match(CT_MARK, _mark(spec.mark)),
                _set(META_MARK, _mark(spec.hops[-1].entry("reply"))),
            )))
    if ordered:
        rules.append(Rule(CHAIN, (
            _match(CT_DIRECTION, "original"),
            _match(CT_MARK, {"range": [MARK_BASE, MARK_BASE + REVERSE - 1]}),
            _set(META_MARK, CT_MARK),
        )))
    chain = Chain(CHAIN, "filter", "prerouting", MANGLE_PRIO, "accept")
    return Ruleset(FAMILY, table, (chain,), tuple(rules))
