"""Reading the event log as an operator does: from a sequence or a time, optionally following."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from . import subjects
from .follow import Delivery, Follower, last_seq
from .natsclient import connect


def describe(d: Delivery) -> dict[str, Any]:
    """A plain dict of one stored event message (for `splice events -o json`)."""
    parts = subjects.parse_event(d.subject)
    try:
        payload: Any = json.loads(d.data) if d.data else {}
    except ValueError:
        payload = {"_raw": d.data.decode(errors="replace")}
    return {
        "seq": d.seq,
        "time": datetime.fromtimestamp(d.time_ns / 1e9, UTC).isoformat(),
        "subject": d.subject,
        "tenant": parts.tenant if parts else "",
        "aggregate": parts.aggregate if parts else "",
        "aggregate_id": parts.ident if parts else "",
        "type": d.topic,
        "version": int(d.headers.get(subjects.H_VERSION, "0")),
        "payload": payload,
    }


async def read_events(
    url: str,
    show: Callable[[dict[str, Any]], None],
    *,
    subject: str = subjects.EVENTS,
    from_seq: int | None = None,
    start_time: datetime | None = None,
    follow: bool = False,
    limit: int | None = None,
    stream: str = subjects.STREAM,
    nc: Any = None,
    js_prefix: str | None = None,
) -> int:
    """Print events through `show`; returns how many. Without `follow`, stops at the end.

    `nc`: the process's NATS connection, left open; without it, one of its own for the read.
    `js_prefix`: the JetStream API as this connection's account imports it (not the services')."""
    own = nc is None
    if own:
        nc = await connect(url, connect_timeout=5)
    js = nc.jetstream(prefix=js_prefix) if js_prefix else nc.jetstream()
    count = 0

    async def take(d: Delivery) -> None:
        nonlocal count
        show(describe(d))
        count += 1
        if limit is not None and count >= limit:
            follower.close()

    after = from_seq - 1 if from_seq else 0
    follower = Follower(js, subject, take, after=after, start_time=start_time, stream=stream,
                        name="eventlog")
    try:
        end = None if follow else await last_seq(js, subject, stream)
        if limit != 0 and end != 0:
            # a cancellation (Ctrl-C while following, a stopping `splice up`) ends the caller too
            await follower.run(until=end)
    finally:
        if own:
            await nc.close()
    return count
