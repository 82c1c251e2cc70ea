"""Pure planning for the nftables tables of one network namespace: ``plan(desired, observed)``.

No I/O, no clock. Desired: the rendered tables the agent wants in the namespace (one per
firewall, one per router's NAT). Observed: the tables the namespace holds, parsed from
``nft -j list ruleset`` by `observe_tables` into their `canonical` content. The plan:

* nothing, for a table whose content already equals the rendering (converged);
* `ReplaceTable` — one transaction — for a table that is missing or differs in any way (a
  rule, the order, a policy, a chain or set made by hand, a base chain with a wrong hook);
* `DeleteTable` for a table of this driver's (its name starts with one of `owned_prefixes`)
  that nobody wants;
* never anything for a table without those prefixes: another driver's, or not the agent's;
* `ReportError` for a desired table whose name another desired table took first (two ids
  sharing their first 8 hex digits): the smaller owner id keeps the name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .conntrack import Guard
from .render import Ruleset, canonical, digest, owned_prefixes

TableKey = tuple[str, str]  # (family, name)


@dataclass(frozen=True, slots=True)
class Desired:
    """A table the agent wants: who it is for, its rendering, and the guard that says which
    open flows may outlive a change (None: cut nothing)."""

    owner: str  # the aggregate id of the firewall, or the router's for its NAT
    ruleset: Ruleset
    guard: Guard | None = None

    @property
    def key(self) -> TableKey:
        return self.ruleset.key


@dataclass(frozen=True, slots=True)
class ObservedTable:
    family: str
    name: str
    content: Mapping[str, Any]  # `canonical` of the listing

    @property
    def key(self) -> TableKey:
        return (self.family, self.name)

    @property
    def digest(self) -> str:
        return digest(self.content)


def observe_tables(listing: Mapping[str, Any]) -> dict[TableKey, ObservedTable]:
    """``nft -j list ruleset`` (or ``list table``) → every table it holds, by (family, name)."""
    objects = list(listing.get("nftables", []))
    keys = [(t["table"]["family"], t["table"]["name"]) for t in objects if "table" in t]
    return {k: ObservedTable(k[0], k[1], canonical(objects, *k)) for k in keys}


# --------------------------------------------------------------------------- ops


@dataclass(frozen=True, slots=True)
class Op:
    @property
    def key(self) -> TableKey:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ReplaceTable(Op):
    """Make the table exactly ``ruleset`` in one transaction (created when missing), then cut
    the open flows ``guard`` refuses."""

    owner: str
    ruleset: Ruleset
    stale: tuple[tuple[str, str], ...] = ()  # (kind, name) objects to delete in the batch
    guard: Guard | None = None
    created: bool = False

    @property
    def key(self) -> TableKey:
        return self.ruleset.key


@dataclass(frozen=True, slots=True)
class DeleteTable(Op):
    family: str
    name: str

    @property
    def key(self) -> TableKey:
        return (self.family, self.name)


@dataclass(frozen=True, slots=True)
class ReportError(Op):
    owner: str
    family: str
    name: str
    reason: str = field(default="")

    @property
    def key(self) -> TableKey:
        return (self.family, self.name)


# --------------------------------------------------------------------------- planning


def owns(name: str, prefix: str) -> bool:
    return name.startswith(owned_prefixes(prefix))


def plan(desired: Iterable[Desired], observed: Mapping[TableKey, ObservedTable], *,
         prefix: str) -> list[Op]:
    """The steps that make the namespace's tables of this driver what ``desired`` says."""
    ops: list[Op] = []
    wanted: dict[TableKey, Desired] = {}
    for d in sorted(desired, key=lambda d: (d.key, d.owner)):
        if not owns(d.ruleset.name, prefix):
            raise ValueError(f"table {d.ruleset.name} does not carry this driver's prefix")
        first = wanted.get(d.key)
        if first is not None:
            ops.append(ReportError(d.owner, *d.key,
                                   reason=f"table {d.key[1]} already used by {first.owner}"))
            continue
        wanted[d.key] = d
    for key, d in sorted(wanted.items()):
        ops += plan_table(d, observed.get(key))
    for key in sorted(observed):
        if key not in wanted and owns(key[1], prefix):
            ops.append(DeleteTable(*key))
    return ops


def plan_table(d: Desired, seen: ObservedTable | None) -> list[Op]:
    """One desired table: nothing when it holds exactly its rendering, else a replacement."""
    want = d.ruleset.canonical()
    if seen is None:
        return [ReplaceTable(d.owner, d.ruleset, guard=d.guard, created=True)]
    if seen.content == want:
        return []
    return [ReplaceTable(d.owner, d.ruleset, stale_objects(want, seen.content), d.guard)]


def stale_objects(want: Mapping[str, Any], have: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What the replacement batch must delete: chains the rendering does not have, or has with
    another hook, type or priority (a policy is updated in place); sets, maps and other named
    objects it never renders."""
    chains: Mapping[str, Mapping[str, Any]] = have.get("chains", {})
    wanted: Mapping[str, Mapping[str, Any]] = want["chains"]
    out: list[tuple[str, str]] = []
    for name, sig in chains.items():
        target = wanted.get(name)
        if target is None or _fixed(target) != _fixed(sig):
            out.append(("chain", name))
    out += [(kind, name) for kind, name in have.get("other", [])]
    return tuple(out)


def _fixed(sig: Mapping[str, Any]) -> Sequence[Any]:
    return [sig.get(k) for k in ("type", "hook", "prio", "dev")]
