"""What every part of the CLI shares: its consoles, its common options, the URL it talks to."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from splice import client
from splice.events import subjects

out = Console()
err = Console(stderr=True)

ADMIN = "_admin"

NatsUrlOpt = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="SPLICE_NATS_URL", help="NATS server(s), comma-separated."),
]
OutputOpt = Annotated[str, typer.Option("-o", "--output", help="table or json")]
CommandOutputOpt = Annotated[str, typer.Option("-o", "--output",
                                               help="table, json, or value (the id alone)")]
StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="SPLICE_STATE_DIR", help="Where `splice up` keeps its data."
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="SPLICE_READ_DB",
        help="Read-model database: a SQLite path or postgresql://… (default: the state dir's).",
    ),
]
LogLevelOpt = Annotated[str, typer.Option(envvar="SPLICE_LOG_LEVEL")]


CREDS: list[str] = []  # `splice --creds FILE` ($SPLICE_CREDS), set by the app's callback


def url_of(nats_url: str | None, state_dir: Path | None = None) -> client.Bus:
    """The bus to talk to, and as whom; without a NATS URL and without a running `splice up`,
    say so and exit 2."""
    try:
        return client.resolve(nats_url, state_dir, CREDS[0] if CREDS else None)
    except client.NotRunning as e:
        err.print(
            "[red]No running `splice up` found[/] (looked in "
            f"{e.state_file}). Start one with `splice up`, or give --nats-url."
        )
        raise typer.Exit(2) from None


TENANT_HELP = "The tenant to act in (default: $SPLICE_TENANT, else your credentials' tenant)."
TenantOpt = Annotated[
    str | None,
    typer.Option("--tenant", "-t", envvar="SPLICE_TENANT", help=TENANT_HELP, show_default=False),
]
AllTenantsOpt = Annotated[
    bool,
    typer.Option("--all-tenants", help="Every tenant's (the operator only)."),
]
TENANT_FLAG = "'--tenant' / '-t' / $SPLICE_TENANT"


def tenant_of(bus: client.Bus, tenant: str | None) -> str:
    """The tenant a tenant's command or read acts in: the one given (--tenant, $SPLICE_TENANT),
    else the credentials' own tenant. With neither (the operator's credentials belong to no
    tenant), a usage error naming --tenant and $SPLICE_TENANT: never a guessed tenant."""
    if tenant:
        if not subjects.TENANT_TOKEN.fullmatch(tenant):
            raise typer.BadParameter(
                f"{tenant!r} is not a tenant's name (lowercase letters, digits and '-', "
                "at most 63, starting with a letter or digit)", param_hint=TENANT_FLAG)
        return tenant
    if bus.own_tenant:
        return bus.own_tenant
    raise typer.BadParameter(
        "no tenant: give --tenant/-t NAME or set SPLICE_TENANT (the operator's credentials "
        "belong to no tenant)", param_hint=TENANT_FLAG)


def read_scope(bus: client.Bus, tenant: str | None, all_tenants: bool) -> str:
    """The tenant a read asks as: `tenant_of`, or the operator's scope (every tenant's) when
    --all-tenants asks for it, which a tenant's credentials may not."""
    if not all_tenants:
        return tenant_of(bus, tenant)
    if bus.own_tenant:
        raise typer.BadParameter(
            f"these credentials are tenant {bus.own_tenant}'s: only the operator reads every "
            "tenant's", param_hint="'--all-tenants'")
    return ADMIN


def pairs(items: list[str], form: str, param_hint: str) -> dict[str, str]:
    """Repeated KEY=VALUE options as a mapping; `form` (KIND=PROVIDER) names them in errors."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected {form}", param_hint=param_hint)
        result[key] = value
    return result


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def cell(value: Any) -> Text:
    """A value as a table cell: plain text, so markup in a tenant's strings stays text."""
    if isinstance(value, dict | list):
        return Text(json.dumps(value, ensure_ascii=False))
    return Text("" if value is None else str(value))


def table(items: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    shown = Table(title=Text(title) if title else None, show_lines=False)
    for c in columns:
        shown.add_column(Text(c), overflow="fold")
    for item in items:
        shown.add_row(*[cell(item.get(c)) for c in columns])
    out.print(shown)


def redact(db_url: str) -> str:
    """A database URL without its credentials."""
    if "@" in db_url and "://" in db_url:
        scheme, rest = db_url.split("://", 1)
        return f"{scheme}://…@{rest.split('@', 1)[1]}"
    return db_url
