"""`splice query VIEW`, `splice audit`, `splice history ID`, `splice state --at`: the read side.

`query` and `audit` ask the projector over NATS (``splice.qry.<tenant>.<view>``), the one that
`splice up` or `splice projector` runs; `history` and `state` read the stream itself (no
projector needed). Each reads one tenant's: `--tenant`, $SPLICE_TENANT, else the credentials'
own tenant; every tenant's only when `--all-tenants` asks (the operator).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from splice import client
from splice.cli.common import (
    ADMIN,
    AllTenantsOpt,
    NatsUrlOpt,
    OutputOpt,
    TenantOpt,
    err,
    out,
    pairs,
    print_json,
    read_scope,
    table,
    tenant_of,
    url_of,
)


def query(nats_url: str | None, tenant: str, view: str, body: dict[str, Any]) -> dict[str, Any]:
    """One query over NATS; prints a structured error and exits 1 when it fails. A tenant's
    credentials ask as that tenant."""
    bus = url_of(nats_url)
    if bus.own_tenant and tenant == ADMIN:
        tenant = bus.own_tenant
    reply = asyncio.run(client.query(bus, tenant, view, body))
    if not reply.get("ok"):
        e = reply.get("error", {})
        err.print(f"[red]{escape(str(e.get('code')))}[/]: {escape(str(e.get('message')))} "
                  f"(field: {escape(str(e.get('field')))})", highlight=False)
        raise typer.Exit(1)
    return reply


def _filters(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE parsed as JSON when it is JSON (true, 3), else a string."""
    result: dict[str, Any] = {}
    for key, value in pairs(items, "KEY=VALUE", "--filter").items():
        try:
            result[key] = json.loads(value)
        except ValueError:
            result[key] = value
    return result


def page_all(
    nats_url: str | None, tenant: str, view: str, body: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
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


def query_cmd(
    view: str,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="KEY=VALUE, repeatable.")
    ] = None,
    tenant: TenantOpt = None,
    all_tenants: AllTenantsOpt = False,
    limit: Annotated[int, typer.Option()] = 100,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "json",
) -> None:
    """Query any read model: `splice query loadbalancers -t acme -f name=web`."""
    from splice.projections.views import QUERY_VIEWS

    known = QUERY_VIEWS.get(view)
    body = _filters(filter_ or [])
    if known is not None and known.scope != "tenant":
        as_tenant = ADMIN  # the operator's views (service types): no tenant's
    else:
        as_tenant = read_scope(url_of(nats_url), tenant, all_tenants)
        _only_admin(body, as_tenant, all_tenants)
    items = page_all(nats_url, as_tenant, view, body, limit)
    if output == "json":
        print_json(items)
    elif items:
        table(items, list(items[0]))


def audit(
    tenant: TenantOpt = None,
    all_tenants: AllTenantsOpt = False,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    aggregate: Annotated[
        str | None, typer.Option(help="Only this kind (servicetype, loadbalancer…) or an id.")
    ] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="Only this event type.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (RFC 3339).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (RFC 3339).")] = None,
    limit: Annotated[int, typer.Option()] = 100,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """The audit log: who changed what, when, in answer to which command (one tenant's, or
    every tenant's with --all-tenants; the operator's own changes are tenant _admin's)."""
    as_tenant = read_scope(url_of(nats_url), tenant, all_tenants)
    body: dict[str, Any] = {"actor": actor, "type": event_type, "since": since, "until": until}
    if aggregate:
        body["aggregate_id" if _looks_like_id(aggregate) else "aggregate"] = aggregate
    _only_admin(body, as_tenant, all_tenants)
    items = page_all(nats_url, as_tenant, "audit", {k: v for k, v in body.items() if v}, limit)
    if output == "json":
        print_json(items)
        return
    _show_audit(items)


def _only_admin(body: dict[str, Any], as_tenant: str, all_tenants: bool) -> None:
    """`-t _admin` reads the operator's own rows, not every tenant's (that is --all-tenants)."""
    if as_tenant == ADMIN and not all_tenants:
        body["tenant"] = ADMIN


def _looks_like_id(text: str) -> bool:
    return len(text) == 36 and text.count("-") == 4


def _show_audit(items: list[dict[str, Any]]) -> None:
    """One line per event; what a tenant wrote (names, summaries) is printed as text, never
    as markup."""
    for it in items:
        out.print(
            f"{it['seq']:>7} {it['time'][:23]} {escape(it['tenant']):<10} "
            f"{escape(it['actor']):<12} [bold]{escape(it['type'])}[/] "
            f"{escape(it['aggregate'])}/{escape(it['aggregate_id'][:8])} "
            f"v{it['version']}  {escape(it['summary'])}  "
            f"[dim]cmd={escape(it['command_id'][:12])}[/]",
            highlight=False,
        )


def _one_tenant(bus: client.Bus, tenant: str | None) -> str | None:
    """The tenant a read of one resource is narrowed to: given, $SPLICE_TENANT or the
    credentials'; None for the operator naming none (an id names one resource anyway)."""
    return tenant_of(bus, tenant) if tenant or bus.own_tenant else None


def history(
    resource_id: str,
    tenant: TenantOpt = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Every event of one resource, read from the stream, with what each one changed."""
    from splice.projections.timetravel import history as read_history

    bus = url_of(nats_url)
    within = _one_tenant(bus, tenant)
    items = asyncio.run(
        client.with_jetstream(bus, lambda js: read_history(js, resource_id, tenant=within))
    )
    if output == "json":
        print_json(items)
        return
    if not items:
        where = f" in tenant {within}" if within else ""
        err.print(f"no events for {escape(resource_id)}{escape(where)}", highlight=False)
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
    tenant: TenantOpt = None,
    resource_id: Annotated[str | None, typer.Option("--id", help="One resource.")] = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "json",
) -> None:
    """A tenant's (or one resource's) state as it was then, folded from the stream."""
    from splice.projections.timetravel import state_at

    bus = url_of(nats_url)
    within = _one_tenant(bus, tenant) if resource_id else tenant_of(bus, tenant)
    point = _parse_at(at)
    result = asyncio.run(
        client.with_jetstream(
            bus, lambda js: state_at(js, point, tenant=within, resource_id=resource_id)
        )
    )
    if output == "json":
        print_json(result)
        return
    out.print(
        f"as of seq {result['at']['seq']} ({result['at']['time']}), {result['events']} events"
    )
    for name, rows in result.items():
        if isinstance(rows, list) and rows:
            table(rows, list(rows[0]), title=name)


def register(app: typer.Typer) -> None:
    """Add the read-side verbs to `splice`."""
    app.command("query")(query_cmd)
    app.command("audit")(audit)
    app.command("history")(history)
    app.command("state")(state)
