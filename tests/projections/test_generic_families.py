"""Families without a dedicated view are still listed (their latest fields) and audited."""

from __future__ import annotations

import asyncio
import uuid

import nats
from streamgen import Appender, Ev

from splice.natsserver import NatsServer
from splice.projections.projector import Projector
from splice.projections.queries import parse_query, run_query
from splice.projections.reading import last_event_seq, run_projection
from splice.projections.store import open_store
from splice.projections.views import QUERY_VIEWS


async def test_networks_are_listed_per_tenant_and_unknown_event_types_are_audited(
    fresh_nats: NatsServer, db_url: str
) -> None:
    net, other = str(uuid.uuid4()), str(uuid.uuid4())
    appender = Appender(fresh_nats.url)
    try:
        appender.append(
            [
                Ev(
                    "acme",
                    "network",
                    net,
                    1,
                    "NetworkCreated",
                    {"name": "n1", "cidr": "10.0.0.0/24"},
                ),
                Ev(
                    "globex",
                    "network",
                    other,
                    1,
                    "NetworkCreated",
                    {"name": "n2", "cidr": "10.1.0.0/24"},
                ),
                Ev("acme", "network", net, 2, "NetworkRenamedInTheFuture", {"name": "n1b"}),
            ]
        )
    finally:
        appender.close()
    nc = await nats.connect(fresh_nats.url)
    store = open_store(db_url)
    try:
        js = nc.jetstream()
        end = await last_event_seq(js)
        await asyncio.wait_for(run_projection(js, Projector(store), asyncio.Event(), until=end), 30)
        nets = run_query(store, parse_query("acme", QUERY_VIEWS["networks"], {}))["items"]
        audit = run_query(store, parse_query("acme", QUERY_VIEWS["audit"], {}))["items"]
        st = run_query(store, parse_query("acme", QUERY_VIEWS["servicetypes"], {}))["items"]
    finally:
        store.close()
        await nc.close()
    assert [(n["id"], n["fields"]["name"], n["version"]) for n in nets] == [(net, "n1b", 2)]
    assert [a["type"] for a in audit] == ["NetworkCreated", "NetworkRenamedInTheFuture"]
    assert audit[1]["summary"] == "renamed in the future: name: 'n1' → 'n1b'"
    assert st == []
