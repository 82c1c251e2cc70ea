"""What every command handler shares: the decision it returns, the application it loads from.

Each handler is a plain function of (application, tenant, command) → Decision. It raises a
`DomainError` to refuse. It does no I/O beyond loading aggregates through the application; the
executor saves the decision atomically (every aggregate it touched, in one batch) and re-runs the
handler on fresh state after a concurrency conflict. Tenant isolation is structural: every id a
command names is looked up under the command's own tenant, so another tenant's resource is
simply not found.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.application import AggregateNotFoundError, Application

from .domain import NotFoundError, SpliceAggregate, public_id
from .network import DEFAULT_QUOTAS


@dataclass
class Decision:
    subject: SpliceAggregate  # the aggregate the reply's version is about
    save: list[SpliceAggregate] = field(default_factory=list)
    result_id: str | None = None  # the reply's id when it is not the subject's (a listener, ...)


class SpliceApplication(Application[str]):
    """The command side's eventsourcing application (one per command-service process)."""

    name = "splice"

    def __init__(self, env: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(env=env, **kwargs)
        self.quota_defaults = dict(DEFAULT_QUOTAS)
        for item in filter(None, (self.env.get("SPLICE_QUOTAS") or "").split(",")):
            kind, _, n = item.partition("=")
            self.quota_defaults[kind.strip()] = int(n)
        self.pending_timeout = float(self.env.get("SPLICE_PENDING_TIMEOUT") or 300)

    def get_or_none(self, agg_id: str) -> Any:
        loaded = _LOADED.get()
        if loaded is not None:
            loaded.add(agg_id)
        try:
            return self.repository.get(agg_id)
        except AggregateNotFoundError:
            return None

    def get_live(self, agg_id: str, what: str, field: str = "$.id") -> Any:
        agg = self.get_or_none(agg_id)
        if agg is None or getattr(agg, "deleted", False):
            raise NotFoundError(f"{what} {public_id(agg_id)} not found", field=field)
        return agg


Handler = Callable[[SpliceApplication, str, Any], Decision]

# The ids of the aggregates one decision read (so a refusal can be re-checked on fresh state).
_LOADED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("splice_loaded", default=None)


def tracking_loads() -> set[str]:
    """Start recording the aggregates loaded in this context; returns the set that fills."""
    loaded: set[str] = set()
    _LOADED.set(loaded)
    return loaded


class Touched:
    """The aggregates one decision changed, each once, in the order first touched."""

    def __init__(self) -> None:
        self._by_id: dict[str, SpliceAggregate] = {}

    def add(self, *aggs: SpliceAggregate | None) -> None:
        for agg in aggs:
            if agg is not None:
                self._by_id.setdefault(agg.id, agg)

    def get(self, app: SpliceApplication, agg_id: str, what: str, field: str) -> Any:
        """Load once per decision: a second load of the same id returns the same object."""
        if agg_id in self._by_id:
            agg = self._by_id[agg_id]
            if getattr(agg, "deleted", False):
                raise NotFoundError(f"{what} {public_id(agg_id)} not found", field)
            return agg
        agg = app.get_live(agg_id, what, field)
        return agg

    def touched(self, agg_id: str) -> SpliceAggregate | None:
        return self._by_id.get(agg_id)

    def load_or_create(
        self, app: SpliceApplication, agg_id: str, create: Callable[[], SpliceAggregate]
    ) -> Any:
        """The aggregate this decision already touched, else the stored one, else a new one."""
        agg = self._by_id.get(agg_id) or app.get_or_none(agg_id) or create()
        self.add(agg)
        return agg

    def list(self) -> list[SpliceAggregate]:
        return [a for a in self._by_id.values() if a.pending_events]
