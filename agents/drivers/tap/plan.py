"""The tap driver's plan: pure, from what is desired and what the host holds to the steps between.

`plan(desired, observed, band)` returns steps in the order they must run: the taps that cannot
be served here (a missing interface) as `Missing`, then per interface the clsact qdisc, the
filters to replace or remove, the filters to add, and last the clsact qdiscs left empty by the
driver's removals. A filter is ours when its preference is in the band; it is right when it
mirrors to the monitor interface's current index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .model import SLOTS, PrefBand, TapSpec


@dataclass(frozen=True, slots=True)
class InterfaceSeen:
    """One interface of the host: its index, whether it has a clsact qdisc, the filters of the
    band on it ((parent, pref) -> the indexes they mirror to), and whether it holds filters
    outside the band (someone else's)."""

    index: int
    clsact: bool = False
    ours: Mapping[tuple[int, int], frozenset[int]] = field(default_factory=dict)
    foreign: bool = False


@dataclass(frozen=True, slots=True)
class Observed:
    interfaces: Mapping[str, InterfaceSeen]  # by name (port interfaces, and monitors)


@dataclass(frozen=True, slots=True)
class Missing:
    """A tap this host cannot serve now (retried on resync), and why."""

    tap_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class EnsureClsact:
    dev: str


@dataclass(frozen=True, slots=True)
class AddFilter:
    dev: str
    parent: int
    pref: int
    monitor: str
    tap_id: str


@dataclass(frozen=True, slots=True)
class DeleteFilter:
    dev: str
    parent: int
    pref: int


@dataclass(frozen=True, slots=True)
class DeleteClsact:
    dev: str


Op = Missing | EnsureClsact | AddFilter | DeleteFilter | DeleteClsact


def missing_reason(tap: TapSpec, observed: Observed) -> str:
    gone = [f"{what} interface {name}" for what, name in
            (("port", tap.port_if), ("monitor", tap.monitor_if))
            if name not in observed.interfaces]
    return f"no {' and no '.join(gone)} on this host" if gone else ""


def wanted_filters(taps: Iterable[TapSpec], band: PrefBand) -> dict[tuple[str, int, int], tuple[str, str]]:
    """(dev, parent, pref) -> (monitor, tap id) for every filter the taps need. A tap's slot is
    derived from its id; taps of one interface that hash to one slot take the next free ones,
    in the order of their ids."""
    out: dict[tuple[str, int, int], tuple[str, str]] = {}
    taken: dict[str, set[int]] = {}
    for tap in sorted(taps, key=lambda t: t.id):
        used = taken.setdefault(tap.port_if, set())
        slot = band.slot_of(tap.id)
        while slot in used:
            slot = (slot + 1) % SLOTS
        used.add(slot)
        for parent in tap.parents:
            out[(tap.port_if, parent, band.pref(slot, parent))] = (tap.monitor_if, tap.id)
    return out


def plan(desired: Mapping[str, TapSpec], observed: Observed, band: PrefBand) -> list[Op]:
    ops: list[Op] = []
    servable = []
    for tap_id, tap in sorted(desired.items()):
        reason = missing_reason(tap, observed)
        if reason:
            ops.append(Missing(tap_id, reason))
        else:
            servable.append(tap)
    wanted = wanted_filters(servable, band)
    devs = sorted({d for d, _, _ in wanted} | {n for n, i in observed.interfaces.items() if i.ours})
    adds: list[Op] = []
    emptied: list[Op] = []
    for dev in devs:
        seen = observed.interfaces.get(dev)
        mine = {(p, f): v for (d, p, f), v in wanted.items() if d == dev}
        if seen is None:
            continue
        if mine and not seen.clsact:
            ops.append(EnsureClsact(dev))
        for (parent, pref), targets in sorted(seen.ours.items()):
            want = mine.get((parent, pref))
            monitor = observed.interfaces.get(want[0]) if want else None
            if want is None or monitor is None or targets != {monitor.index}:
                ops.append(DeleteFilter(dev, parent, pref))
        for (parent, pref), (monitor_if, tap_id) in sorted(mine.items()):
            if seen.ours.get((parent, pref)) != {observed.interfaces[monitor_if].index}:
                adds.append(AddFilter(dev, parent, pref, monitor_if, tap_id))
        if seen.clsact and seen.ours and not mine and not seen.foreign:
            emptied.append(DeleteClsact(dev))
    return [*ops, *adds, *emptied]
