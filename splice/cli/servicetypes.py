"""`splice servicetype …`: service types written by hand-made verbs, read from the read models."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from splice.cli.commands import send
from splice.cli.common import (
    ADMIN,
    CommandOutputOpt,
    NatsUrlOpt,
    OutputOpt,
    cell,
    err,
    out,
    pairs,
    print_json,
    table,
    url_of,
)
from splice.cli.reads import page_all, query
from splice.cli.resolve import resolve


def _id(nats_url: str | None, ref: str) -> str:
    """A service type's id, from its id or its name."""
    return resolve(url_of(nats_url), ADMIN, "servicetype", ref, "ID")

servicetype_app = typer.Typer(
    no_args_is_help=True, help="Service types: providers per kind, one default."
)

ProviderOpt = Annotated[
    list[str], typer.Option("--provider", "-p", help="KIND=PROVIDER, e.g. loadbalancer=haproxy")
]
CommandIdOpt = Annotated[str | None, typer.Option(help="Idempotency key (default: a new UUID).")]


def _providers(items: list[str]) -> dict[str, str]:
    return pairs(items, "KIND=PROVIDER", "--provider")


@servicetype_app.command("create")
def st_create(
    name: str,
    provider: ProviderOpt,
    description: Annotated[str, typer.Option()] = "",
    default: Annotated[bool, typer.Option("--default")] = False,
    command_id: CommandIdOpt = None,
    nats_url: NatsUrlOpt = None,
    output: CommandOutputOpt = "table",
) -> None:
    """Create a service type."""
    body = {"name": name, "providers": _providers(provider), "description": description,
            "default": default, "command_id": command_id}
    send(nats_url, "servicetype", "create", body, output, ADMIN)


@servicetype_app.command("update")
def st_update(
    id: str,
    name: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", "-p")] = None,
    command_id: CommandIdOpt = None,
    nats_url: NatsUrlOpt = None,
    output: CommandOutputOpt = "table",
) -> None:
    """Change a service type's name, description or providers."""
    body = {"id": _id(nats_url, id), "name": name, "description": description,
            "providers": _providers(provider) if provider else None, "command_id": command_id}
    send(nats_url, "servicetype", "update", body, output, ADMIN)


@servicetype_app.command("set-default")
def st_set_default(
    id: str,
    command_id: CommandIdOpt = None,
    nats_url: NatsUrlOpt = None,
    output: CommandOutputOpt = "table",
) -> None:
    """Make a service type the default (the previous default stops being one, atomically)."""
    body = {"id": _id(nats_url, id), "command_id": command_id}
    send(nats_url, "servicetype", "set_default", body, output, ADMIN)


@servicetype_app.command("delete")
def st_delete(
    id: str,
    command_id: CommandIdOpt = None,
    nats_url: NatsUrlOpt = None,
    output: CommandOutputOpt = "table",
) -> None:
    """Delete a service type (not the default one)."""
    body = {"id": _id(nats_url, id), "command_id": command_id}
    send(nats_url, "servicetype", "delete", body, output, ADMIN)


@servicetype_app.command("list")
def st_list(
    all_: Annotated[bool, typer.Option("--all", help="Include deleted ones.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 1000,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """List service types (from the read models)."""
    body: dict[str, Any] = {"deleted": None} if all_ else {}
    items = page_all(nats_url, ADMIN, "servicetypes", body, limit)
    if output == "json":
        print_json(items)
        return
    table(items, ["id", "name", "default", "providers", "description", "version", "deleted"])


@servicetype_app.command("show")
def st_show(id: str, nats_url: NatsUrlOpt = None, output: OutputOpt = "table") -> None:
    """Show one service type, by id or name (deleted ones too, by id)."""
    reply = query(nats_url, ADMIN, "servicetypes", {"id": _id(nats_url, id), "deleted": None})
    if not reply["items"]:
        err.print(f"[red]not_found[/]: no service type {id}")
        raise typer.Exit(1)
    item = reply["items"][0]
    if output == "json":
        print_json(item)
        return
    for k, v in item.items():
        out.print(f"[bold]{k:>14}[/] {cell(v)}", highlight=False)
