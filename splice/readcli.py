"""CLI verbs of the read side (projections, audit, history, time travel): registered on `splice`.

* `splice servicetype list|show`, `splice query VIEW`, `splice audit`: queries over NATS
  (``splice.qry.<tenant>.<view>``), answered by the projector that `splice up` runs.
* `splice history ID`, `splice state --at`: read the stream itself (no projector needed).
* `splice projections rebuild|verify`: work on the read-model database directly (``--db``,
  default the SQLite file of `splice up` in the state directory).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)

ADMIN = "_admin"
READ_DB_FILE = "readmodels.sqlite"

NatsUrlOpt = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="SPLICE_NATS_URL", help="NATS server(s), comma-separated."),
]
OutputOpt = Annotated[str, typer.Option("-o", "--output", help="table or json")]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="SPLICE_READ_DB",
        help="Read-model database: a SQLite path or postgresql://… (default: the state dir's).",
    ),
]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant to ask as.")]


def default_db() -> str:
    from splice.cli import default_state_dir

    return str(default_state_dir() / READ_DB_FILE)


def _url(nats_url: str | None) -> str:
    from splice.cli import resolve_url

    return resolve_url(nats_url)


async def _with_js(url: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    import nats

    nc = await nats.connect(url.split(","), connect_timeout=5)
    try:
        return await work(nc.jetstream())
    finally:
        await nc.close()


async def _request(url: str, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    import nats
    from nats.errors import NoRespondersError

    nc = await nats.connect(url.split(","), connect_timeout=5)
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=35)
    except NoRespondersError:
        return {
            "ok": False,
            "error": {
                "code": "unavailable",
                "message": "no projector answers queries (is `splice up` running?)",
                "field": None,
            },
        }
    finally:
        await nc.close()
    return dict(json.loads(msg.data))


def query(nats_url: str | None, tenant: str, view: str, body: dict[str, Any]) -> dict[str, Any]:
    """One query over NATS; prints a structured error and exits 1 when it fails."""
    reply = asyncio.run(_request(_url(nats_url), f"splice.qry.{tenant}.{view}", body))
    if not reply.get("ok"):
        e = reply.get("error", {})
        err.print(f"[red]{e.get('code')}[/]: {e.get('message')} (field: {e.get('field')})")
        raise typer.Exit(1)
    return reply


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def _table(items: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for item in items:
        table.add_row(*[_cell(item.get(c)) for c in columns])
    out.print(table)


def _filters(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE parsed as JSON when it is JSON (true, 3), else a string."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--filter")
        try:
            result[key] = json.loads(value)
        except ValueError:
            result[key] = value
    return result


def _page_all(nats_url: str | None, tenant: str, view: str, body: dict[str, Any], limit: int):
    """Items over as many pages as needed, up to `limit` in all."""
    items: list[dict[str, Any]] = []
    cursor = None
    while len(items) < limit:
        page = dict(body, limit=min(1000, limit - len(items)))
        if cursor:
            page["cursor"] = cursor
        reply = query(nats_url, tenant, view, page)
        items.extend(reply["items"])
        cursor = reply.get("next")
        if not cursor:
            break
    return items


# -- verbs ------------------------------------------------------------------------------------


def st_list(
    all_: Annotated[bool, typer.Option("--all", help="Include deleted ones.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 1000,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """List service types (from the read models)."""
    body: dict[str, Any] = {"deleted": None} if all_ else {}
    items = _page_all(nats_url, ADMIN, "servicetypes", body, limit)
    if output == "json":
        _print_json(items)
        return
    _table(items, ["id", "name", "default", "providers", "description", "version", "deleted"])


def st_show(id: str, nats_url: NatsUrlOpt = None, output: OutputOpt = "table") -> None:
    """Show one service type (deleted ones too)."""
    reply = query(nats_url, ADMIN, "servicetypes", {"id": id, "deleted": None})
    if not reply["items"]:
        err.print(f"[red]not_found[/]: no service type {id}")
        raise typer.Exit(1)
    item = reply["items"][0]
    if output == "json":
        _print_json(item)
        return
    for k, v in item.items():
        out.print(f"[bold]{k:>14}[/] {_cell(v)}", highlight=False)


def query_cmd(
    view: str,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="KEY=VALUE, repeatable.")
    ] = None,
    tenant: TenantOpt = ADMIN,
    limit: Annotated[int, typer.Option()] = 100,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "json",
) -> None:
    """Query any read model: `splice query loadbalancers -t acme -f name=web`."""
    items = _page_all(nats_url, tenant, view, _filters(filter_ or []), limit)
    if output == "json":
        _print_json(items)
    elif items:
        _table(items, list(items[0]))


def audit(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant (default: all).")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    aggregate: Annotated[
        str | None, typer.Option(help="Only this kind (servicetype, loadbalancer…) or an id.")
    ] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="Only this event type.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (RFC 3339).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (RFC 3339).")] = None,
    limit: Annotated[int, typer.Option()] = 100,
    as_tenant: Annotated[str, typer.Option("--as", help="Ask as this tenant.")] = ADMIN,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """The audit log: who changed what, when, in answer to which command."""
    body: dict[str, Any] = {"actor": actor, "type": event_type, "since": since, "until": until}
    if aggregate:
        body["aggregate_id" if _looks_like_id(aggregate) else "aggregate"] = aggregate
    if tenant:
        body["tenant"] = tenant
    items = _page_all(nats_url, as_tenant, "audit", {k: v for k, v in body.items() if v}, limit)
    if output == "json":
        _print_json(items)
        return
    _show_audit(items)


def _looks_like_id(text: str) -> bool:
    return len(text) == 36 and text.count("-") == 4


def _show_audit(items: list[dict[str, Any]]) -> None:
    for it in items:
        out.print(
            f"{it['seq']:>7} {it['time'][:23]} {it['tenant']:<10} {it['actor']:<12} "
            f"[bold]{it['type']}[/] {it['aggregate']}/{it['aggregate_id'][:8]} "
            f"v{it['version']}  {it['summary']}  [dim]cmd={it['command_id'][:12]}[/]",
            highlight=False,
        )


def history(resource_id: str, nats_url: NatsUrlOpt = None, output: OutputOpt = "table") -> None:
    """Every event of one resource, read from the stream, with what each one changed."""
    from splice.projections.timetravel import history as read_history

    items = asyncio.run(_with_js(_url(nats_url), lambda js: read_history(js, resource_id)))
    if output == "json":
        _print_json(items)
        return
    if not items:
        err.print(f"no events for {resource_id}")
        raise typer.Exit(1)
    _show_audit(items)


def _parse_at(value: str) -> Any:
    from splice.projections.envelope import parse_rfc3339_ns
    from splice.projections.timetravel import At

    if value.isdigit():
        return At(seq=int(value))
    try:
        return At(time_ns=parse_rfc3339_ns(value))
    except ValueError as e:
        raise typer.BadParameter("a stream sequence or an RFC 3339 time", param_hint="--at") from e


def state(
    at: Annotated[str, typer.Option("--at", help="Stream sequence, or RFC 3339 time.")],
    tenant: Annotated[str | None, typer.Option("--tenant", "-t")] = None,
    resource_id: Annotated[str | None, typer.Option("--id", help="One resource.")] = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "json",
) -> None:
    """A tenant's (or one resource's) state as it was then, folded from the stream."""
    from splice.projections.timetravel import state_at

    if (tenant is None) == (resource_id is None):
        raise typer.BadParameter("give --tenant or --id (one of them)")
    point = _parse_at(at)
    result = asyncio.run(
        _with_js(
            _url(nats_url),
            lambda js: state_at(js, point, tenant=tenant, resource_id=resource_id),
        )
    )
    if output == "json":
        _print_json(result)
        return
    out.print(
        f"as of seq {result['at']['seq']} ({result['at']['time']}), {result['events']} events"
    )
    for name, rows in result.items():
        if isinstance(rows, list) and rows:
            _table(rows, list(rows[0]), title=name)


def _progress_runner(description: str) -> tuple[Any, Callable[[Any], None]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = bar.add_task(description, total=None, rate="")

    def on_batch(p: Any) -> None:
        import time

        elapsed = max(time.monotonic() - p.started, 1e-6)
        bar.update(
            task,
            completed=p.position,
            total=p.target,
            rate=f"{p.applied / elapsed:,.0f} ev/s",
        )

    return bar, on_batch


def rebuild(
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over even if a rebuild was interrupted.")
    ] = False,
    db: DbOpt = None,
    batch: Annotated[int, typer.Option(help="Events per transaction.")] = 10_000,
    nats_url: NatsUrlOpt = None,
) -> None:
    """Rebuild every read model from the start of the stream (resumes an interrupted one)."""
    from splice.projections.maintenance import rebuild as do_rebuild

    db_url = db or default_db()
    bar, on_batch = _progress_runner("rebuilding")
    with bar:
        position, resumed = asyncio.run(
            _with_js(
                _url(nats_url),
                lambda js: do_rebuild(
                    js, db_url, restart=restart, batch_size=batch, on_batch=on_batch
                ),
            )
        )
    verb = "resumed and finished" if resumed else "rebuilt"
    out.print(f"[green]{verb}[/] {_redact(db_url)} up to seq {position}")


def verify(
    db: DbOpt = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Rebuild into a scratch database and compare it with the live read models."""
    from splice.projections.maintenance import verify as do_verify

    db_url = db or default_db()
    bar, on_batch = _progress_runner("rebuilding a scratch copy")
    with bar:
        report = asyncio.run(
            _with_js(_url(nats_url), lambda js: do_verify(js, db_url, on_batch=on_batch))
        )
    if output == "json":
        _print_json(report)
    else:
        _show_verify(report)
    if not report["identical"]:
        raise typer.Exit(1)


def _show_verify(report: dict[str, Any]) -> None:
    if report["identical"]:
        out.print(
            f"[green]identical[/]: every read model matches a rebuild at seq {report['position']}"
        )
        return
    out.print(f"[red]differences[/] at seq {report['position']}:")
    for name, v in report["views"].items():
        if not v["compared"]:
            out.print(f"  view {name}: not compared (at seq {v['position']})")
    for name, t in report["tables"].items():
        if t["identical"]:
            continue
        out.print(
            f"  table {name}: {t['missing']} missing, {t['extra']} extra, {t['changed']} changed"
        )
        for kind, examples in t["examples"].items():
            for ex in examples:
                out.print(f"    {kind}: {json.dumps(ex, ensure_ascii=False)}", highlight=False)


def _redact(db_url: str) -> str:
    if "@" in db_url and "://" in db_url:
        scheme, rest = db_url.split("://", 1)
        return f"{scheme}://…@{rest.split('@', 1)[1]}"
    return db_url


def register(app: typer.Typer) -> None:
    """Add the read-side commands to the `splice` CLI."""
    from splice.cli import servicetype_app

    servicetype_app.command("list")(st_list)
    servicetype_app.command("show")(st_show)
    app.command("query")(query_cmd)
    app.command("audit")(audit)
    app.command("history")(history)
    app.command("state")(state)
    projections_app = typer.Typer(
        no_args_is_help=True, help="The read models: rebuild them, verify them."
    )
    projections_app.command("rebuild")(rebuild)
    projections_app.command("verify")(verify)
    app.add_typer(projections_app, name="projections")
