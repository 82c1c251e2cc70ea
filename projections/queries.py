"""Queries over NATS: request/reply on ``splice.qry.<tenant>.<view>``.

Body (JSON object, every key optional)::

    {"limit": 100, "cursor": "…" | "offset": 0, "min_seq": 1234, "tenant": "acme",
     <the view's filters>: value, ...}

Reply: ``{"ok": true, "items": [...], "next": "<cursor>" | null, "position": <seq>}`` or
``{"ok": false, "error": {"code", "message", "field"}}`` naming the offending field as a JSON
path (``$.limit``) or ``subject``.

* A filter given as null is no filter: ``{"deleted": null}`` lists deleted rows too.
* Pagination is keyset: ``next`` is an opaque cursor (the last item's sort key); pass it back as
  ``cursor``. ``offset`` is there for simple clients; a page is at most 1000 items.
* ``min_seq``: read your writes — wait (up to ``wait`` seconds, default 5) until the view has
  applied that stream sequence (a command reply's ``seq``), else answer ``unavailable``.
* Tenants: a tenant sees only rows of its own tenant. Admin-scoped views (service types)
  answer every tenant, read-only. ``_admin`` sees every tenant's rows of tenant-scoped views
  and may narrow them with ``"tenant"``; for anyone else ``tenant`` is ``forbidden``. The bus
  itself should restrict ``splice.qry.<tenant>.>`` to that tenant's credentials.
"""

# SQL text is built from table and column names declared in code (views/), never from
# input; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from splice.events import subjects
from splice.events.contracts import ADMIN_TENANT
from splice.events.natsio import settled
from splice.events.wire import MAX_DEPTH, MAX_PAYLOAD, too_deep

from .envelope import format_ns, parse_rfc3339_ns
from .schema import decode_value
from .store import Store
from .views import QUERY_VIEWS, View

log = structlog.get_logger("splice.projections")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_TENANT = re.compile(f"^{subjects.TENANT_TOKEN.pattern}$")  # one grammar with commands
_RESERVED = {"limit", "cursor", "offset", "min_seq", "wait", "tenant"}


class QueryError(Exception):
    """Bad input: becomes a structured error reply naming the field."""

    def __init__(self, code: str, message: str, field: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def reply(self) -> dict[str, Any]:
        return {
            "ok": False,
            "error": {"code": self.code, "message": self.message, "field": self.field},
        }


@dataclass
class Query:
    view: View
    tenant: str
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    after: list[Any] | None = None
    filters: dict[str, Any] = field(default_factory=dict)  # filter name -> value
    only_tenant: str | None = None  # rows of this tenant only (None: all)
    min_seq: int = 0
    wait: float = 5.0


def parse_subject(subject: str) -> tuple[str, View]:
    parts = subjects.parse_query(subject)
    if parts is None or not subjects.TENANT_TOKEN.fullmatch(parts.tenant):
        raise QueryError("invalid", "expected splice.qry.<tenant>.<view>", "subject")
    view = QUERY_VIEWS.get(parts.view)
    if view is None:
        raise QueryError(
            "not_found", f"no view {parts.view!r}; views: {', '.join(QUERY_VIEWS)}", "subject"
        )
    return parts.tenant, view


def _int(body: dict[str, Any], key: str, lo: int, hi: int | None, default: int) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise QueryError("invalid", f"Expected `int`, got `{type(value).__name__}`", f"$.{key}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise QueryError("invalid", f"Expected `int` {bound}", f"$.{key}")
    return value


def _filter_value(view: View, name: str, value: Any) -> Any:
    flt = view.filters[name]
    col = view.table().column(flt.column)
    where = f"$.{name}"
    if col.type == "time":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return parse_rfc3339_ns(value)
            except ValueError:
                pass
        raise QueryError("invalid", "Expected an RFC 3339 time or nanoseconds", where)
    if flt.type is bool:
        if not isinstance(value, bool):
            raise QueryError("invalid", f"Expected `bool`, got `{type(value).__name__}`", where)
        return value
    if flt.type is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise QueryError("invalid", f"Expected `int`, got `{type(value).__name__}`", where)
        return value
    if not isinstance(value, str):
        raise QueryError("invalid", f"Expected `str`, got `{type(value).__name__}`", where)
    if len(value) > 256 or any(ord(ch) < 32 for ch in value):
        raise QueryError("invalid", "Expected printable text of at most 256 chars", where)
    return value


def decode_cursor(cursor: Any, view: View) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, AttributeError, TypeError) as e:
        raise QueryError("invalid", f"not a cursor this service gave: {e}", "$.cursor") from e
    if not isinstance(values, list) or len(values) != len(view.order_by):
        raise QueryError("invalid", "not a cursor this service gave", "$.cursor")
    return values


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def parse_query(tenant: str, view: View, body: Any) -> Query:
    """Validate a request body against the view; raises QueryError naming the field."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise QueryError("invalid", "Expected a JSON object", "$")
    q = Query(view=view, tenant=tenant)
    q.limit = _int(body, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    q.offset = _int(body, "offset", 0, None, 0)
    q.min_seq = _int(body, "min_seq", 0, None, 0)
    q.wait = float(_int(body, "wait", 0, 30, 5))
    if "cursor" in body and body["cursor"] is not None:
        if q.offset:
            raise QueryError("invalid", "give either cursor or offset, not both", "$.cursor")
        q.after = decode_cursor(body["cursor"], view)
    if view.scope == "tenant":
        q.only_tenant = None if tenant == ADMIN_TENANT else tenant
        if "tenant" in body:
            if tenant != ADMIN_TENANT:
                raise QueryError("forbidden", "only _admin may query another tenant", "$.tenant")
            if not isinstance(body["tenant"], str) or not _TENANT.fullmatch(body["tenant"]):
                raise QueryError("invalid", "Expected a tenant token", "$.tenant")
            q.only_tenant = body["tenant"]
    elif "tenant" in body:
        raise QueryError("invalid", f"{view.name} is not tenant-scoped", "$.tenant")
    for key, value in body.items():
        if key in _RESERVED:
            continue
        if key not in view.filters:
            known = ", ".join(sorted(view.filters)) or "none"
            raise QueryError("invalid", f"unknown filter {key!r}; filters: {known}", f"$.{key}")
        if value is not None:
            q.filters[key] = _filter_value(view, key, value)
    for key, value in view.defaults.items():
        if key not in body:  # an explicit null lifts a default filter ("deleted": null)
            q.filters[key] = value
    return q


def build_sql(q: Query, ph: str) -> tuple[str, list[Any]]:
    """The page's SELECT: filters, tenant, keyset cursor, order, limit + 1 (to know `next`)."""
    view = q.view
    table = view.table()
    where: list[str] = []
    params: list[Any] = []
    if q.only_tenant is not None:
        where.append(f"tenant = {ph}")
        params.append(q.only_tenant)
        if view.tenant_prefix:  # "<tenant>." <= key < "<tenant>/": a range on the key's index
            where.append(f"{view.tenant_prefix} >= {ph} AND {view.tenant_prefix} < {ph}")
            params.extend([f"{q.only_tenant}.", f"{q.only_tenant}/"])
    for column, value in view.fixed.items():
        where.append(f"{column} = {ph}")
        params.append(value)
    for name, value in q.filters.items():
        flt = view.filters[name]
        if flt.op == "contains":
            where.append(f"{flt.column} LIKE {ph} ESCAPE '!'")
            escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
            params.append(f'%"{escaped}"%')
        else:
            where.append(f"{flt.column} {flt.op} {ph}")
            params.append(value)
    if q.after is not None:
        cols = ", ".join(view.order_by)
        marks = ", ".join([ph] * len(view.order_by))
        where.append(f"({cols}) > ({marks})")
        params.extend(q.after)
    sql = f"SELECT {', '.join(table.column_names)} FROM {table.name}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {', '.join(view.order_by)} LIMIT {q.limit + 1}"
    if q.offset:
        sql += f" OFFSET {q.offset}"
    return sql, params


def shape(view: View, row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as an answer item: JSON decoded, times in RFC 3339, renamed, hidden dropped."""
    item: dict[str, Any] = {}
    for col, value in zip(view.table().columns, row, strict=True):
        if col.name in view.hidden:
            continue
        v = decode_value(col, value)
        if col.type == "time" and v is not None:
            v = format_ns(int(v))
        item[view.rename.get(col.name, col.name)] = v
    return item


def run_query(store: Store, q: Query) -> dict[str, Any]:
    sql, params = build_sql(q, store.ph)
    rows = store.select(sql, params)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    items = [shape(q.view, r) for r in rows]
    nxt = None
    if more:
        names = q.view.table().column_names
        last = rows[-1]
        nxt = encode_cursor([last[names.index(c)] for c in q.view.order_by])
    return {"ok": True, "items": items, "next": nxt}


class QueryService:
    """Answers ``splice.qry.>`` from the store.

    Queries run concurrently: each request is a task (at most `max_in_flight`; past that, an
    immediate `unavailable` to retry), its SQL on a small thread pool, and a query waiting for
    `min_seq` holds no thread. A page too big for one NATS message is cut to fit (fewer items
    and a `next` cursor); a single row too big for it is refused with a hint.
    """

    def __init__(
        self,
        nc: Any,
        store: Store,
        position: Callable[[str], int],
        queue: str = "splice-query",
        max_in_flight: int = 64,
    ) -> None:
        self.nc = nc
        self.store = store
        self.position = position
        self.queue = queue
        self.max_in_flight = max_in_flight
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="splice-query")
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.QUERIES, queue=self.queue, cb=self._on)
        await settled(self.nc)  # queries are routed here once `start` returns

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: S110 - connection already closing
                pass
            self._sub = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._pool.shutdown(wait=True)

    async def _on(self, msg: Any) -> None:
        """Called one message at a time by nats-py: hand each to a task of its own."""
        if len(self._tasks) >= self.max_in_flight:
            busy = QueryError("unavailable", f"{len(self._tasks)} queries in flight: retry in "
                              "a moment (about 0.1 s)", None)
            await self._send(msg, busy.reply())
            return
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Any) -> None:
        try:
            parts = subjects.parse_query(msg.subject)
            sender = subjects.sender_of(msg.headers)
            if parts is not None and not sender.may_query(parts.tenant):
                reply = QueryError("forbidden", f"account {sender.account} may not query "
                                   f"{parts.tenant}'s views", "subject").reply()
            else:
                reply = await self.answer(msg.subject, msg.data)
        except Exception:  # every query gets a reply; the error goes to the log only
            log.exception("query failed unexpectedly", subject=msg.subject)
            reply = QueryError("internal", "the query failed; see the projector's log",
                               None).reply()
        await self._send(msg, reply)

    async def _send(self, msg: Any, reply: dict[str, Any]) -> None:
        if not msg.reply:
            return
        try:
            await self.nc.publish(msg.reply, json.dumps(reply).encode())
        except Exception as e:  # connection lost: the client retries
            log.warning("query reply not sent", subject=msg.subject, error=str(e))

    def _fits(self, reply: dict[str, Any]) -> bool:
        limit = int(getattr(self.nc, "max_payload", 0) or 1024 * 1024)
        return len(json.dumps(reply).encode()) <= limit - 1024  # room for headers

    async def answer(self, subject: str, data: bytes) -> dict[str, Any]:
        try:
            tenant, view = parse_subject(subject)
            if len(data) > MAX_PAYLOAD:
                raise QueryError("invalid", f"query of {len(data)} bytes exceeds {MAX_PAYLOAD}", "$")
            if too_deep(data, MAX_DEPTH):
                raise QueryError("invalid", f"JSON nested deeper than {MAX_DEPTH} levels", "$")
            try:
                body = json.loads(data) if data.strip() else {}
            except ValueError as e:
                raise QueryError("invalid", f"malformed JSON: {e}", "$") from e
            q = parse_query(tenant, view, body)
            position = await self._caught_up(q)
            loop = asyncio.get_running_loop()
            while True:
                reply = await loop.run_in_executor(self._pool, run_query, self.store, q)
                reply["position"] = position
                if self._fits(reply):
                    return reply
                if len(reply["items"]) <= 1:
                    raise QueryError("invalid", "one row is bigger than a NATS message: "
                                     "narrow the query with a filter", "$.limit")
                q.limit = len(reply["items"]) // 2  # a smaller page, with `next` to the rest
        except QueryError as e:
            return e.reply()
        except Exception:
            log.exception("query failed", subject=subject)
            return QueryError("internal", "the query failed; see the projector's log", None).reply()

    async def _caught_up(self, q: Query) -> int:
        """Wait until the view has applied `min_seq` (polling with a deadline)."""
        name = q.view.projected_by or q.view.name
        deadline = time.monotonic() + q.wait
        while True:
            pos = self.position(name)
            if pos >= q.min_seq:
                return pos
            if time.monotonic() >= deadline:
                raise QueryError(
                    "unavailable",
                    f"the read model is at seq {pos}, not yet at {q.min_seq}",
                    "$.min_seq",
                )
            await asyncio.sleep(0.01)
