"""Health checks of nftables-l4 members, the state machine: pure, the clock injected.

The kernel has no health checks, so the agent makes them: for each pool with an enabled
health monitor (TCP: the command side refuses any other type for this provider), a TCP connect
to each enabled member from inside the LB's namespace, every ``delay`` seconds, given
``timeout`` seconds. ``max_retries`` consecutive successes bring a member up (rise),
``max_retries_down`` consecutive failures take it down (fall); a success resets the failures
and a failure the successes. Members start up (as haproxy's do), and a member whose address,
port or monitor changed starts again from up.

`Checks` holds only this state machine: `sync` (what is monitored now), `due` (what to probe
now; each probe is scheduled ``delay`` after the previous one started), `record` (a probe's
outcome; True when the member went up or down), `down` (the members down, by LB). The driver
does the probing and re-converges on a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from splice.agents.model import LoadBalancerSpec
from splice.events.lbaas import HealthMonitor

from .model import MemberKey, monitored


@dataclass(frozen=True, slots=True)
class Target:
    """One member to probe, from inside ``lb_id``'s namespace."""

    lb_id: str
    pool_id: str
    member_id: str
    address: str
    port: int

    @property
    def key(self) -> MemberKey:
        return (self.pool_id, self.member_id)


@dataclass(frozen=True, slots=True)
class Monitor:
    delay: float
    timeout: float
    rise: int
    fall: int

    @classmethod
    def of(cls, hm: HealthMonitor) -> Monitor:
        return cls(float(hm.delay), float(hm.timeout), hm.max_retries, hm.max_retries_down)


def targets(desired: Mapping[str, LoadBalancerSpec]) -> dict[Target, Monitor]:
    """Every member to probe: enabled members of enabled pools with an enabled monitor."""
    out: dict[Target, Monitor] = {}
    for lb_id, spec in desired.items():
        for pool in spec.pools:
            if not pool.admin_state_up or not monitored(pool) or pool.healthmonitor is None:
                continue
            monitor = Monitor.of(pool.healthmonitor)
            for m in pool.members:
                if m.admin_state_up:
                    out[Target(lb_id, pool.id, m.id, m.address, m.protocol_port)] = monitor
    return out


@dataclass(slots=True)
class _State:
    monitor: Monitor
    next_at: float
    up: bool = True
    passes: int = 0
    fails: int = 0


class Checks:
    """The health state of every monitored member (see the module's docstring)."""

    def __init__(self) -> None:
        self._states: dict[Target, _State] = {}

    def sync(self, wanted: Mapping[Target, Monitor], now: float) -> None:
        """Monitor exactly ``wanted``: the others are forgotten, the new ones start up and
        are due at once, a changed monitor starts again."""
        for target in list(self._states):
            if target not in wanted:
                del self._states[target]
        for target, monitor in wanted.items():
            state = self._states.get(target)
            if state is None or state.monitor != monitor:
                self._states[target] = _State(monitor, now)

    def due(self, now: float) -> list[Target]:
        """The members to probe now; each is next due ``delay`` later."""
        out = []
        for target, state in self._states.items():
            if state.next_at <= now:
                state.next_at = now + state.monitor.delay
                out.append(target)
        return sorted(out, key=lambda t: (t.lb_id, t.pool_id, t.member_id))

    def next_due(self) -> float | None:
        return min((s.next_at for s in self._states.values()), default=None)

    def timeout(self, target: Target) -> float:
        state = self._states.get(target)
        return state.monitor.timeout if state else 0.0

    def record(self, target: Target, ok: bool) -> bool:
        """A probe's outcome; True when the member went up or down (a target forgotten
        meanwhile changes nothing)."""
        state = self._states.get(target)
        if state is None:
            return False
        if ok:
            state.passes, state.fails = state.passes + 1, 0
            if not state.up and state.passes >= state.monitor.rise:
                state.up, state.passes = True, 0
                return True
        else:
            state.passes, state.fails = 0, state.fails + 1
            if state.up and state.fails >= state.monitor.fall:
                state.up, state.fails = False, 0
                return True
        return False

    def is_up(self, target: Target) -> bool:
        state = self._states.get(target)
        return state is None or state.up

    def down(self) -> dict[str, frozenset[MemberKey]]:
        """The members down, by LB id."""
        out: dict[str, set[MemberKey]] = {}
        for target, state in self._states.items():
            if not state.up:
                out.setdefault(target.lb_id, set()).add(target.key)
        return {lb: frozenset(keys) for lb, keys in out.items()}
