"""The host side of the tap driver: observe the interfaces' clsact qdiscs and filters, and
apply one step. Blocking (pyroute2): run it off the event loop.

Every step is idempotent: "exists" on add and "does not exist" on delete count as done.
Nothing here decides whether to act (that is `plan`); observing sorts the filters into those
of the band (ours) and the others, which are never touched.
"""

from __future__ import annotations

import errno
from collections.abc import Collection
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..steps import Outcome
from .model import PORT_INTERFACE, TC_EGRESS, TC_INGRESS, PrefBand
from .plan import (
    AddFilter,
    DeleteClsact,
    DeleteFilter,
    EnsureClsact,
    InterfaceSeen,
    Missing,
    Observed,
    Op,
)

ETH_P_ALL = 0x0003
_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)
_U32 = {"target": 0x10000, "keys": ["0x0/0x0+0"]}  # match u32 0 0: every frame


def observe(band: PrefBand, names: Collection[str]) -> Observed:
    """The host's port interfaces (Neutron's ``tap…`` names) and `names` (the monitors)."""
    with IPRoute() as ipr:
        links = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
        wanted = {n: i for n, i in links.items() if PORT_INTERFACE.fullmatch(n) or n in names}
        return Observed({name: _interface(ipr, index, band) for name, index in wanted.items()})


def _interface(ipr: IPRoute, index: int, band: PrefBand) -> InterfaceSeen:
    try:
        clsact = any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))
        if not clsact:
            return InterfaceSeen(index)
        ours: dict[tuple[int, int], frozenset[int]] = {}
        foreign = False
        for parent in (TC_INGRESS, TC_EGRESS):
            for f in ipr.get_filters(index=index, parent=parent):
                pref = f["info"] >> 16
                if pref in band and f.get_attr("TCA_KIND") == "u32":
                    found = ours.get((parent, pref), frozenset())
                    ours[(parent, pref)] = found | mirror_targets(f)
                else:
                    foreign = True
        return InterfaceSeen(index, True, ours, foreign)
    except NetlinkError as e:  # the interface went while we looked
        if e.code in _GONE:
            return InterfaceSeen(index)
        raise


def mirror_targets(msg: Any) -> frozenset[int]:
    """The interface indexes a u32 filter's mirred actions send to (none for its hash table)."""
    opts = msg.get_attr("TCA_OPTIONS")
    acts = opts.get_attr("TCA_U32_ACT") if opts is not None else None
    out = set()
    for _, act in (acts["attrs"] if acts is not None else []):
        if act.get_attr("TCA_ACT_KIND") == "mirred":
            parms = act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
            out.add(int(parms["ifindex"]))
    return frozenset(out)


def apply(ops: list[Op]) -> list[Outcome]:
    """Every step in order; a failing step does not stop the others (resync plans again)."""
    with IPRoute() as ipr:
        return [_apply(ipr, op) for op in ops]


def _apply(ipr: IPRoute, op: Op) -> Outcome:
    if isinstance(op, Missing):
        return Outcome(op, False, op.reason)
    try:
        _step(ipr, op)
    except NetlinkError as e:
        if isinstance(op, EnsureClsact | AddFilter) and e.code == errno.EEXIST:
            return Outcome(op, True)
        if isinstance(op, DeleteFilter | DeleteClsact) and e.code in _GONE:
            return Outcome(op, True)
        return Outcome(op, False, f"{type(op).__name__} on {op.dev}: {e}")
    except IndexError:  # an interface went between observing and applying
        return Outcome(op, False, f"{type(op).__name__}: interface {op.dev} is gone")
    return Outcome(op, True)


def _index(ipr: IPRoute, name: str) -> int:
    return int(ipr.link_lookup(ifname=name)[0])


def _step(ipr: IPRoute, op: Op) -> None:
    if isinstance(op, EnsureClsact):
        ipr.tc("add", "clsact", _index(ipr, op.dev))
    elif isinstance(op, AddFilter):
        ipr.tc("add-filter", "u32", _index(ipr, op.dev), parent=op.parent, prio=op.pref,
               protocol=ETH_P_ALL, **_U32,
               action={"kind": "mirred", "direction": "egress", "action": "mirror",
                       "ifindex": _index(ipr, op.monitor)})
    elif isinstance(op, DeleteFilter):
        ipr.tc("del-filter", "u32", _index(ipr, op.dev), parent=op.parent, prio=op.pref,
               protocol=ETH_P_ALL, **_U32)
    elif isinstance(op, DeleteClsact):
        ipr.tc("del", "clsact", _index(ipr, op.dev))
