"""What every load-balancer driver reports, whatever its provider: where each load balancer
stands after a converge (`LbResult`), its operating status rolled up like Octavia's
(`OperatingStatus`: member → pool → listener → load balancer), and the transitions between
two results (`changes`) that the agent turns into report commands.

pool: OFFLINE if disabled or empty, ERROR if every enabled member is in ERROR, DEGRADED if some
are, else ONLINE. LB: OFFLINE if disabled, ERROR if its dataplane does not answer, DEGRADED if
any enabled listener or pool is not ONLINE, else ONLINE.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from splice.agents.model import LoadBalancerSpec
from splice.events.lbaas import Pool

ACTIVE = "ACTIVE"
ERROR = "ERROR"
DELETED = "DELETED"


class Operating(enum.StrEnum):
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    DEGRADED = "DEGRADED"
    ERROR = "ERROR"
    NO_MONITOR = "NO_MONITOR"
    DRAINING = "DRAINING"


@dataclass(frozen=True, slots=True)
class OperatingStatus:
    loadbalancer: Operating
    listeners: Mapping[str, Operating] = field(default_factory=dict)
    pools: Mapping[str, Operating] = field(default_factory=dict)
    members: Mapping[str, Operating] = field(default_factory=dict)

    def flat(self) -> dict[tuple[str, str], str]:
        """(kind, id) → status, the shape transitions are computed on."""
        out: dict[tuple[str, str], str] = {}
        for kind, table in (("listener", self.listeners), ("pool", self.pools),
                            ("member", self.members)):
            out.update({(kind, k): str(v) for k, v in table.items()})
        return out


def pool_status(pool: Pool, members: Mapping[str, Operating]) -> Operating:
    if not pool.admin_state_up:
        return Operating.OFFLINE
    enabled = [members[m.id] for m in pool.members if m.admin_state_up]
    if not enabled:
        return Operating.OFFLINE
    errors = sum(1 for s in enabled if s is Operating.ERROR)
    if errors == len(enabled):
        return Operating.ERROR
    return Operating.DEGRADED if errors else Operating.ONLINE


@dataclass(frozen=True, slots=True)
class StatusChange:
    kind: str  # loadbalancer | listener | pool | member
    id: str
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class LbResult:
    """Where one LB stands after a converge: ``generation`` is the one this result is for."""

    lb_id: str
    generation: int | None
    provisioning_status: str  # ACTIVE | ERROR | DELETED
    operating: OperatingStatus
    reason: str = ""

    def flat(self) -> dict[tuple[str, str], str]:
        out = {("loadbalancer", self.lb_id): str(self.operating.loadbalancer)}
        out.update(self.operating.flat())
        return out


@dataclass(frozen=True, slots=True)
class Report:
    """A transition, for the host's report command: the new result and what changed in it."""

    host: str
    result: LbResult
    changes: tuple[StatusChange, ...] = field(default=())


def deleted(lb_id: str) -> LbResult:
    return LbResult(lb_id, None, DELETED, OperatingStatus(Operating.OFFLINE))


def changes(before: LbResult | None, after: LbResult) -> tuple[StatusChange, ...]:
    changes = []
    old_flat = before.flat() if before else {}
    new_flat = after.flat() if after.provisioning_status != DELETED else {}
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) != new_flat.get(key):
            changes.append(StatusChange(key[0], key[1], old_flat.get(key), new_flat.get(key)))
    same_head = before is not None and (before.provisioning_status, before.generation,
                                        before.reason) == (after.provisioning_status,
                                                           after.generation, after.reason)
    if not same_head:
        changes.insert(0, StatusChange("provisioning", after.lb_id,
                                       before.provisioning_status if before else None,
                                       after.provisioning_status))
    return tuple(changes)


def lb_status(
    spec: LoadBalancerSpec, answering: bool,
    listeners: Mapping[str, Operating], pools: Mapping[str, Operating],
) -> Operating:
    if not spec.admin_state_up:
        return Operating.OFFLINE
    if not answering:
        return Operating.ERROR
    enabled = [listeners[x.id] for x in spec.listeners if x.admin_state_up]
    enabled += [pools[p.id] for p in spec.pools if p.admin_state_up and p.members]
    ok = (Operating.ONLINE, Operating.NO_MONITOR, Operating.DRAINING)
    return Operating.ONLINE if all(s in ok for s in enabled) else Operating.DEGRADED


class Ledger:
    """What a driver last reported of each of its load balancers: it adds DELETED results for
    those that left the desired set, and says which results are transitions worth a report."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.reported: dict[str, LbResult] = {}  # the last result of each LB still served
        self._known: set[str] = set()  # LB ids converged at least once (for DELETED)

    def close(self, results: dict[str, LbResult], desired: Collection[str]) -> list[Report]:
        """Add to `results` (one per desired LB) a DELETED one for each LB no longer desired;
        return the transitions since the last call."""
        for lb_id in sorted(self._known - set(desired)):
            results[lb_id] = deleted(lb_id)
        self._known = (self._known | set(results)) - {
            i for i, r in results.items() if r.provisioning_status == DELETED}
        out = []
        for lb_id, result in sorted(results.items()):
            diff = changes(self.reported.get(lb_id), result)
            if result.provisioning_status == DELETED:
                self.reported.pop(lb_id, None)
            else:
                self.reported[lb_id] = result
            if diff:
                out.append(Report(self.host, result, diff))
        return out
