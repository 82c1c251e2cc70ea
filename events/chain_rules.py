"""Service chains' rules beyond types, once: when two classifiers select common traffic.

Pure functions of the wire values (`advanced.Classifier`): the command side refuses two chains
on one router whose classifiers overlap with equal priorities; a dataplane that orders chains
by priority can ask the same question.
"""

from __future__ import annotations

import ipaddress

from .advanced import Classifier


def port_range(value: str | None) -> tuple[int, int]:
    """``"80"`` -> (80, 80), ``"1000-2000"`` -> (1000, 2000); unset: every port."""
    if value is None:
        return (0, 65535)
    low, _, high = value.partition("-")
    return (int(low), int(high or low))


def _ranges_meet(a: str | None, b: str | None) -> bool:
    (alo, ahi), (blo, bhi) = port_range(a), port_range(b)
    return alo <= bhi and blo <= ahi


def _networks_meet(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return True
    return ipaddress.IPv4Network(a, strict=False).overlaps(ipaddress.IPv4Network(b, strict=False))


def classifiers_overlap(a: Classifier, b: Classifier) -> bool:
    """Whether some packet matches both: every field overlaps (unset fields match anything,
    protocol ``any`` meets every protocol, CIDRs share addresses, port ranges intersect, the
    logical source ports are equal)."""
    return (
        (a.protocol == b.protocol or "any" in (a.protocol, b.protocol))
        and _networks_meet(a.source_cidr, b.source_cidr)
        and _networks_meet(a.destination_cidr, b.destination_cidr)
        and _ranges_meet(a.source_port, b.source_port)
        and _ranges_meet(a.destination_port, b.destination_port)
        and (a.logical_source_port is None or b.logical_source_port is None
             or a.logical_source_port == b.logical_source_port)
    )


__all__ = ["classifiers_overlap", "port_range"]
