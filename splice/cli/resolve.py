"""Names where ids are: a resource's name, resolved within the tenant on the read side.

A UUID is used as it is. Anything else is looked up with the kind's view's `name` filter
(`{"name": "web"}` on ``splice.qry.<tenant>.pools``), narrowed to the parent the command
already names (a pool within `--loadbalancer-id`, a member within `--pool-id`). A view without
a `name` filter (the generic faces, members) is paged and matched here. No match, or several,
is an error that names the option.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import typer

from splice import client
from splice.cli.common import err
from splice.cli.kinds import KINDS, Kind, lift

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PAGE = 1000
MAX_SCAN = 20_000  # rows paged through, at most, to match a name client-side


class ReadError(Exception):
    """The read side refused a query: its structured error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


def ask(bus: client.Bus, tenant: str, view: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = asyncio.run(client.query(bus, tenant, view, body))
    if not reply.get("ok"):
        raise ReadError(reply.get("error") or {})
    return reply


def fail(e: ReadError) -> typer.Exit:
    """Print a read error and give the exit to raise."""
    x = e.error
    err.print(f"[red]{x.get('code')}[/]: {x.get('message')} (field: {x.get('field')})")
    return typer.Exit(1)


def fetch(bus: client.Bus, tenant: str, kind: Kind, body: dict[str, Any],
          limit: int = MAX_SCAN) -> list[dict[str, Any]]:
    """Rows of the kind's view (lifted), over as many pages as needed, up to `limit`."""
    items: list[dict[str, Any]] = []
    cursor = None
    while len(items) < limit:
        page = dict(body, limit=min(PAGE, limit - len(items)))
        if cursor:
            page["cursor"] = cursor
        reply = ask(bus, tenant, kind.view, page)
        items.extend(lift(kind, r) for r in reply["items"])
        cursor = reply.get("next")
        if not cursor:
            break
    if kind.name == "healthmonitor":
        items = [i for i in items if i.get("type")]
    return items


def by_name(bus: client.Bus, tenant: str, kind: Kind, name: str,
            parents: dict[str, Any]) -> list[dict[str, Any]]:
    """Every live row of the kind with this name (within the parents given)."""
    scope = {k: v for k, v in parents.items() if k in kind.parents and v}
    try:
        rows = fetch(bus, tenant, kind, {"name": name, **scope}, limit=PAGE)
    except ReadError as e:
        if e.error.get("field") != "$.name":
            raise
        rows = fetch(bus, tenant, kind, scope)  # no `name` filter on this view: match here
    name_key = "pool_name" if kind.name == "healthmonitor" else "name"
    return [r for r in rows if r.get(name_key) == name]


def row_id(kind: Kind, row: dict[str, Any]) -> str:
    return str(row["pool_id"] if kind.name == "healthmonitor" else row["id"])


def resolve(bus: client.Bus, tenant: str, kind_name: str, ref: str, flag: str,
            parents: dict[str, Any] | None = None) -> str:
    """The id `ref` names: itself if it is a UUID, else the one live resource of that name."""
    if UUID.fullmatch(ref):
        return ref
    kind = KINDS[kind_name]
    try:
        rows = by_name(bus, tenant, kind, ref, parents or {})
    except ReadError as e:
        raise typer.BadParameter(
            f"cannot look up the name {ref!r}: {e.error.get('code')}: {e.error.get('message')}",
            param_hint=flag,
        ) from None
    if not rows:
        where = "" if kind.admin else f" in tenant {tenant}"
        raise typer.BadParameter(f"no {kind.name} named {ref!r}{where}", param_hint=flag)
    ids = sorted({row_id(kind, r) for r in rows})
    if len(ids) > 1:
        raise typer.BadParameter(f"ambiguous name, {len(ids)} matches: {', '.join(ids)}",
                                 param_hint=flag)
    return ids[0]


def find(bus: client.Bus, tenant: str, kind: Kind, ref: str, flag: str,
         parents: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row `ref` (an id or a name) names, deleted ones too when given by id."""
    ident = resolve(bus, tenant, kind.name, ref, flag, parents)
    key = "id"
    body: dict[str, Any] = {key: ident}
    if kind.deleted_filter:
        body["deleted"] = None
    try:
        rows = fetch(bus, tenant, kind, body, limit=1)
    except ReadError as e:
        raise fail(e) from None
    if not rows:
        err.print(f"[red]not_found[/]: no {kind.name} {ref}")
        raise typer.Exit(1)
    return rows[0]
