"""The command path end to end: a plain NATS client, the command service, JetStream.

Every test runs its own nats-server (free port, temporary store) and talks to the service the
way any NATS client would: JSON requests on splice.cmd.<tenant>.<aggregate>.<verb>.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from helpers import event_messages, request, stream_messages

from splice.natsserver import NatsServer
from splice.services.service import CommandService

CREATE = "splice.cmd._admin.servicetype.create"
UPDATE = "splice.cmd._admin.servicetype.update"
SET_DEFAULT = "splice.cmd._admin.servicetype.set_default"
DELETE = "splice.cmd._admin.servicetype.delete"


@pytest.fixture
async def service(fresh_nats: NatsServer) -> AsyncIterator[CommandService]:
    svc = CommandService(fresh_nats.url)
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def nc(fresh_nats: NatsServer) -> AsyncIterator[Any]:
    conn = await nats.connect(fresh_nats.url)
    yield conn
    await conn.close()


def st(name: str, **kw: Any) -> dict[str, Any]:
    body = {
        "command_id": str(uuid.uuid4()),
        "actor": "tester",
        "name": name,
        "providers": {"loadbalancer": "haproxy"},
    }
    body.update(kw)
    return body


async def test_plain_client_command_is_answered_and_its_event_is_in_the_stream(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    cid = str(uuid.uuid4())
    body = {
        "command_id": cid,
        "actor": "alice",
        "correlation_id": "ticket-42",
        "name": "gold",
        "description": "haproxy LB",
        "providers": {"loadbalancer": "haproxy"},
    }
    reply = await request(nc, CREATE, body)
    assert reply["ok"] is True
    assert reply["command_id"] == cid
    assert reply["version"] >= 1
    uuid.UUID(reply["id"])

    js = nc.jetstream()
    msg = await js.get_msg("SPLICE_EVENTS", reply["seq"], direct=True)
    assert msg.subject.startswith(f"splice.evt._admin.servicetype.{reply['id']}.")
    events = [m for m in await event_messages(fresh_nats.url) if reply["id"] in m["subject"]]
    created = [m for m in events if m["headers"]["Splice-Topic"] == "ServiceTypeCreated"]
    assert len(created) == 1
    payload = created[0]["payload"]
    assert payload["name"] == "gold"
    assert payload["providers"] == {"loadbalancer": "haproxy"}
    assert payload["actor"] == "alice"
    assert payload["command_id"] == cid
    assert payload["correlation_id"] == "ticket-42"
    assert payload["schema"] == 1
    assert created[0]["headers"]["Splice-Actor"] == "alice"
    assert created[0]["headers"]["Splice-Command-Id"] == cid


HOSTILE = [
    "gold\nbind :80",
    "gold # comment",
    "gold{",
    "'; DROP TABLE x; --",
    "../../etc/passwd",
    "gold\r\nbackend evil",
    "",
    "x" * 65,
    "ünïcode",
]


def create_body(**field: Any) -> dict[str, Any]:
    """The servicetype.create body of a valid type, but for `field` (the table sets one it refuses)."""
    return {"name": "ok", "providers": {"loadbalancer": "haproxy"}, **field}


BAD_INPUTS: list[tuple[str, bytes | dict[str, Any], str, str]] = [
    (CREATE, b"{not json", "invalid", "$"),
    (CREATE, b"", "invalid", "$"),
    (CREATE, b"[1, 2]", "invalid", "$"),
    (CREATE, create_body(name=5), "invalid", "$.name"),
    (CREATE, {"name": "ok"}, "invalid", "$.providers"),
    (CREATE, create_body(providers={}), "invalid", "$.providers"),
    (CREATE, create_body(providers={"router": "x"}), "invalid", "$.providers"),
    (CREATE, create_body(providers={"loadbalancer": "HA proxy"}), "invalid", "$.providers[...]"),
    (CREATE, create_body(default="yes"), "invalid", "$.default"),
    (CREATE, create_body(description="a\nb"), "invalid", "$.description"),
    (CREATE, create_body(description="d" * 256), "invalid", "$.description"),
    (CREATE, create_body(command_id="a b"), "invalid", "$.command_id"),
    (CREATE, create_body(actor="x\ny"), "invalid", "$.actor"),
    *[(CREATE, create_body(name=h), "invalid", "$.name") for h in HOSTILE],
    (UPDATE, {"id": "not-a-uuid"}, "invalid", "$.id"),
    (UPDATE, {"id": str(uuid.uuid4())}, "not_found", "$.id"),
    (DELETE, {"id": str(uuid.uuid4())}, "not_found", "$.id"),
    (SET_DEFAULT, {}, "invalid", "$.id"),
    ("splice.cmd._admin.servicetype.explode", {}, "invalid", "subject"),
    ("splice.cmd._admin.nosuch.create", {}, "invalid", "subject"),
    ("splice.cmd.acme.servicetype.create", st("ok"), "forbidden", "subject"),
    ("splice.cmd.ACME!.servicetype.create", st("ok"), "invalid", "subject"),
    (
        CREATE,
        b'{"name": "big", "providers": {"loadbalancer": "haproxy"}, "description": "'
        + b"x" * 70_000
        + b'"}',
        "invalid",
        "$",
    ),
    # Python's `$` matches before a final newline, ECMA-262's does not: refused everywhere
    (CREATE, st("gold\n"), "invalid", "$.name"),
    (CREATE, st("ok", actor="alice\n"), "invalid", "$.actor"),
    (CREATE, st("ok", command_id="x\n"), "invalid", "$.command_id"),
    (CREATE, st("ok", description="free text\n"), "invalid", "$.description"),
    (CREATE, st("ok", providers={"loadbalancer": "haproxy\n"}), "invalid", "$.providers[...]"),
    ("splice.cmd._admin.quota.set", {"tenant": "acme\n", "limits": {}}, "invalid", "$.tenant"),
    # Python's `\d` is Unicode; the contracts' digits are ASCII only
    ("splice.cmd.acme.network.create", {"name": "n", "cidr": "1\u0660.0.0.0/24"}, "invalid",
     "$.cidr"),
    ("splice.cmd.acme.firewall.create",
     {"name": "f", "rules": [{"action": "allow", "destination_port": "\u0668\u0660"}]},
     "invalid", "$.rules[0].destination_port"),
    ("splice.cmd.acme.firewall.create",
     {"name": "f", "rules": [{"action": "allow", "source_port": "\uff11\uff10\uff12\uff14"}]},
     "invalid", "$.rules[0].source_port"),
    # unknown fields are named, at any depth
    (CREATE, st("ok", nmae="typo"), "invalid", "$.nmae"),
    ("splice.cmd.acme.firewall.create",
     {"name": "f", "rules": [{"action": "allow", "protcol": "tcp"}]}, "invalid",
     "$.rules[0].protcol"),
    # nesting: refused before decoding, whatever the depth
    (CREATE, b'{"name": "ok", "providers": {"loadbalancer": "haproxy"}, "x": '
     + b"[" * 1000 + b"]" * 1000 + b"}", "invalid", "$"),
    (CREATE, b'{"x": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", "invalid", "$"),
]


async def test_bad_input_gets_structured_error_naming_the_field_and_appends_nothing(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    for subject, body, code, field in BAD_INPUTS:
        reply = await request(nc, subject, body)
        assert reply["ok"] is False, (subject, body)
        assert reply["error"]["code"] == code, (subject, body, reply)
        assert reply["error"]["field"] == field, (subject, body, reply)
        assert reply["error"]["message"]
        assert "Traceback" not in reply["error"]["message"]
        sent_id = body.get("command_id") if isinstance(body, dict) else None
        if isinstance(sent_id, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", sent_id):
            assert reply["command_id"] == sent_id, (subject, body, reply)  # echoed when readable
    assert await stream_messages(fresh_nats.url) == []
    # and the service still works afterwards
    assert (await request(nc, CREATE, st("after")))["ok"] is True


async def test_same_command_id_has_one_effect_and_the_same_reply_also_after_restart(
    fresh_nats: NatsServer, nc: Any
) -> None:
    body = st("idem")
    svc = CommandService(fresh_nats.url)
    await svc.start()
    try:
        first = await request(nc, CREATE, body)
        # sent again, and sent concurrently several times
        again = await asyncio.gather(*[request(nc, CREATE, body) for _ in range(8)])
    finally:
        await svc.stop()
    assert first["ok"] is True
    assert all(r == first for r in again)

    svc2 = CommandService(fresh_nats.url)  # a new process would start with nothing cached
    await svc2.start()
    try:
        after_restart = await request(nc, CREATE, body)
    finally:
        await svc2.stop()
    assert after_restart == first
    created = [
        m
        for m in await event_messages(fresh_nats.url)
        if m["headers"]["Splice-Topic"] == "ServiceTypeCreated"
    ]
    assert len(created) == 1


async def test_concurrent_duplicates_of_a_new_command_id_have_one_effect(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    body = st("racing")
    replies = await asyncio.gather(*[request(nc, CREATE, body) for _ in range(12)])
    assert all(r["ok"] for r in replies), replies
    assert len({json.dumps(r, sort_keys=True) for r in replies}) == 1
    created = [
        m
        for m in await event_messages(fresh_nats.url)
        if m["headers"]["Splice-Topic"] == "ServiceTypeCreated"
    ]
    assert len(created) == 1


async def test_command_id_reused_for_another_command_is_a_conflict(
    service: CommandService, nc: Any
) -> None:
    body = st("first")
    assert (await request(nc, CREATE, body))["ok"]
    other = dict(body, name="second")
    reply = await request(
        nc,
        "splice.cmd._admin.servicetype.delete",
        {"command_id": body["command_id"], "id": str(uuid.uuid4())},
    )
    assert reply["ok"] is False
    assert reply["error"]["code"] == "conflict"
    assert reply["error"]["field"] == "command_id"
    # same subject, same id: the first reply, even with another body (the id is the key)
    assert (await request(nc, CREATE, other))["id"] == (await request(nc, CREATE, body))["id"]


def fold_service_types(events: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], str]:
    """Rebuild service types and the default from the raw stream, as any reader could."""
    types: dict[str, dict[str, Any]] = {}
    current = ""
    for m in events:
        t = m["headers"]["Splice-Topic"]
        agg = m["subject"].split(".")[4]
        p = m["payload"]
        if t == "ServiceTypeCreated":
            types[agg] = {"name": p["name"], "default": False, "deleted": False, "version": 1}
        elif t == "ServiceTypeDefaultSet":
            types[agg]["default"] = True
        elif t == "ServiceTypeDefaultCleared":
            types[agg]["default"] = False
        elif t == "ServiceTypeDeleted":
            types[agg]["deleted"] = True
        elif t == "DefaultServiceTypeChanged":
            assert p["previous_id"] == current, "a default change was lost or reordered"
            current = p["service_type_id"]
    return types, current


async def test_concurrent_set_default_leaves_exactly_one_default_explained_by_a_serial_order(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    ids = [(await request(nc, CREATE, st(f"t{i}")))["id"] for i in range(6)]
    targets = [ids[i % len(ids)] for i in range(48)]
    replies = await asyncio.gather(
        *[request(nc, SET_DEFAULT, {"command_id": str(uuid.uuid4()), "id": t}) for t in targets]
    )
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]]
    types, current = fold_service_types(await event_messages(fresh_nats.url))
    defaults = [k for k, v in types.items() if v["default"]]
    assert len(defaults) == 1
    assert current.endswith(defaults[0])


async def test_concurrent_creates_with_one_name_let_exactly_one_through(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    replies = await asyncio.gather(*[request(nc, CREATE, st("same")) for _ in range(16)])
    oks = [r for r in replies if r["ok"]]
    assert len(oks) == 1
    assert {r["error"]["code"] for r in replies if not r["ok"]} == {"name_taken"}
    assert all(r["error"]["field"] == "$.name" for r in replies if not r["ok"])
    types, _ = fold_service_types(await event_messages(fresh_nats.url))
    assert [v["name"] for v in types.values()] == ["same"]


async def test_concurrent_updates_of_one_type_lose_no_update(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    created = await request(nc, CREATE, st("busy"))
    n = 30
    replies = await asyncio.gather(
        *[
            request(
                nc,
                UPDATE,
                {"command_id": str(uuid.uuid4()), "id": created["id"], "description": f"d{i}"},
            )
            for i in range(n)
        ]
    )
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]]
    versions = sorted(r["version"] for r in replies)
    assert versions == list(range(created["version"] + 1, created["version"] + n + 1))
    updates = [
        m
        for m in await event_messages(fresh_nats.url)
        if m["headers"]["Splice-Topic"] == "ServiceTypeUpdated"
    ]
    assert sorted(m["payload"]["description"] for m in updates) == sorted(f"d{i}" for i in range(n))


async def test_first_type_is_default_and_the_default_cannot_be_deleted(
    service: CommandService, nc: Any
) -> None:
    a = await request(nc, CREATE, st("a"))
    b = await request(nc, CREATE, st("b"))
    refused = await request(nc, DELETE, {"id": a["id"]})
    assert refused["ok"] is False
    assert refused["error"]["code"] == "default_required"
    assert (await request(nc, SET_DEFAULT, {"id": b["id"]}))["ok"]
    assert (await request(nc, DELETE, {"id": a["id"]}))["ok"]
    # the name is free again, and a deleted type is gone
    assert (await request(nc, CREATE, st("a")))["ok"]
    gone = await request(nc, UPDATE, {"id": a["id"], "description": "x"})
    assert gone["error"]["code"] == "not_found"


async def test_two_replicas_in_the_queue_group_share_the_load(
    fresh_nats: NatsServer, nc: Any
) -> None:
    s1, s2 = CommandService(fresh_nats.url), CommandService(fresh_nats.url)
    await s1.start()
    await s2.start()
    try:
        replies = await asyncio.gather(*[request(nc, CREATE, st(f"q{i}")) for i in range(60)])
    finally:
        await s1.stop()
        await s2.stop()
    assert all(r["ok"] for r in replies)
    assert s1.handled > 0 and s2.handled > 0
    assert s1.handled + s2.handled == 60


async def test_a_repeated_one_event_change_has_one_effect_and_the_same_reply_also_after_restart(
    fresh_nats: NatsServer, nc: Any
) -> None:
    """One-event changes skip the claim message: the aggregate itself remembers the command."""
    svc = CommandService(fresh_nats.url)
    await svc.start()
    try:
        created = await request(nc, CREATE, st("mem"))
        body = {"command_id": str(uuid.uuid4()), "id": created["id"], "description": "once"}
        first = await request(nc, UPDATE, body)
        again = await asyncio.gather(*[request(nc, UPDATE, body) for _ in range(6)])
        # another change in between: the repeat still answers as the first time
        await request(nc, UPDATE, {"command_id": str(uuid.uuid4()), "id": created["id"],
                                   "description": "later"})
        later = await request(nc, UPDATE, body)
    finally:
        await svc.stop()
    svc2 = CommandService(fresh_nats.url)
    await svc2.start()
    try:
        after_restart = await request(nc, UPDATE, body)
    finally:
        await svc2.stop()
    assert first["ok"]
    for r in [*again, later, after_restart]:
        assert r == first, (r, first)
    updates = [m for m in await event_messages(fresh_nats.url)
               if m["headers"]["Splice-Topic"] == "ServiceTypeUpdated"]
    assert [m["payload"]["description"] for m in updates] == ["once", "later"]
    assert not [m for m in await stream_messages(fresh_nats.url)
                if m["subject"] == f"splice.idem._admin.{body['command_id']}"]


async def test_an_update_that_changes_nothing_appends_nothing_and_answers_the_current_version(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    created = await request(nc, CREATE, st("same", description="d"))
    changed = await request(nc, UPDATE, {"id": created["id"], "description": "e"})
    assert changed["ok"] is True and changed["version"] == created["version"] + 1
    before = len(await stream_messages(fresh_nats.url))
    again = await request(nc, UPDATE, {"id": created["id"], "description": "e"})
    assert again["ok"] is True, again
    assert (again["version"], again["seq"]) == (changed["version"], None)
    assert len(await stream_messages(fresh_nats.url)) == before
    # a repeat of the change itself still gets its first answer
    body = {"command_id": str(uuid.uuid4()), "id": created["id"], "description": "f"}
    first = await request(nc, UPDATE, body)
    assert await request(nc, UPDATE, body) == first


@pytest.mark.trust
async def test_a_command_id_is_scoped_to_its_tenant_also_on_shared_aggregates(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    """t2 sending the command id t1 used for loadbalancer.create creates t2's load balancer.

    Both creates change the admin's service type (it counts its users) and the host registry:
    what those shared aggregates remember of t1's command must not answer t2's.
    """
    st_reply = await request(nc, CREATE, st("shared-lb"))
    assert st_reply["ok"] is True
    reg = {"command_id": str(uuid.uuid4()), "actor": "agent", "host": "h1", "providers": ["haproxy"]}
    assert (await request(nc, "splice.cmd._host.host.register", reg))["ok"] is True
    nets = {}
    for tenant in ("t1", "t2"):
        net = {"command_id": str(uuid.uuid4()), "actor": "it", "name": "web", "cidr": "10.20.0.0/24"}
        nets[tenant] = await request(nc, f"splice.cmd.{tenant}.network.create", net)
        assert nets[tenant]["ok"] is True, nets[tenant]
    same = str(uuid.uuid4())

    def lb(tenant: str) -> dict[str, Any]:
        return {"command_id": same, "actor": "it", "name": "lb", "vip_network_id": nets[tenant]["id"],
                "service_type_id": st_reply["id"]}

    first = await request(nc, "splice.cmd.t1.loadbalancer.create", lb("t1"))
    assert first["ok"] is True, first
    theirs = await request(nc, "splice.cmd.t2.loadbalancer.create", lb("t2"))
    assert theirs["ok"] is True, theirs
    assert theirs["id"] not in (first["id"], st_reply["id"])
    # a repeat of each tenant's command gets that tenant's first reply
    assert await request(nc, "splice.cmd.t2.loadbalancer.create", lb("t2")) == theirs
    assert await request(nc, "splice.cmd.t1.loadbalancer.create", lb("t1")) == first
    events = await event_messages(fresh_nats.url)
    created = [m for m in events if m["headers"]["Splice-Topic"] == "LoadBalancerCreated"]
    assert sorted(m["subject"].split(".")[2] for m in created) == ["t1", "t2"]
    assert any(m["subject"].startswith(f"splice.evt.t2.loadbalancer.{theirs['id']}.") for m in created)
    used = [m["payload"] for m in events if m["headers"]["Splice-Topic"] == "ServiceTypeUsed"]
    assert [(p["command_id"], p["command_tenant"]) for p in used] == [(same, "t1"), (same, "t2")]


@pytest.mark.trust
async def test_a_one_event_change_on_a_shared_aggregate_is_not_taken_for_another_tenants_command(
    service: CommandService, nc: Any, fresh_nats: NatsServer
) -> None:
    """A tenant's quota is changed by its own creates and by the admin's quota.set."""
    same = str(uuid.uuid4())
    net = {"command_id": same, "actor": "it", "name": "a", "cidr": "10.1.0.0/24"}
    assert (await request(nc, "splice.cmd.t1.network.create", net))["ok"] is True
    limits = {"command_id": same, "actor": "admin", "tenant": "t1", "limits": {"network": 1}}
    set_reply = await request(nc, "splice.cmd._admin.quota.set", limits)
    assert set_reply["ok"] is True, set_reply
    assert await request(nc, "splice.cmd._admin.quota.set", limits) == set_reply
    set_events = [m for m in await event_messages(fresh_nats.url)
                  if m["headers"]["Splice-Topic"] == "QuotaLimitsSet"]
    assert [m["payload"]["command_tenant"] for m in set_events] == ["_admin"]
    # the limit was set: t1's next network is over it
    more = {"command_id": str(uuid.uuid4()), "actor": "it", "name": "b", "cidr": "10.2.0.0/24"}
    over = await request(nc, "splice.cmd.t1.network.create", more)
    assert over["ok"] is False and over["error"]["code"] == "quota_exceeded", over
