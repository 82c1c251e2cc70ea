"""CLI verbs of the read side (projections, audit, history, time travel): registered on `splice`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the read-side commands to the `splice` CLI."""
