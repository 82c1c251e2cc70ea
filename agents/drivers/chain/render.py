"""The classifier table of one router's chains, pure: `ChainSpec`s in, nft JSON out.

``ip <prefix>ch-<8 hex of the router>``, one base chain ``prerouting`` (filter, hook
prerouting, priority -150: mangle), its rules in this order:

1. per chain (higher priority first, then by id) and hop ``i``: a packet coming back from the
   hop (``iifname`` = the hop's router-side veth) gets the mark of hop ``i + 1``, or 0 after
   the last hop (the normal route), and leaves the chain (``accept``: the rules below would
   mark it again); for a ``symmetric`` chain this rule matches ``ct direction original`` and
   a second one ``ct direction reply``: the mark of hop ``i - 1``, or 0 after the first hop;
2. per chain in the same order: a new flow that no chain marked yet (``ct mark 0``) and that
   matches the classifier gets ``ct mark`` = the chain's mark (its hop 0's);
3. per ``symmetric`` chain: a packet of the reply direction whose ``ct mark`` is the chain's
   gets the mark of its last hop (replies cross the hops in reverse: each hop's one-armed
   namespace sends back whatever arrives, and its routing table leads to it either way);
4. every packet of the original direction whose ``ct mark`` is one of the agent's marks gets
   ``meta mark`` from ``ct mark`` (the replies of a chain that is not symmetric take the
   direct path).

Matches come from `nftables.render.rule_expr` (the classifier has a firewall rule's fields):
only validated, re-parsed values reach a rule. Marks and interface names are checked here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from splice.events.advanced import FirewallRule

from ..nftables.render import Chain, Rule, Ruleset, UnsafeValueError, ifname, rule_expr
from .model import MARK_BASE, SLOTS, ChainSpec, owns_mark

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


def classifier_expr(spec: ChainSpec) -> tuple[Any, ...]:
    """The classifier's matches (no verdict)."""
    c = spec.classifier
    rule = FirewallRule(action="allow", protocol=c.protocol, source_cidr=c.source_cidr,
                        destination_cidr=c.destination_cidr, source_port=c.source_port,
                        destination_port=c.destination_port, id="")
    return rule_expr(rule)[:-1]


def render_chains(table: str, specs: Iterable[ChainSpec]) -> Ruleset:
    ordered = sorted(specs, key=lambda s: (-s.priority, s.id))
    rules: list[Rule] = []
    for spec in ordered:
        for i, hop in enumerate(spec.hops):
            iif = _match({"meta": {"key": "iifname"}}, ifname(hop.router_if))
            following = spec.hops[i + 1].mark if i + 1 < len(spec.hops) else 0
            if not spec.symmetric:
                rules.append(Rule(CHAIN, (iif, _set(META_MARK, _mark(following)), {"accept": None})))
                continue
            previous = spec.hops[i - 1].mark if i > 0 else 0
            for direction, value in (("original", following), ("reply", previous)):
                rules.append(Rule(CHAIN, (
                    iif, _match(CT_DIRECTION, direction),
                    _set(META_MARK, _mark(value)),
                    {"accept": None},
                )))
    for spec in ordered:
        rules.append(Rule(CHAIN, (
            _match({"ct": {"key": "state"}}, "new", "in"),
            _match(CT_MARK, 0),
            *classifier_expr(spec),
            _set(CT_MARK, _mark(spec.mark)),
        )))
    for spec in ordered:
        if spec.symmetric:
            rules.append(Rule(CHAIN, (
                _match(CT_DIRECTION, "reply"),
                _match(CT_MARK, _mark(spec.mark)),
                _set(META_MARK, _mark(spec.hops[-1].mark)),
            )))
    if ordered:
        rules.append(Rule(CHAIN, (
            _match(CT_DIRECTION, "original"),
            _match(CT_MARK, {"range": [MARK_BASE, MARK_BASE + 16 * SLOTS - 1]}),
            _set(META_MARK, CT_MARK),
        )))
    chain = Chain(CHAIN, "filter", "prerouting", MANGLE_PRIO, "accept")
    return Ruleset(FAMILY, table, (chain,), tuple(rules))
