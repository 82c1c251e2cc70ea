"""History and time travel, read from the stream itself (not from the read models).

* `history(id)`: every event of one resource (subject filter ``splice.evt.*.*.<id>.*``), each
  with the audit log's summary of what it changed — computed by folding the resource's own
  events in memory with the audit view's handler, so it needs no database and can never
  disagree with the audit log.
* `state_at(at)`: a tenant's or a resource's state as it was at a stream sequence or a time:
  the same view handlers the projector runs, applied in memory to every event up to that point.

Both read with the stream follower on the narrowest subject filter the server can serve, and
stop at the newest matching event that existed when they started.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from splice.events import subjects
from splice.events.follow import Delivery, Follower

from .envelope import Event, format_ns, from_parts
from .queries import shape
from .reading import last_event_seq
from .schema import encode_rows
from .views import QUERY_VIEWS, VIEWS, Tx, View


@dataclass(frozen=True)
class At:
    """A point in the log: a stream sequence, or a time (nanoseconds since the epoch)."""

    seq: int | None = None
    time_ns: int | None = None

    def includes(self, ev: Event) -> bool:
        if self.seq is not None and ev.seq > self.seq:
            return False
        return not (self.time_ns is not None and ev.time_ns > self.time_ns)


def resource_filter(resource_id: str, tenant: str | None = None) -> str:
    """One resource's events (within one tenant's, when given)."""
    return subjects.event(tenant or "*", "*", resource_id, "*")


def tenant_filter(tenant: str) -> str:
    return subjects.events_of_tenant(tenant)


async def read_events(
    js: Any, subject: str, at: At | None = None, timeout: float = 30.0
) -> list[Event]:
    """Events on `subject` in stream order, up to `at` (default: the newest there is now)."""
    end = await last_event_seq(js, subject)
    if at is not None and at.seq is not None:
        end = min(end, at.seq)
    if end == 0:
        return []
    out: list[Event] = []

    async def take(d: Delivery) -> None:
        ev = from_parts(d.seq, d.time_ns, d.subject, d.headers, d.data)
        if at is not None and not at.includes(ev):
            follower.close()
            return
        out.append(ev)

    follower = Follower(js, subject, take, name="timetravel")
    await asyncio.wait_for(follower.run(until=end), timeout)
    return out


def fold(events: list[Event], views: tuple[View, ...] = VIEWS) -> Tx:
    """Apply events to the views in memory: the read models as of the last event."""
    tx = Tx.in_memory(views)
    for ev in events:
        for view in views:
            if view.wants(ev.type):
                view.apply(ev, tx)
    return tx


def audit_lines(tx: Tx) -> list[dict[str, Any]]:
    """The audit rows a fold appended, shaped as the audit query answers them."""
    view = QUERY_VIEWS["audit"]
    return [shape(view, row) for row in tx["audit"].appended]


async def history(js: Any, resource_id: str, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every event of one resource (of `tenant`'s, when given), oldest first, with what each
    changed."""
    events = await read_events(js, resource_filter(resource_id, tenant))
    tx = fold(events, (QUERY_VIEWS["audit"],))
    return audit_lines(tx)


async def state_at(
    js: Any, at: At, *, tenant: str | None = None, resource_id: str | None = None
) -> dict[str, Any]:
    """The read models of a tenant, or of one resource (within `tenant`'s, when given), as
    they were at `at`."""
    if tenant is None and resource_id is None:
        raise ValueError("give a tenant, a resource_id or both")
    subject = resource_filter(resource_id, tenant) if resource_id else tenant_filter(str(tenant))
    events = await read_events(js, subject, at)
    tx = fold(events)
    last = events[-1] if events else None
    state: dict[str, Any] = {
        "at": {
            "seq": last.seq if last else 0,
            "time": format_ns(last.time_ns) if last else None,
            "asked": {"seq": at.seq, "time": format_ns(at.time_ns) if at.time_ns else None},
        },
        "events": len(events),
    }
    for name, view in QUERY_VIEWS.items():
        table = view.table()
        if name == "audit" or table.name not in tx.tables:
            continue
        rows = [r for r in tx[table.name].rows() if _matches(view, r)]
        state[name] = [shape(view, _as_tuple(view, r)) for r in rows]
    return state


def _matches(view: View, row: dict[str, Any]) -> bool:
    return all(row.get(c) == v for c, v in view.fixed.items())


def _as_tuple(view: View, row: dict[str, Any]) -> tuple[Any, ...]:
    """An in-memory row in column order, as the store would return it (json still encoded)."""
    return tuple(encode_rows(view.table(), [row])[0])
