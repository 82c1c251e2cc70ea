"""The `splice` command line: run Splice (`up`, `serve`), send commands, read the event log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from splice import logs
from splice.cli import (
    commands,
    common,
    credentials,
    eventlog,
    readmodels,
    reads,
    resources,
    running,
    servicetypes,
)

app = typer.Typer(no_args_is_help=True, help=__doc__)


@app.callback()
def _who(
    creds: Annotated[
        Path | None,
        typer.Option(
            "--creds",
            envvar="SPLICE_CREDS",
            help="Credentials file to connect with (default: the running `splice up`'s operator).",
        ),
    ] = None,
) -> None:
    common.CREDS[:] = [str(creds)] if creds else []


def _build(root: typer.Typer) -> typer.Typer:
    """Every verb, in the order `splice --help` lists them."""
    root.add_typer(servicetypes.servicetype_app, name="servicetype")
    running.register(root)
    eventlog.register(root)
    reads.register(root)
    root.add_typer(readmodels.projections_app, name="projections")
    root.add_typer(credentials.credentials_app, name="credentials")
    resources.register(commands.register(root))
    return root


_build(app)


def main() -> None:
    # Logs go to stderr (stdout is the verbs' output); the processes set their own level.
    logs.configure(os.environ.get("SPLICE_LOG_LEVEL") or "WARNING")
    app()


if __name__ == "__main__":
    main()
