"""`splice <kind> list` and `splice <kind> show ID-OR-NAME`, for every kind with a view.

They read the projector's read models (``splice.qry.<tenant>.<view>``), as the tenant
(`--tenant`, $SPLICE_TENANT, else your credentials' tenant); `--all-tenants` asks as the
operator. `splice loadbalancer status` is in status.py, `stats` in stats.py.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from splice.cli import complete, output, status
from splice.cli import stats as lb_stats
from splice.cli.common import ADMIN, TenantOpt, read_scope, tenant_of, url_of
from splice.cli.kinds import KINDS, Kind
from splice.cli.resolve import ReadError, fail, fetch, find, resolve

OPT = inspect.Parameter.KEYWORD_ONLY

# `list` filters naming a parent, as options: option name -> (filter, kind).
PARENT_OPTIONS = {"loadbalancer_id": ("loadbalancer", "--loadbalancer"),
                  "pool_id": ("pool", "--pool")}


def _p(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, OPT, default=default, annotation=annotation)


def _common(kind: Kind) -> list[inspect.Parameter]:
    params = []
    if not kind.admin:
        params.append(_p("tenant", TenantOpt))
    params += [
        _p("nats_url", Annotated[str | None, typer.Option(
            "--nats-url", envvar="SPLICE_NATS_URL", help="NATS server(s), comma-separated.")]),
        _p("output", output.FormatOpt, "table"),
        _p("column", output.ColumnOpt),
    ]
    return params


def list_for(kind: Kind) -> Any:
    params = []
    for flt in kind.parents:
        parent, flag = PARENT_OPTIONS[flt]
        params.append(_p(flt, Annotated[str | None, typer.Option(
            flag, help=f"Only those of this {parent} (id or name).")]))
    if kind.deleted_filter:
        params.append(_p("all_", Annotated[bool, typer.Option(
            "--all", help="Deleted ones too.")], False))
    if not kind.admin:
        params.append(_p("all_tenants", Annotated[bool, typer.Option(
            "--all-tenants", help="Every tenant's (as the operator).")], False))
    params.append(_p("limit", Annotated[int, typer.Option(help="At most this many.")], 1000))
    params += _common(kind)

    def run(**kw: Any) -> None:
        output.check_format(kw["output"])
        bus = url_of(kw["nats_url"])
        tenant = ADMIN if kind.admin else read_scope(bus, kw["tenant"], kw["all_tenants"])
        body: dict[str, Any] = {}
        parents: dict[str, str] = {}
        for flt in kind.parents:
            if kw.get(flt):
                parent, flag = PARENT_OPTIONS[flt]
                parents[flt] = resolve(bus, tenant, parent, kw[flt], flag, parents)
        body.update(parents)
        if kw.get("all_"):
            body["deleted"] = None
        columns = list(kw["column"] or kind.columns)
        if kw.get("all_tenants"):
            if "tenant" not in columns:
                columns.insert(1, "tenant")
        try:
            items = fetch(bus, tenant, kind, body, kw["limit"])
        except ReadError as e:
            raise fail(e) from None
        output.rows(items, columns, kw["output"], keep=bool(kw["column"]))

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__doc__ = f"List {kind.name}s (from the read models)."
    if kind.name == "healthmonitor":
        run.__doc__ = "List health monitors (one per pool, named by their pool)."
    return run


def show_for(kind: Kind) -> Any:
    what = "pool (its health monitor)" if kind.name == "healthmonitor" else kind.name
    params = [inspect.Parameter("ref", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=Annotated[str, typer.Argument(
                                    metavar="ID-OR-NAME", help=f"The {what}'s id or name.",
                                    autocompletion=complete.ref(kind.name))])]
    for flt in kind.parents:
        parent, flag = PARENT_OPTIONS[flt]
        params.append(_p(flt, Annotated[str | None, typer.Option(
            flag, help=f"The {parent} it belongs to (id or name), for a name used in several.")]))
    params += _common(kind)

    def run(**kw: Any) -> None:
        output.check_format(kw["output"])
        bus = url_of(kw["nats_url"])
        tenant = ADMIN if kind.admin else tenant_of(bus, kw.get("tenant"))
        parents: dict[str, str] = {}
        for flt in kind.parents:
            if kw.get(flt):
                parent, flag = PARENT_OPTIONS[flt]
                parents[flt] = resolve(bus, tenant, parent, kw[flt], flag, parents)
        row = find(bus, tenant, kind, kw["ref"], kind.name.upper(), parents)
        skip = ("status_tree", "state") if kw["output"] in ("table", "value") else ()
        output.one(row, kw["output"], kw["column"], skip=skip)
        if kind.name == "loadbalancer" and kw["output"] == "table" and not kw["column"]:
            output.out.print(f"[dim]the status tree: splice loadbalancer status {kw['ref']}[/]")

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__doc__ = f"Show one {what}, by id or by name."
    return run


def register(groups: dict[str, typer.Typer]) -> None:
    """Add `list` and `show` to each kind's group (made by commands.register), and
    `loadbalancer status`."""
    for kind in KINDS.values():
        if kind.admin:
            continue  # service types have hand-made list/show (servicetypes.py)
        group = groups[kind.name]
        group.command("list")(list_for(kind))
        group.command("show")(show_for(kind))
    groups["loadbalancer"].command("status")(status.status)
    groups["loadbalancer"].command("stats")(lb_stats.stats)
