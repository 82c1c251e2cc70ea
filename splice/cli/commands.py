"""CLI verbs for every command, made from the commands' own msgspec types.

`splice <aggregate> <verb> [ID] --field value ...` sends ``splice.cmd.<tenant>.<aggregate>.<verb>``.
Scalars are options (`--protocol-port 80`, `--admin-state-up/--no-admin-state-up`); lists,
objects and nested structures take JSON (`--pools '[{"name": "web", ...}]'`); a mapping of
strings also takes repeated KEY=VALUE. The body is checked by the service, not here: the CLI
stays a thin, honest client of the wire API.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from typing import Annotated, Any, Literal

import msgspec
import typer
from nats.errors import NoRespondersError
from rich.markup import escape

from splice import client
from splice.cli import complete, created, wait
from splice.cli.common import ADMIN, TenantOpt, err, out, tenant_of, url_of
from splice.cli.errors import explain, unwrap
from splice.cli.kinds import ID_OPTIONS, KINDS
from splice.cli.resolve import resolve
from splice.events.contracts import COMMANDS, Command, scope_of

COMMON = {"command_id", "actor", "correlation_id"}
HANDWRITTEN = {"servicetype"}  # richer verbs live in servicetypes.py


def send(
    nats_url: str | None,
    aggregate: str,
    verb: str,
    body: dict[str, Any],
    output: str,
    tenant: str | None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Send one command and print its reply; exits 1 when it is refused, 3 without a reply.
    Without a tenant: the credentials' own tenant, else a usage error naming --tenant."""
    url = url_of(nats_url)
    tenant = tenant_of(url, tenant)
    body = client.command_body(body)
    subject = f"splice.cmd.{tenant}.{aggregate}.{verb}"
    try:
        reply = asyncio.run(client.request(url, subject, body, timeout))
    except NoRespondersError:
        reply = client.forbidden(url, f"{tenant}'s commands") if url.tenant else {
            "ok": False, "error": {"code": "unavailable", "message": "no command service answers",
                                   "field": None}}
    except Exception as e:
        err.print(f"[red]no reply[/] on {subject}: {e}")
        raise typer.Exit(3) from e
    if output == "json":
        out.print_json(json.dumps(reply))
    elif output == "value" and reply.get("ok"):
        print(reply["id"])  # the id alone, for scripts: ID=$(splice ... -o value)
    elif reply.get("ok"):
        out.print(
            f"[green]ok[/] id={reply['id']} version={reply['version']} seq={reply['seq']} "
            f"command_id={reply['command_id']}", soft_wrap=True
        )
        children = created.tree(reply)
        if children is not None:
            out.print(children)
    else:
        text = explain(COMMANDS.get((aggregate, verb)), reply.get("error") or {})
        code, _, rest = text.partition(": ")
        out.print(f"[red]{escape(code)}[/]: {escape(rest)}", highlight=False)
    if not reply.get("ok"):
        raise typer.Exit(1)
    return reply


def _base(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """The type under Optional[...] and constraints (Metadata)."""
    if isinstance(info, msgspec.inspect.UnionType):
        types = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(types) == 1:
            info = types[0]
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    return info


def _help(info: msgspec.inspect.Type, field_doc: str | None) -> str | None:
    """The option's help: the contract's own words (the type's or the field's description)."""
    _, notes = unwrap(info)
    return field_doc or (notes[-1] if notes else None)


def _param(name: str, info: msgspec.inspect.Type, required: bool,
           field_doc: str | None = None) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    base = _base(info)
    doc = _help(info, field_doc)
    default: Any = inspect.Parameter.empty if required else None
    annotation: Any
    if isinstance(base, msgspec.inspect.BoolType):
        annotation = Annotated[bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=doc)]
    elif isinstance(base, msgspec.inspect.IntType):
        annotation = Annotated[int | None, typer.Option(flag, help=doc)]
    elif isinstance(base, msgspec.inspect.LiteralType) and all(
            isinstance(v, str) for v in base.values):
        choice: Any = Literal[tuple(base.values)]  # typer checks it and lists the values
        annotation = Annotated[choice | None, typer.Option(flag, help=doc)]
    elif isinstance(base, msgspec.inspect.StrType | msgspec.inspect.LiteralType):
        if name in ID_OPTIONS:
            doc = f"The {ID_OPTIONS[name]}'s id or name."
            annotation = Annotated[str | None, typer.Option(
                flag, help=doc, autocompletion=complete.ref(ID_OPTIONS[name]))]
        else:
            annotation = Annotated[str | None, typer.Option(flag, help=doc)]
    elif isinstance(base, msgspec.inspect.DictType) and isinstance(
        base.value_type, (msgspec.inspect.StrType, msgspec.inspect.LiteralType)
    ):
        annotation = Annotated[list[str] | None, typer.Option(
            flag, help=f"{doc + ': ' if doc else ''}KEY=VALUE (repeat), or one JSON object")]
    else:
        annotation = Annotated[str | None, typer.Option(
            flag, help=f"{doc + ' ' if doc else ''}(JSON)")]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


def _value(raw: Any) -> Any:
    if isinstance(raw, list):  # KEY=VALUE pairs, or one JSON object
        if len(raw) == 1 and raw[0].lstrip().startswith("{"):
            return json.loads(raw[0])
        out = {}
        for item in raw:
            k, sep, v = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"{item!r}: expected KEY=VALUE")
            out[k] = v
        return out or None
    if isinstance(raw, str) and raw[:1] in "[{":
        try:
            return json.loads(raw)
        except ValueError as e:
            raise typer.BadParameter(f"not JSON: {e}") from e
    return raw


def command_for(app: typer.Typer, aggregate: str, verb: str, cmd: type[Command]) -> None:
    info = msgspec.inspect.type_info(cmd)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = [f for f in info.fields if f.name not in COMMON]
    params: list[inspect.Parameter] = []
    if any(f.name == "id" for f in fields):
        params.append(
            inspect.Parameter("id", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              annotation=Annotated[str, typer.Argument(
                                  metavar="ID", help=f"The {aggregate}'s id"
                                  + (" or name." if aggregate in KINDS else "."),
                                  autocompletion=complete.ref(aggregate)
                                  if aggregate in KINDS else None)])
        )
    docs = _field_docs(cmd)
    params += [_param(f.name, f.type, f.required, docs.get(f.name))
               for f in fields if f.name != "id"]
    scope = scope_of(aggregate, verb)
    opt = inspect.Parameter.KEYWORD_ONLY
    if scope == "tenant":
        params.append(inspect.Parameter("tenant", opt, default=None, annotation=TenantOpt))
    if wait.waits(aggregate, verb):
        params += [
            inspect.Parameter("wait_", opt, default=False, annotation=Annotated[bool, typer.Option(
                "--wait", help="Wait until a host has converged the load balancer (ACTIVE"
                + (", or gone" if verb == "delete" and aggregate == "loadbalancer" else "")
                + "); exit 1 on ERROR, 4 on --timeout.")]),
            inspect.Parameter("timeout", opt, default=wait.DEFAULT_TIMEOUT,
                              annotation=Annotated[float, typer.Option(
                                  help="With --wait: give up after this many seconds.")]),
        ]
    params += [
        inspect.Parameter("command_id", opt, default=None,
                          annotation=Annotated[str | None, typer.Option(help="Idempotency key.")]),
        inspect.Parameter("nats_url", opt, default=None,
                          annotation=Annotated[str | None, typer.Option(envvar="SPLICE_NATS_URL")]),
        inspect.Parameter("output", opt, default="table",
                          annotation=Annotated[str, typer.Option("-o", "--output", help="table|json|value (the id alone)")]),
    ]

    def run(**kwargs: Any) -> None:
        tenant = {"admin": "_admin", "host": "_host"}.get(scope) or kwargs.pop("tenant")
        nats_url, output = kwargs.pop("nats_url"), kwargs.pop("output")
        waiting, timeout = kwargs.pop("wait_", False), kwargs.pop("timeout", None)
        body = {k: _value(v) for k, v in kwargs.items() if v not in (None, [])}
        body.setdefault("actor", os.environ.get("SPLICE_ACTOR") or "cli")
        if any(k in ID_OPTIONS or k == "id" for k in body):
            bus = url_of(nats_url)
            names_to_ids(bus, tenant_of(bus, body.get("tenant") or tenant), aggregate, body)
        reply = send(nats_url, aggregate, verb, body, output, tenant)
        if waiting:
            bus = url_of(nats_url)
            wait.wait(bus, tenant_of(bus, tenant), wait.loadbalancer_of(aggregate, body, reply),
                      deleting=(aggregate, verb) == ("loadbalancer", "delete"),
                      timeout=float(timeout or wait.DEFAULT_TIMEOUT))

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__doc__ = (cmd.__doc__ or f"{aggregate} {verb}").strip().split("\n\n")[0]
    app.command(verb.replace("_", "-"))(run)


def names_to_ids(bus: client.Bus, tenant: str, aggregate: str, body: dict[str, Any]) -> None:
    """Replace the names in the body's id fields by ids (parents first: a pool's name is
    looked up within the load balancer the command names)."""
    order = [k for k in ID_OPTIONS if k in body] + (["id"] if "id" in body else [])
    for key in order:
        kind = aggregate if key == "id" else ID_OPTIONS[key]
        if kind not in KINDS or not isinstance(body[key], str):
            continue
        flag = "ID" if key == "id" else "--" + key.replace("_", "-")
        body[key] = resolve(bus, ADMIN if KINDS[kind].admin else tenant, kind, body[key], flag,
                            {k: v for k, v in body.items() if k in ID_OPTIONS})


def _field_docs(cmd: type[Command]) -> dict[str, str]:
    """Each field's description in the command's JSON Schema (the contracts' docs)."""
    try:
        schema = msgspec.json.schema(cmd)
    except Exception:  # a contract the schema generator cannot render: no docs
        return {}
    props = schema.get("$defs", {}).get(cmd.__name__, schema).get("properties", {})
    return {k: v["description"] for k, v in props.items() if v.get("description")}


def register(root: typer.Typer) -> dict[str, typer.Typer]:
    """Add a sub-command per aggregate with a command per verb; the groups, by aggregate."""
    groups: dict[str, typer.Typer] = {}
    for (aggregate, verb), cmd in COMMANDS.items():
        if aggregate in HANDWRITTEN:
            continue
        g = groups.get(aggregate)
        if g is None:
            g = groups[aggregate] = typer.Typer(no_args_is_help=True, help=f"{aggregate} commands")
            root.add_typer(g, name=aggregate)
        command_for(g, aggregate, verb, cmd)
    return groups
