"""History and `state --at`, checked against a scenario with a known history.

Commands go through the command service; the sequences its replies give are the points in time
the test travels to. `splice history`, `splice state`, `splice audit`, `splice servicetype list`
and `splice projections verify` are run as the CLI, against the same server.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from qhelp import CREATE, DELETE, SET_DEFAULT, UPDATE, command, query

from splice.natsserver import NatsServer
from splice.projections.envelope import format_ns, parse_rfc3339_ns
from splice.projections.timetravel import At, history, state_at
from splice.services.service import CommandService

SPLICE = str(Path(sys.executable).parent / "splice")


@pytest.fixture
async def service(fresh_nats: NatsServer) -> AsyncIterator[CommandService]:
    svc = CommandService(fresh_nats.url)
    await svc.start()
    yield svc
    await svc.stop()


async def known_history(nc: Any) -> dict[str, Any]:
    gold = await command(
        nc, CREATE, name="gold", description="a", providers={"loadbalancer": "haproxy"}
    )
    upd = await command(nc, UPDATE, actor="carol", id=gold["id"], description="b")
    silver = await command(nc, CREATE, name="silver", providers={"firewall": "nftables"})
    dflt = await command(nc, SET_DEFAULT, id=silver["id"])
    gone = await command(nc, DELETE, id=gold["id"])
    return {"gold": gold, "update": upd, "silver": silver, "default": dflt, "delete": gone}


def st(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in state["servicetypes"] if r["name"] == name), None)


async def test_state_at_a_sequence_or_a_time_is_the_state_as_it_was_then(
    service: CommandService, nc: Any
) -> None:
    h = await known_history(nc)
    js = nc.jetstream()
    gid = h["gold"]["id"]

    at_create = await state_at(js, At(seq=h["gold"]["seq"]), resource_id=gid)
    gold = st(at_create, "gold")
    assert gold is not None and gold["description"] == "a" and gold["default"] is True
    assert at_create["at"]["seq"] <= h["gold"]["seq"]

    at_update = await state_at(js, At(seq=h["update"]["seq"]), resource_id=gid)
    assert st(at_update, "gold")["description"] == "b"  # type: ignore[index]

    # the default moves in one atomic batch: gold's DefaultCleared and silver's DefaultSet
    cleared = next(
        e["seq"] for e in await history(js, gid) if e["type"] == "ServiceTypeDefaultCleared"
    )
    became = next(
        e["seq"]
        for e in await history(js, h["silver"]["id"])
        if e["type"] == "ServiceTypeDefaultSet"
    )
    at_default = await state_at(js, At(seq=max(cleared, became)), tenant="_admin")
    assert st(at_default, "gold")["default"] is False  # type: ignore[index]
    assert st(at_default, "silver")["default"] is True  # type: ignore[index]
    assert st(at_default, "gold")["deleted"] is False  # type: ignore[index]

    now = await state_at(js, At(seq=h["delete"]["seq"]), resource_id=gid)
    assert st(now, "gold")["deleted"] is True  # type: ignore[index]

    # by time: the store time of the update event, and a nanosecond before it
    events = await history(js, gid)
    upd_time = next(e["time"] for e in events if e["type"] == "ServiceTypeUpdated")
    at_time = await state_at(js, At(time_ns=parse_rfc3339_ns(upd_time)), resource_id=gid)
    assert st(at_time, "gold")["description"] == "b"  # type: ignore[index]
    just_before = await state_at(js, At(time_ns=parse_rfc3339_ns(upd_time) - 1000), resource_id=gid)
    assert st(just_before, "gold")["description"] == "a"  # type: ignore[index]
    before_all = await state_at(
        js, At(time_ns=parse_rfc3339_ns(events[0]["time"]) - 1000), tenant="_admin"
    )
    assert before_all["servicetypes"] == [] and before_all["events"] == 0


async def test_history_lists_every_event_of_one_resource_with_what_changed(
    service: CommandService, nc: Any
) -> None:
    h = await known_history(nc)
    events = await history(nc.jetstream(), h["gold"]["id"])
    assert [e["type"] for e in events] == [
        "ServiceTypeCreated",
        "ServiceTypeDefaultSet",
        "ServiceTypeUpdated",
        "ServiceTypeDefaultCleared",
        "ServiceTypeDeleted",
    ]
    assert [e["version"] for e in events] == list(range(1, 6))
    assert all(e["aggregate_id"] == h["gold"]["id"] for e in events)
    assert events[2]["summary"] == "service type gold updated: description 'a' → 'b'"
    assert events[2]["actor"] == "carol" and events[2]["seq"] == h["update"]["seq"]
    assert events[-1]["summary"] == "service type gold deleted"
    assert await history(nc.jetstream(), "00000000-0000-0000-0000-0000000000ff") == []


async def splice_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        SPLICE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_read_verbs_answer_from_the_projector_and_the_stream(
    service: CommandService, projector: str, fresh_nats: NatsServer
) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        h = await known_history(nc)
        await query(nc, "_admin", "audit", min_seq=h["delete"]["seq"])
    finally:
        await nc.close()
    url = ["--nats-url", fresh_nats.url]
    gid = h["gold"]["id"]

    rc, out, err = await splice_cli("servicetype", "list", "-o", "json", *url)
    assert rc == 0, err
    assert [i["name"] for i in json.loads(out)] == ["silver"]
    rc, out, err = await splice_cli("servicetype", "show", gid, "-o", "json", *url)
    assert rc == 0, err
    assert json.loads(out)["deleted"] is True
    rc, out, err = await splice_cli(
        "servicetype", "show", "00000000-0000-0000-0000-000000000000", *url
    )
    assert rc == 1 and "not_found" in err

    rc, out, err = await splice_cli("audit", "-t", "_admin", "--actor", "carol", "-o", "json",
                                    *url)
    assert rc == 0, err
    assert [r["summary"] for r in json.loads(out)] == [
        "service type gold updated: description 'a' → 'b'"]
    rc, out, err = await splice_cli("audit", "--all-tenants", "--since", "yesterday", *url)
    assert rc == 1 and "$.since" in err

    rc, out, err = await splice_cli("history", gid, "-o", "json", *url)
    assert rc == 0, err
    assert len(json.loads(out)) == 5

    rc, out, err = await splice_cli("state", "--at", str(h["update"]["seq"]), "--id", gid, *url)
    assert rc == 0, err
    assert json.loads(out)["servicetypes"][0]["description"] == "b"

    rc, out, err = await splice_cli("projections", "verify", "--db", projector, "-o", "json", *url)
    assert rc == 0, out + err
    assert json.loads(out)["identical"] is True
    assert parse_rfc3339_ns(format_ns(123_456_789_012)) == 123_456_789_012
