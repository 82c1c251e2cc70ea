"""`splice events` (the raw log), `splice schema` and `splice asyncapi` (the message API)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from nats.errors import NoRespondersError
from rich.markup import escape

from splice.cli.common import (
    AllTenantsOpt,
    NatsUrlOpt,
    OutputOpt,
    TenantOpt,
    err,
    out,
    read_scope,
    url_of,
)
from splice.events import subjects


def _parse_since(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def events(
    from_seq: Annotated[
        int | None, typer.Option("--from-seq", help="Start at this stream sequence.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Start at this time (ISO 8601).")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    subject: Annotated[
        str | None,
        typer.Option(help="Subject filter (default: the tenant's events, splice.evt.<tenant>.>)."),
    ] = None,
    tenant: TenantOpt = None,
    all_tenants: AllTenantsOpt = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Read the event log (the JetStream stream), from a sequence or a time; -f follows it.
    One tenant's events (`-t _admin`: the operator's own), or every one with --all-tenants."""
    from splice.events.eventlog import read_events

    bus = url_of(nats_url)
    if subject is None:
        scope = read_scope(bus, tenant, all_tenants)
        subject = subjects.EVENTS if all_tenants else subjects.events_of_tenant(scope)
    start_time = _parse_since(since) if since else None

    def show(ev: dict[str, Any]) -> None:
        if output == "json":
            sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()
        else:
            p = ev["payload"]
            out.print(  # what a tenant sent is text, not markup
                f"{ev['seq']:>7} {ev['time'][:23]} [bold]{escape(str(ev['type'])):<28}[/] "
                f"{escape(str(ev['aggregate_id']))} v{ev['version']} "
                f"actor={escape(str(p.get('actor', '?')))} "
                f"cmd={escape(str(p.get('command_id', '?')))}",
                highlight=False,
            )

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                read_events(
                    bus.url,
                    show,
                    js_prefix=bus.js_prefix,
                    subject=subject,
                    from_seq=from_seq,
                    start_time=start_time,
                    follow=follow,
                    limit=limit,
                )
            )
    except NoRespondersError:
        err.print(f"[red]forbidden[/]: the bus does not let these credentials read "
                  f"{escape(subject)}", highlight=False)
        raise typer.Exit(1) from None


def _write_json(doc: object, out_file: Path | None) -> None:
    text = msgspec.json.format(msgspec.json.encode(doc), indent=2).decode()
    if out_file:
        out_file.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


OutFileOpt = Annotated[Path | None, typer.Option("--out", help="Write to this file (default stdout).")]


def schema(out_file: OutFileOpt = None) -> None:
    """Write the JSON Schema of every command, reply and event."""
    from splice.events.documents import json_schema

    _write_json(json_schema(), out_file)


def asyncapi(out_file: OutFileOpt = None) -> None:
    """Write the AsyncAPI 3.0 document of the whole message API (commands, queries, events)."""
    from splice.documents import asyncapi as document

    _write_json(document(), out_file)


def register(app: typer.Typer) -> None:
    app.command("events")(events)
    app.command("schema")(schema)
    app.command("asyncapi")(asyncapi)
