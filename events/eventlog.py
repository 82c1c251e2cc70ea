"""Reading the event log as an operator does: from a sequence or a time, optionally following."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from .jetstream import H_TOPIC, H_VERSION

STREAM = "SPLICE_EVENTS"


def describe(msg: Any) -> dict[str, Any]:
    """A plain dict of one stored event message (for `splice events -o json`)."""
    md = msg.metadata
    hdrs = msg.headers or {}
    tokens = msg.subject.split(".")
    try:
        payload: Any = json.loads(msg.data) if msg.data else {}
    except ValueError:
        payload = {"_raw": msg.data.decode(errors="replace")}
    return {
        "seq": md.sequence.stream,
        "time": md.timestamp.isoformat()
        if isinstance(md.timestamp, datetime)
        else str(md.timestamp),
        "subject": msg.subject,
        "tenant": tokens[2] if len(tokens) > 2 else "",
        "aggregate": tokens[3] if len(tokens) > 3 else "",
        "aggregate_id": tokens[4] if len(tokens) > 4 else "",
        "type": hdrs.get(H_TOPIC, tokens[-1]),
        "version": int(hdrs.get(H_VERSION, "0")),
        "payload": payload,
    }


async def read_events(
    url: str,
    show: Callable[[dict[str, Any]], None],
    *,
    subject: str = "splice.evt.>",
    from_seq: int | None = None,
    start_time: datetime | None = None,
    follow: bool = False,
    limit: int | None = None,
    stream: str = STREAM,
) -> int:
    """Print events through `show`; returns how many. Without `follow`, stops at the end."""
    nc = await nats.connect(url.split(","), connect_timeout=5)
    js = nc.jetstream()
    count = 0
    try:
        if from_seq is not None:
            cfg = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq
            )
        elif start_time is not None:
            cfg = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=start_time,
            )
        else:
            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, config=cfg)
        while limit is None or count < limit:
            try:
                msg = await sub.next_msg(timeout=1.0 if not follow else 3600)
            except (TimeoutError, nats.errors.TimeoutError):
                if follow:
                    continue
                break
            show(describe(msg))
            count += 1
            if not follow and msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
    except asyncio.CancelledError:
        pass
    finally:
        await nc.close()
    return count
