"""Schema evolution on the read side: stored v1 payloads still replay, upcast to v2.

ServiceTypeCreated / ServiceTypeUpdated v2 carry `labels`; v1 payloads (written before it
existed) have none. Both kinds sit in one stream, as they would after an upgrade.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import nats
from streamgen import Appender, Ev

from splice.events.upcasting import current_version, upcast
from splice.natsserver import NatsServer
from splice.projections.projector import Projector
from splice.projections.queries import Query, run_query
from splice.projections.reading import last_event_seq, run_projection
from splice.projections.store import open_store
from splice.projections.views import QUERY_VIEWS


def v1_created(ident: str) -> Ev:
    payload = {
        "type": "ServiceTypeCreated",
        "timestamp": "2026-01-01T10:00:00Z",
        "actor": "old-release",
        "command_id": "c1",
        "correlation_id": "c1",
        "schema": 1,
        "aggregate": "servicetype",
        "name": "legacy",
        "description": "stored by v1",
        "providers": {"loadbalancer": "haproxy"},
    }
    return Ev(
        "_admin",
        "servicetype",
        ident,
        1,
        "ServiceTypeCreated",
        {},
        raw=json.dumps(payload).encode(),
    )


def v2_created(ident: str) -> Ev:
    return Ev(
        "_admin",
        "servicetype",
        ident,
        1,
        "ServiceTypeCreated",
        {
            "name": "modern",
            "description": "stored by v2",
            "providers": {"loadbalancer": "nftables-l4"},
            "labels": {"tier": "gold"},
        },
        schema=2,
    )


def test_upcasting_a_v1_payload_adds_the_v2_field_and_leaves_v2_alone() -> None:
    assert current_version("ServiceTypeCreated") == 2
    old: dict[str, Any] = {"schema": 1, "name": "x"}
    assert upcast("ServiceTypeCreated", old) == {"schema": 2, "name": "x", "labels": {}}
    new: dict[str, Any] = {"schema": 2, "labels": {"a": "b"}}
    assert upcast("ServiceTypeCreated", new) == {"schema": 2, "labels": {"a": "b"}}
    unknown: dict[str, Any] = {"schema": 7, "x": 1}
    assert upcast("SomethingNew", unknown) == {"schema": 7, "x": 1}


async def test_stored_v1_and_v2_events_replay_into_the_same_view(
    fresh_nats: NatsServer, db_url: str
) -> None:
    legacy, modern = str(uuid.uuid4()), str(uuid.uuid4())
    appender = Appender(fresh_nats.url)
    try:
        appender.append([v1_created(legacy)])
        appender.append([v2_created(modern)])
        appender.append(
            [
                Ev(
                    "_admin",
                    "servicetype",
                    legacy,
                    2,
                    "ServiceTypeUpdated",
                    {
                        "name": "legacy",
                        "description": "relabelled by v2",
                        "providers": {"loadbalancer": "haproxy"},
                        "labels": {"tier": "bronze"},
                    },
                    schema=2,
                )
            ]
        )
    finally:
        appender.close()
    nc = await nats.connect(fresh_nats.url)
    store = open_store(db_url)
    try:
        js = nc.jetstream()
        projector = Projector(store)
        end = await last_event_seq(js)
        await asyncio.wait_for(run_projection(js, projector, asyncio.Event(), until=end), 30)
        view = QUERY_VIEWS["servicetypes"]
        items = run_query(store, Query(view=view, tenant="_admin"))["items"]
        audit = run_query(store, Query(view=QUERY_VIEWS["audit"], tenant="_admin"))["items"]
    finally:
        store.close()
        await nc.close()
    by_name = {i["name"]: i for i in items}
    assert by_name["modern"]["labels"] == {"tier": "gold"}
    assert by_name["legacy"]["labels"] == {"tier": "bronze"}
    assert by_name["legacy"]["version"] == 2
    first = next(a for a in audit if a["aggregate_id"] == legacy and a["version"] == 1)
    assert first["actor"] == "old-release"
    assert first["changes"]["labels"] == [None, {}]  # the v1 event, upcast: it had no labels
    relabel = next(a for a in audit if a["aggregate_id"] == legacy and a["version"] == 2)
    assert relabel["changes"]["labels"] == [{}, {"tier": "bronze"}]
