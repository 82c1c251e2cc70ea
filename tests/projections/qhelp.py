"""Small helpers of the read-side tests (requests, queries, commands)."""

from __future__ import annotations

import json
import uuid
from typing import Any

CREATE = "splice.cmd._admin.servicetype.create"
UPDATE = "splice.cmd._admin.servicetype.update"
SET_DEFAULT = "splice.cmd._admin.servicetype.set_default"
DELETE = "splice.cmd._admin.servicetype.delete"


async def request(nc: Any, subject: str, body: Any, timeout: float = 15.0) -> dict[str, Any]:
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    return dict(json.loads(msg.data))


async def command(nc: Any, subject: str, actor: str = "alice", **body: Any) -> dict[str, Any]:
    body.setdefault("command_id", str(uuid.uuid4()))
    reply = await request(nc, subject, {"actor": actor, **body})
    assert reply["ok"], reply
    return reply


async def query(
    nc: Any, as_tenant: str, view: str, min_seq: int = 0, **body: Any
) -> dict[str, Any]:
    return await request(nc, f"splice.qry.{as_tenant}.{view}", {"min_seq": min_seq, **body})


async def query_all(nc: Any, as_tenant: str, view: str, **body: Any) -> list[dict[str, Any]]:
    """Every item, following `next` cursors."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = dict(body)
        if cursor:
            page["cursor"] = cursor
        reply = await request(nc, f"splice.qry.{as_tenant}.{view}", page)
        assert reply["ok"], reply
        items.extend(reply["items"])
        cursor = reply["next"]
        if not cursor:
            return items
