"""The steps several drivers plan alike, pure.

* `Op`: every driver's step; `key` names the object it works on, so that steps on the same
  object run one after the other.
* The shared bridges (`bridges`): `EnsureBridge` and `DeleteBridge`, whichever driver plans
  them.
* A load balancer's *slot* (the haproxy and the nftables-l4 drivers): its namespace and VIP
  leg, named after the first 8 hex digits of its id (its short id). `LbOp` is a step on one
  slot; two LBs whose short ids clash would share a slot (`split_clashes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import ClassVar, TypeVar

from splice.agents.netns import VipLeg

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Op:
    """A step of a driver's plan. A step on one object says which in `scope` (a class
    attribute) and names the object in its first field."""

    scope: ClassVar[str] = ""

    @property
    def key(self) -> str:
        """The object the step works on (``lb:<short>``, ``bridge:<name>``)."""
        if not self.scope:
            raise NotImplementedError(f"{type(self).__name__} works on no one object")
        return f"{self.scope}:{getattr(self, fields(self)[0].name)}"


@dataclass(frozen=True, slots=True)
class BridgeOp(Op):
    scope = "bridge"
    name: str


@dataclass(frozen=True, slots=True)
class EnsureBridge(BridgeOp):
    """Make the bridge (and bring it up) if it is missing."""


@dataclass(frozen=True, slots=True)
class DeleteBridge(BridgeOp):
    """Delete a bridge of ours that nothing needs any more."""


@dataclass(frozen=True, slots=True)
class LbOp(Op):
    scope = "lb"
    short: str


@dataclass(frozen=True, slots=True)
class EnsureNamespace(LbOp):
    """The LB's own namespace, made if missing (loopback up)."""

    namespace: str


@dataclass(frozen=True, slots=True)
class EnsureVipLeg(LbOp):
    """The VIP leg: a veth from the network's bridge into the namespace, with the VIP."""

    leg: VipLeg


@dataclass(frozen=True, slots=True)
class ReportError(LbOp):
    """Nothing to do but to say why (a clash, a config refused, a spec not served)."""

    lb_id: str
    reason: str


def split_clashes(desired: Mapping[str, T], short: Callable[[str], str]
                  ) -> tuple[dict[str, T], dict[str, str]]:
    """Two LBs whose ids share their short id would share a slot: the smaller id keeps it
    (stable), the other is refused with the reason. Returns (the accepted, the refused's
    reasons), both by id."""
    first: dict[str, str] = {}
    clashes: dict[str, str] = {}
    for lb_id in sorted(desired):
        taken = first.setdefault(short(lb_id), lb_id)
        if taken != lb_id:
            clashes[lb_id] = f"short id {short(lb_id)} already used by {taken} on this host"
    return {i: desired[i] for i in first.values()}, clashes
