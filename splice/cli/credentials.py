"""`splice credentials`: issue, list and revoke who may use the bus (tenants and hosts).

The registry is `splice up`'s (`<state dir>/credentials`) unless `--dir` names another (the one
a deployment's nats-servers include). A running `splice up` learns a change at once; another
deployment's servers load it on their next reload (`nats-server --signal reload`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from splice import client
from splice.auth import Registry
from splice.cli.common import StateDirOpt, err, out, print_json, table
from splice.natsserver import reload_running

credentials_app = typer.Typer(
    no_args_is_help=True, help="Issue, list and revoke who may use the bus: tenants and hosts."
)

KindArg = Annotated[
    Literal["tenant", "host"], typer.Argument(help="tenant or host", show_default=False)
]
NameArg = Annotated[str, typer.Argument(help="The tenant's or host's name.", show_default=False)]
DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="The registry's directory (default: the state dir's credentials)."),
]


def _registry(state_dir: Path, directory: Path | None) -> tuple[Registry, Path | None]:
    """The registry, and the store directory of the `splice up` server that uses it, if any."""
    if directory is not None:
        return Registry(directory), None
    return Registry(state_dir / client.CREDENTIALS_DIR), state_dir / "nats"


def _apply(registry: Registry, server_dir: Path | None) -> None:
    if server_dir is not None and reload_running(server_dir, registry):
        err.print("[dim]the running splice up's nats-server has reloaded its accounts[/]")
    elif server_dir is None:
        (registry.dir / "accounts.conf").write_text(registry.server_config())
        err.print(f"[dim]wrote {registry.dir / 'accounts.conf'}: reload the servers that include it[/]")


@credentials_app.command("init")
def init(
    directory: Annotated[Path, typer.Option("--dir", help="The registry's directory.")],
) -> None:
    """Make a registry (the services' and the operator's credentials) and its `accounts.conf`,
    for servers that include it; an existing one is kept."""
    registry = Registry(directory)
    _apply(registry, None)


@credentials_app.command("issue")
def issue(
    kind: KindArg,
    name: NameArg,
    rotate: Annotated[bool, typer.Option(help="Replace the password (the old one stops working).")] = False,
    url: Annotated[bool, typer.Option("--url", help="Print a NATS URL with the credentials in it.")] = False,
    state_dir: StateDirOpt = client.default_state_dir(),  # noqa: B008 - typer default
    directory: DirOpt = None,
) -> None:
    """Credentials for a tenant (its own commands, queries and events) or a host (its agent)."""
    registry, server_dir = _registry(state_dir, directory)
    try:
        creds, changed = registry.issue(kind, name, rotate=rotate)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="NAME") from None
    if changed:
        _apply(registry, server_dir)
    path = registry.path_of(kind, name)
    if url:
        info = client.running_up(state_dir)
        base = str(info["nats_url"]) if info else "nats://127.0.0.1:4222"
        out.print(creds.url(base), highlight=False, soft_wrap=True)
        return
    out.print(f"{'issued' if changed else 'exists'}: {path}", highlight=False)
    out.print(f"use it: [bold]SPLICE_CREDS={path} splice …[/] (or `splice --creds {path} …`)")


@credentials_app.command("revoke")
def revoke(
    kind: KindArg,
    name: NameArg,
    state_dir: StateDirOpt = client.default_state_dir(),  # noqa: B008 - typer default
    directory: DirOpt = None,
) -> None:
    """Revoke a tenant's or host's credentials: the server closes its connections."""
    registry, server_dir = _registry(state_dir, directory)
    if not registry.revoke(kind, name):
        err.print(f"no {kind} {name!r} in {registry.dir}")
        raise typer.Exit(1)
    _apply(registry, server_dir)
    out.print(f"revoked {kind} {name}")


@credentials_app.command("list")
def list_(
    state_dir: StateDirOpt = client.default_state_dir(),  # noqa: B008 - typer default
    directory: DirOpt = None,
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
) -> None:
    """Everyone the bus knows: the services, the operator, each host and each tenant."""
    registry, _ = _registry(state_dir, directory)
    rows = [
        {"kind": k, "name": n, "file": str(registry.path_of(k, n))} for k, n in registry.principals()
    ]
    if output == "json":
        print_json(rows)
    else:
        table(rows, ["kind", "name", "file"])
