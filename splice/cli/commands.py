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
from typing import Annotated, Any

import msgspec
import typer
from nats.errors import NoRespondersError

from splice import client
from splice.cli.common import err, out, url_of
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
    Without a tenant: the credentials' own tenant, else `demo`."""
    url = url_of(nats_url)
    if tenant is None:
        tenant = url.tenant if url.tenant and not url.tenant.startswith("_") else "demo"
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
            f"command_id={reply['command_id']}"
        )
    else:
        problem = reply.get("error", {})
        out.print(
            f"[red]{problem.get('code')}[/]: {problem.get('message')} "
            f"(field: {problem.get('field')})"
        )
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


def _param(name: str, info: msgspec.inspect.Type, required: bool) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    base = _base(info)
    annotation: Any
    if isinstance(base, msgspec.inspect.BoolType):
        annotation = Annotated[bool | None, typer.Option(f"{flag}/--no-{flag[2:]}")]
    elif isinstance(base, msgspec.inspect.IntType):
        annotation = Annotated[int | None, typer.Option(flag)]
    elif isinstance(base, msgspec.inspect.LiteralType):
        values = "|".join(str(v) for v in base.values)
        annotation = Annotated[str | None, typer.Option(flag, help=values)]
    elif isinstance(base, msgspec.inspect.StrType):
        annotation = Annotated[str | None, typer.Option(flag)]
    elif isinstance(base, msgspec.inspect.DictType) and isinstance(
        base.value_type, (msgspec.inspect.StrType, msgspec.inspect.LiteralType)
    ):
        annotation = Annotated[
            list[str] | None, typer.Option(flag, help="KEY=VALUE (repeat), or one JSON object")
        ]
    else:
        annotation = Annotated[str | None, typer.Option(flag, help="JSON")]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


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
                              annotation=Annotated[str, typer.Argument()])
        )
    params += [_param(f.name, f.type, f.required) for f in fields if f.name != "id"]
    scope = scope_of(aggregate, verb)
    opt = inspect.Parameter.KEYWORD_ONLY
    if scope == "tenant":
        params.append(inspect.Parameter(
            "tenant", opt, default=None,
            annotation=Annotated[str | None, typer.Option(
                envvar="SPLICE_TENANT",
                help="Your tenant (default: your credentials' tenant, else demo).")]))
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
        body = {k: _value(v) for k, v in kwargs.items() if v not in (None, [])}
        body.setdefault("actor", os.environ.get("SPLICE_ACTOR") or "cli")
        send(nats_url, aggregate, verb, body, output, tenant)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__doc__ = (cmd.__doc__ or f"{aggregate} {verb}").strip().split("\n\n")[0]
    app.command(verb.replace("_", "-"))(run)


def register(root: typer.Typer) -> None:
    """Add a sub-command per aggregate with a command per verb."""
    groups: dict[str, typer.Typer] = {}
    for (aggregate, verb), cmd in COMMANDS.items():
        if aggregate in HANDWRITTEN:
            continue
        g = groups.get(aggregate)
        if g is None:
            g = groups[aggregate] = typer.Typer(no_args_is_help=True, help=f"{aggregate} commands")
            root.add_typer(g, name=aggregate)
        command_for(g, aggregate, verb, cmd)
