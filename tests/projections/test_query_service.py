"""The query service under load: one slow query blocks no other, and a page too big for one
NATS message is cut to fit (fewer items and a cursor), never dropped. Real nats-server, real
command service and projector (SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from qhelp import CREATE, command, query, request

from splice.natsserver import NatsServer
from splice.projections.runner import run_projector
from splice.services.service import CommandService
from tests.projections.conftest import wait_for_responder


@pytest.fixture
async def small_world(tmp_path: Path) -> AsyncIterator[Any]:
    """A server whose messages are at most 16 KiB, with the command service and the projector."""
    server = NatsServer(store_dir=tmp_path / "nats", max_payload="16KB").start()
    svc = CommandService(server.url)
    await svc.start()
    nc = await nats.connect(server.url)
    stop = asyncio.Event()
    task = asyncio.create_task(run_projector(server.url, str(tmp_path / "rm.sqlite"), stop))
    try:
        await wait_for_responder(nc, "splice.qry._admin.servicetypes")
        yield nc
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
        await nc.close()
        await svc.stop()
        server.stop()


@pytest.mark.trust
async def test_a_query_waiting_for_its_write_blocks_no_other_query(small_world: Any) -> None:
    nc = small_world
    await command(nc, CREATE, name="gold", providers={"loadbalancer": "haproxy"})
    slow = asyncio.create_task(query(nc, "_admin", "servicetypes", min_seq=10**9, wait=3))
    await asyncio.sleep(0)  # the slow one is sent first
    started = time.monotonic()
    fast = await query(nc, "_admin", "servicetypes")
    assert fast["ok"] is True and time.monotonic() - started < 1.5
    assert not slow.done()
    waited = await slow
    assert waited["ok"] is False and waited["error"]["code"] == "unavailable"
    assert waited["error"]["field"] == "$.min_seq"


@pytest.mark.trust
async def test_a_page_too_big_for_one_message_is_cut_to_fit_and_the_cursor_reaches_the_rest(
    small_world: Any,
) -> None:
    nc = small_world
    last: dict[str, Any] = {}
    for i in range(60):
        last = await command(nc, CREATE, name=f"t{i:02d}", description="d" * 250,
                             providers={"loadbalancer": "haproxy"})
    first = await query(nc, "_admin", "servicetypes", min_seq=last["seq"], limit=1000)
    assert first["ok"] is True, first
    assert 0 < len(first["items"]) < 60 and first["next"]  # cut, with the way on
    names = [i["name"] for i in first["items"]]
    cursor = first["next"]
    while cursor:
        page = await request(nc, "splice.qry._admin.servicetypes", {"limit": 1000,
                                                                    "cursor": cursor})
        assert page["ok"] is True, page
        names += [i["name"] for i in page["items"]]
        cursor = page["next"]
    assert sorted(names) == [f"t{i:02d}" for i in range(60)]
