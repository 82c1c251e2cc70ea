"""Tab completion of resources' names and ids (`splice --install-completion` sets the shell up).

A completer asks the read model for the kind's rows in the tenant the command line names
(`--tenant`/`-t`, $SPLICE_TENANT, else the credentials'), within a short deadline; without a
running Splice, a tenant or an answer in time it offers nothing, and the shell completes
nothing: completion never prints an error into the prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

import typer

from splice import client
from splice.cli import common
from splice.cli.kinds import KINDS, lift

DEADLINE_S = 2.0
MAX_OFFERED = 200


def offers(rows: list[dict[str, Any]], incomplete: str) -> list[tuple[str, str]]:
    """(value, help) pairs: each row's name and id that start with `incomplete`; a name shared
    by several rows is offered once, its ids beside it."""
    found: dict[str, str] = {}
    for row in rows:
        ident, name = str(row.get("id") or ""), row.get("name")
        if name and str(name).startswith(incomplete):
            found[str(name)] = f"{found[str(name)]}, {ident[:8]}" if name in found else ident[:8]
        if ident.startswith(incomplete) and ident:
            found.setdefault(ident, str(name or ""))
    return list(found.items())[:MAX_OFFERED]


def rows_of(kind_name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The kind's live rows in the tenant of the command line (nothing on any trouble)."""
    kind = KINDS[kind_name]
    with contextlib.suppress(Exception):
        bus = client.resolve(params.get("nats_url") or os.environ.get("SPLICE_NATS_URL"), None,
                             common.CREDS[0] if common.CREDS else None)
        tenant = params.get("tenant") or os.environ.get("SPLICE_TENANT") or bus.own_tenant
        if kind.admin:
            tenant = common.ADMIN
        if not tenant:
            return []
        body: dict[str, Any] = {"limit": MAX_OFFERED}
        reply = asyncio.run(asyncio.wait_for(
            client.query(bus, str(tenant), kind.view, body), DEADLINE_S))
        if reply.get("ok"):
            return [lift(kind, r) for r in reply.get("items") or []]
    return []


def ref(kind_name: str) -> Callable[[typer.Context, str], list[tuple[str, str]]]:
    """A completer of a `kind_name`'s name or id (for a typer Argument's `autocompletion`)."""

    def complete(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
        return offers(rows_of(kind_name, dict(ctx.params)), incomplete)

    return complete
