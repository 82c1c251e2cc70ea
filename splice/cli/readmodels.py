"""`splice projections rebuild|verify`: work on the read-model database directly.

``--db`` is a SQLite path or a ``postgresql://`` URL; by default the SQLite file of `splice up`
in the state directory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from splice import client
from splice.cli.common import DbOpt, NatsUrlOpt, OutputOpt, err, out, print_json, redact, url_of

projections_app = typer.Typer(
    no_args_is_help=True, help="The read models: rebuild them, verify them."
)


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


@projections_app.command("rebuild")
def rebuild(
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over even if a rebuild was interrupted.")
    ] = False,
    db: DbOpt = None,
    batch: Annotated[
        int | None,
        typer.Option(help="Events per transaction (default: the rebuild's, 50,000).", min=1),
    ] = None,
    nats_url: NatsUrlOpt = None,
) -> None:
    """Rebuild every read model from the start of the stream (resumes an interrupted one)."""
    from splice.projections.maintenance import rebuild as do_rebuild

    db_url = db or client.default_db()
    bar, on_batch = _progress_runner("rebuilding")
    with bar:
        position, resumed = asyncio.run(
            client.with_jetstream(
                url_of(nats_url),
                lambda js: do_rebuild(
                    js, db_url, restart=restart, on_batch=on_batch,
                    **({} if batch is None else {"batch_size": batch}),
                ),
            )
        )
    verb = "resumed and finished" if resumed else "rebuilt"
    out.print(f"[green]{verb}[/] {redact(db_url)} up to seq {position}")


@projections_app.command("verify")
def verify(
    db: DbOpt = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Rebuild into a scratch database and compare it with the live read models."""
    from splice.projections.maintenance import verify as do_verify

    db_url = db or client.default_db()
    bar, on_batch = _progress_runner("rebuilding a scratch copy")
    with bar:
        report = asyncio.run(
            client.with_jetstream(
                url_of(nats_url), lambda js: do_verify(js, db_url, on_batch=on_batch)
            )
        )
    if output == "json":
        print_json(report)
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
    if report.get("behind"):
        out.print(f"  the read models are {report['behind']} event(s) behind the stream "
                  f"(at seq {report['position']}, the stream at {report['stream_position']})")
    for name, v in report["views"].items():
        if not v["compared"]:
            out.print(f"  view {name}: not compared (at seq {v['position']})")
    aside = report.get("set_aside") or {}
    if aside.get("live") or aside.get("rebuilt"):
        out.print(f"  events set aside (a view could not apply them): {aside.get('live')} live, "
                  f"{aside.get('rebuilt')} in the rebuild")
        for ex in aside.get("examples", []):
            out.print(f"    {json.dumps(ex, ensure_ascii=False)}", highlight=False)
    for name, t in report["tables"].items():
        if t["identical"]:
            continue
        out.print(
            f"  table {name}: {t['missing']} missing, {t['extra']} extra, {t['changed']} changed"
        )
        for kind, examples in t["examples"].items():
            for ex in examples:
                out.print(f"    {kind}: {json.dumps(ex, ensure_ascii=False)}", highlight=False)
