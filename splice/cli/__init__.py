"""The `splice` command line: run Splice (`up`, `serve`), send commands, read the event log."""

from __future__ import annotations

import typer

from splice.cli import commands, eventlog, readmodels, reads, running, servicetypes

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _build(root: typer.Typer) -> typer.Typer:
    """Every verb, in the order `splice --help` lists them."""
    root.add_typer(servicetypes.servicetype_app, name="servicetype")
    running.register(root)
    eventlog.register(root)
    reads.register(root)
    root.add_typer(readmodels.projections_app, name="projections")
    commands.register(root)
    return root


_build(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
