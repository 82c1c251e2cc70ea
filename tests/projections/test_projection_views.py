"""Service types and the audit log, projected from commands sent through the command service.

Each test runs against SQLite and PostgreSQL (the `db_url` fixture) with a real nats-server,
the real command service and the projector as `splice up` runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import event_messages
from qhelp import CREATE, DELETE, SET_DEFAULT, UPDATE, command, query, query_all, request

from splice.natsserver import NatsServer
from splice.services.service import CommandService


@pytest.fixture
async def service(fresh_nats: NatsServer) -> AsyncIterator[CommandService]:
    svc = CommandService(fresh_nats.url)
    await svc.start()
    yield svc
    await svc.stop()


async def scenario(nc: Any) -> dict[str, Any]:
    gold = await command(
        nc, CREATE, name="gold", description="a", providers={"loadbalancer": "haproxy"}
    )
    silver = await command(
        nc, CREATE, actor="bob", name="silver", providers={"loadbalancer": "nftables-l4"}
    )
    upd = await command(nc, UPDATE, actor="carol", id=gold["id"], description="b")
    dflt = await command(nc, SET_DEFAULT, id=silver["id"])
    gone = await command(nc, DELETE, id=gold["id"])
    return {"gold": gold, "silver": silver, "update": upd, "default": dflt, "delete": gone}


async def test_service_types_view_follows_the_commands(
    service: CommandService, projector: str, nc: Any
) -> None:
    s = await scenario(nc)
    last = s["delete"]["seq"]
    live = await query(nc, "_admin", "servicetypes", min_seq=last)
    assert live["ok"], live
    assert [i["name"] for i in live["items"]] == ["silver"]
    silver = live["items"][0]
    assert silver["default"] is True
    assert silver["providers"] == {"loadbalancer": "nftables-l4"}
    every = await query(nc, "_admin", "servicetypes", deleted=None)
    gold = next(i for i in every["items"] if i["name"] == "gold")
    assert gold["deleted"] is True and gold["default"] is False
    assert gold["description"] == "b"
    assert gold["version"] == s["delete"]["version"]
    assert gold["created_time"] <= gold["updated_time"]
    one = await query(nc, "_admin", "servicetypes", id=s["gold"]["id"], deleted=None)
    assert [i["id"] for i in one["items"]] == [s["gold"]["id"]]


async def test_audit_log_has_one_row_per_event_with_who_what_and_a_readable_change(
    service: CommandService, projector: str, nc: Any, fresh_nats: NatsServer
) -> None:
    s = await scenario(nc)
    await query(nc, "_admin", "audit", min_seq=s["delete"]["seq"])
    rows = await query_all(nc, "_admin", "audit", limit=3)
    stream = await event_messages(fresh_nats.url)
    assert [r["seq"] for r in rows] == [m["seq"] for m in stream]
    assert [r["type"] for r in rows] == [m["headers"]["Splice-Topic"] for m in stream]
    update = [r for r in rows if r["type"] == "ServiceTypeUpdated"]
    assert len(update) == 1
    u = update[0]
    assert u["summary"] == "service type gold updated: description 'a' → 'b'"
    assert u["changes"] == {"description": ["a", "b"]}
    assert u["actor"] == "carol"
    assert u["command_id"] == s["update"]["command_id"]
    assert u["aggregate"] == "servicetype" and u["aggregate_id"] == s["gold"]["id"]
    assert u["tenant"] == "_admin" and u["seq"] == s["update"]["seq"]
    created = [r for r in rows if r["type"] == "ServiceTypeCreated"]
    assert created[0]["summary"] == (
        "service type gold created: loadbalancer=haproxy, description 'a'")
    by_bob = await query_all(nc, "_admin", "audit", actor="bob")
    assert by_bob and {r["actor"] for r in by_bob} == {"bob"}
    deletes = await query_all(nc, "_admin", "audit", type="ServiceTypeDeleted")
    assert [r["aggregate_id"] for r in deletes] == [s["gold"]["id"]]
    t0 = u["time"]
    since = await query_all(nc, "_admin", "audit", since=t0)
    assert since[0]["seq"] == u["seq"] and all(r["time"] >= t0 for r in since)
    before = await query_all(nc, "_admin", "audit", until=t0)
    assert before and all(r["seq"] < u["seq"] for r in before)


async def test_each_tenant_sees_only_its_own_rows_and_reads_service_types(
    service: CommandService, projector: str, nc: Any
) -> None:
    s = await scenario(nc)
    await query(nc, "_admin", "audit", min_seq=s["delete"]["seq"])
    acme_audit = await query(nc, "acme", "audit")
    assert acme_audit == {"ok": True, "items": [], "next": None, "position": acme_audit["position"]}
    acme_types = await query(nc, "acme", "servicetypes")
    assert [i["name"] for i in acme_types["items"]] == ["silver"]
    forbidden = await query(nc, "acme", "audit", tenant="_admin")
    assert forbidden["error"]["code"] == "forbidden" and forbidden["error"]["field"] == "$.tenant"
    only_admin = await query(nc, "_admin", "audit", tenant="_admin")
    assert only_admin["items"] and {i["tenant"] for i in only_admin["items"]} == {"_admin"}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("subject", "body", "code", "field"),
    [
        ("splice.qry._admin.audit", {"limit": 0}, "invalid", "$.limit"),
        ("splice.qry._admin.audit", {"limit": "10"}, "invalid", "$.limit"),
        ("splice.qry._admin.audit", {"offset": -1}, "invalid", "$.offset"),
        ("splice.qry._admin.audit", {"cursor": "%%%"}, "invalid", "$.cursor"),
        ("splice.qry._admin.audit", {"nosuch": 1}, "invalid", "$.nosuch"),
        ("splice.qry._admin.audit", {"since": "yesterday"}, "invalid", "$.since"),
        ("splice.qry._admin.audit", {"actor": 5}, "invalid", "$.actor"),
        ("splice.qry._admin.audit", [1], "invalid", "$"),
        ("splice.qry._admin.servicetypes", {"default": "yes"}, "invalid", "$.default"),
        ("splice.qry._admin.servicetypes", {"tenant": "acme"}, "invalid", "$.tenant"),
        ("splice.qry._admin.audit", {"tenant": "acme\n"}, "invalid", "$.tenant"),
        ("splice.qry._admin.audit", {"x": nested(200)}, "invalid", "$"),
        ("splice.qry._admin.nosuch", {}, "not_found", "subject"),
        ("splice.qry.a.b.c", {}, "invalid", "subject"),
    ],
)
async def test_bad_queries_get_a_structured_error_naming_the_field(
    projector: str, nc: Any, subject: str, body: Any, code: str, field: str
) -> None:
    reply = await request(nc, subject, body)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["field"] == field, reply
    assert reply["error"]["message"]


async def test_pages_by_cursor_and_by_offset_cover_every_row_once(
    service: CommandService, projector: str, nc: Any
) -> None:
    replies = [
        await command(nc, CREATE, name=f"t{i:02d}", providers={"loadbalancer": "haproxy"})
        for i in range(23)
    ]
    await query(nc, "_admin", "servicetypes", min_seq=replies[-1]["seq"])
    by_cursor = await query_all(nc, "_admin", "servicetypes", limit=5)
    assert [i["name"] for i in by_cursor] == [f"t{i:02d}" for i in range(23)]
    by_offset = []
    for offset in range(0, 30, 10):
        page = await query(nc, "_admin", "servicetypes", limit=10, offset=offset)
        by_offset.extend(page["items"])
    assert by_offset == by_cursor
