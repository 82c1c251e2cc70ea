"""Back-pressure and fairness for the command service: a bounded, fair queue of requests.

The subscription's callback never waits. It admits a request into its tenant's queue, or refuses
it at once (`Busy`: `unavailable` with a `retry_after_ms` hint) when the tenant has
`tenant_limit` commands waiting or running, or the process has `limit`. Workers take the
tenants' queues in turn (round robin over the tenants with waiting work); one tenant holds at
most `tenant_workers` of the `workers`, and only `shared_workers` while other tenants are
active; a request that waited longer than `max_wait` is refused rather than run late. So one
tenant's flood costs the others one turn each and a small share of the CPU, not its whole queue.
Pure: the clock is injected.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from splice.events.contracts import ADMIN_TENANT, HOST_TENANT, Error, Failed

T = TypeVar("T")

# Tenants of the system's own commands (agents' reports, the monitors' verdicts): they keep the
# system's view of its hosts true, so only their own bound refuses them, never the process's.
SYSTEM_TENANTS = frozenset({ADMIN_TENANT, HOST_TENANT})
MIN_RETRY_MS = 20
MAX_RETRY_MS = 30_000


@dataclass(frozen=True, slots=True)
class Busy:
    """A refusal for want of room: a message and when to try again."""

    message: str
    retry_after_ms: int

    def reply(self, command_id: str | None) -> Failed:
        error = Error(code="unavailable", message=self.message, retry_after_ms=self.retry_after_ms)
        return Failed(error=error, command_id=command_id)


@dataclass(slots=True)
class _Tenant(Generic[T]):
    waiting: deque[tuple[T, float]] = field(default_factory=deque)  # (item, admitted at)
    running: int = 0
    ready: bool = False  # in the ring of tenants a worker may take from
    seconds: float = 0.0  # moving average of one command's time, admitted to done


class FairQueue(Generic[T]):
    """Per-tenant queues with bounds, taken round robin. No I/O, no locks: one event loop.

    `admit` queues an item or says why not (`Busy`); `take` gives the next item to run, in
    turn over the tenants with waiting work, while fewer than `workers` run and the tenant runs
    fewer than its share; `done` frees the item's worker. A tenant's share is `tenant_workers`
    while no other tenant is active (has work, or sent some within `active_window` seconds),
    else `shared_workers`: alone, a tenant may use what the command path needs for its full
    rate; beside others, it may not crowd out their CPU. Counted against the bounds: an item
    from `admit` until `done`. Hints are the time the tenant's (or the process's) waiting work
    needs at the pace measured so far.
    """

    def __init__(
        self,
        *,
        workers: int,
        tenant_workers: int,
        shared_workers: int,
        limit: int,
        tenant_limit: int,
        max_wait: float,
        active_window: float = 1.0,
        system: frozenset[str] = SYSTEM_TENANTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(workers, tenant_workers, shared_workers, limit, tenant_limit) < 1 or max_wait <= 0:
            raise ValueError("the bounds of a FairQueue must be positive")
        self.workers = workers
        self.tenant_workers = min(tenant_workers, workers)
        self.shared_workers = min(shared_workers, self.tenant_workers)
        self.limit = limit
        self.tenant_limit = tenant_limit
        self.max_wait = max_wait
        self.active_window = active_window
        self.system = system
        self.clock = clock
        self._tenants: dict[str, _Tenant[T]] = {}
        self._ring: deque[str] = deque()  # tenants with waiting work and a free worker
        self._seen: dict[str, float] = {}  # tenant -> when it last sent (pruned every window)
        self._pruned = clock()
        self.running = 0
        self.waiting = 0
        self._seconds = 0.0  # moving average over every tenant

    @property
    def load(self) -> int:
        """Items admitted and not yet done."""
        return self.running + self.waiting

    def load_of(self, tenant: str) -> int:
        t = self._tenants.get(tenant)
        return 0 if t is None else t.running + len(t.waiting)

    def share(self, tenant: str) -> int:
        """How many of `tenant`'s items may run at once, now."""
        alone = all(n == tenant for n in self._tenants) and all(n == tenant for n in self._seen)
        return self.tenant_workers if alone else self.shared_workers

    def admit(self, tenant: str, item: T) -> Busy | None:
        now = self.clock()
        self._seen[tenant] = now
        if now - self._pruned > self.active_window:
            self._seen = {n: at for n, at in self._seen.items() if now - at <= self.active_window}
            self._pruned = now
        t = self._tenants.get(tenant)
        mine = 0 if t is None else t.running + len(t.waiting)
        if t is not None and mine >= self.tenant_limit:
            return Busy(
                f"tenant {tenant} has {mine} commands waiting or running, its most at once",
                self._hint(len(t.waiting) + 1, t.seconds, t.running, self.share(tenant)),
            )
        if tenant not in self.system and self.load >= self.limit:
            return Busy(
                f"{self.load} commands are waiting or running here, the most at once",
                self._hint(self.waiting + 1, self._seconds, self.running, self.workers),
            )
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        t.waiting.append((item, now))
        self.waiting += 1
        self._ready(tenant, t)
        return None

    def _ready(self, tenant: str, t: _Tenant[T]) -> None:
        """Into the ring if it has waiting work, is not there yet, and may run one more."""
        if t.waiting and not t.ready and t.running < self.share(tenant):
            t.ready = True
            self._ring.append(tenant)

    def take(self) -> tuple[str, T, Busy | None] | None:
        """The next item to run and its tenant, or None. With a `Busy` when the item waited
        longer than `max_wait`: answer it with that, do not run it (then `done` it all the same)."""
        while self.running < self.workers and self._ring:
            tenant = self._ring.popleft()
            t = self._tenants[tenant]
            t.ready = False
            share = self.share(tenant)
            if t.running >= share:
                continue  # its share shrank (others came): back in the ring on its next `done`
            item, admitted = t.waiting.popleft()
            self.waiting -= 1
            t.running += 1
            self.running += 1
            self._ready(tenant, t)  # its next turn comes after every other tenant's
            waited = self.clock() - admitted
            if waited <= self.max_wait:
                return tenant, item, None
            late = Busy(
                f"waited {waited:.1f} s for a worker, longer than {self.max_wait:g} s",
                self._hint(len(t.waiting) + 1, t.seconds, t.running, share),
            )
            return tenant, item, late
        return None

    def done(self, tenant: str, seconds: float) -> None:
        """An item of `tenant` that `take` gave is finished; it took `seconds` to run."""
        t = self._tenants[tenant]
        t.running -= 1
        self.running -= 1
        t.seconds = seconds if t.seconds == 0 else 0.8 * t.seconds + 0.2 * seconds
        self._seconds = seconds if self._seconds == 0 else 0.9 * self._seconds + 0.1 * seconds
        if t.waiting:
            self._ready(tenant, t)
        elif t.running == 0:
            del self._tenants[tenant]

    def drop_waiting(self) -> list[T]:
        """Every waiting item, removed (they will not run)."""
        items = [item for t in self._tenants.values() for item, _ in t.waiting]
        for name in [n for n, t in self._tenants.items() if t.running == 0]:
            del self._tenants[name]
        for t in self._tenants.values():
            t.waiting.clear()
            t.ready = False
        self._ring.clear()
        self.waiting = 0
        return items

    def _hint(self, ahead: int, seconds: float, running: int, most: int) -> int:
        """Milliseconds for `ahead` items to be taken, `running` (at most `most`) at a time,
        each taking `seconds` (from admitted to done); no more than `max_wait`, after which
        whatever still waits is refused."""
        per_item = seconds / max(1, min(running, most)) if seconds > 0 else 0.01
        ms = math.ceil(ahead * per_item * 1000)
        return max(MIN_RETRY_MS, min(MAX_RETRY_MS, math.ceil(self.max_wait * 1000), ms))
