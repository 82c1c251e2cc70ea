"""Wire contracts: the index of every command, reply and event.

Every command, reply and event that crosses NATS is a msgspec Struct defined in `wire.py`,
`network.py`, `lbaas.py` or `advanced.py`. Tags are explicit and stable (a class rename does not
change the wire); constraints are types, defined once in `wire.py`. Unknown fields are ignored on
decode, so adding an optional field is a compatible change.

Commands are requests on ``splice.cmd.<tenant>.<aggregate>.<verb>``; a command's tag is
``<aggregate>.<verb>``, so the subject names the command and the body needs no type field.
Scopes: a tenant's own commands use its name as the tenant token; admin commands use
``_admin``; agents' commands use ``_host``.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import msgspec

from . import advanced, lbaas, lbaas_commands, network
from .advanced import *  # noqa: F403 - re-exported contracts
from .lbaas import *  # noqa: F403
from .lbaas_commands import *  # noqa: F403
from .network import *  # noqa: F403
from .wire import *  # noqa: F403
from .wire import Command, EventMeta, Failed, Ok

ADMIN_TENANT = "_admin"
HOST_TENANT = "_host"

_FAMILIES = (network, lbaas, lbaas_commands, advanced)


def _defined(base: type[Any]) -> list[Any]:
    """The tagged Structs deriving from `base` that the families define, in their order."""
    return [v for mod in _FAMILIES for v in vars(mod).values()
            if isinstance(v, type) and issubclass(v, base) and v.__module__ == mod.__name__
            and cast(Any, v).__struct_config__.tag is not None]


_ALL_COMMANDS: tuple[type[Command], ...] = tuple(_defined(Command))
_ALL_EVENTS: tuple[type[EventMeta], ...] = tuple(_defined(EventMeta))


def _tag(t: type[Any]) -> str:
    return str(msgspec.inspect.type_info(t).tag)  # type: ignore[attr-defined]


# (aggregate, verb) of the subject -> command type. One explicit table, no self-registration.
COMMANDS: dict[tuple[str, str], type[Command]] = {
    (_tag(t).split(".")[0], _tag(t).split(".")[1]): t for t in _ALL_COMMANDS
}

Scope = Literal["tenant", "admin", "host"]
# Commands outside the tenant scope. Everything else belongs to a tenant.
SCOPES: dict[tuple[str, str], Scope] = {
    ("servicetype", "create"): "admin",
    ("servicetype", "update"): "admin",
    ("servicetype", "set_default"): "admin",
    ("servicetype", "delete"): "admin",
    ("quota", "set"): "admin",
    ("host", "lost"): "admin",
    ("host", "register"): "host",
    ("loadbalancer", "report"): "host",
    ("loadbalancer", "report_status"): "host",
}


def scope_of(aggregate: str, verb: str) -> Scope:
    return SCOPES.get((aggregate, verb), "tenant")


EVENTS: tuple[type[EventMeta], ...] = _ALL_EVENTS
EVENT_TYPES: dict[str, type[EventMeta]] = {_tag(t): t for t in _ALL_EVENTS}


def json_schema() -> dict[str, Any]:
    """One JSON Schema document with every command, reply and event."""
    types: list[Any] = [*COMMANDS.values(), Ok, Failed, *EVENTS]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    n = len(COMMANDS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Splice wire contracts",
        "commands": {
            f"splice.cmd.{_subject_tenant(agg, verb)}.{agg}.{verb}": s
            for (agg, verb), s in zip(COMMANDS, schemas[:n], strict=True)
        },
        "replies": {"Ok": schemas[n], "Failed": schemas[n + 1]},
        "events": dict(zip(EVENT_TYPES, schemas[n + 2 :], strict=True)),
        "$defs": components,
    }


def _subject_tenant(aggregate: str, verb: str) -> str:
    return {"admin": ADMIN_TENANT, "host": HOST_TENANT, "tenant": "<tenant>"}[
        scope_of(aggregate, verb)
    ]


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the whole message API, from the same types."""
    types: list[Any] = [*COMMANDS.values(), Ok, Failed, *EVENTS]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {
        "Ok": {"name": "Ok", "payload": {"$ref": "#/components/schemas/Ok"}},
        "Failed": {"name": "Failed", "payload": {"$ref": "#/components/schemas/Failed"}},
    }
    for (agg, verb), cmd in COMMANDS.items():
        name = cmd.__name__
        messages[name] = {
            "name": name,
            "title": f"{agg}.{verb}",
            "summary": (cmd.__doc__ or "").strip().split("\n")[0],
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        channel = f"cmd_{agg}_{verb}"
        tenant = _subject_tenant(agg, verb)
        channels[channel] = {
            "address": f"splice.cmd.{'{tenant}' if tenant == '<tenant>' else tenant}.{agg}.{verb}",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            **(
                {"parameters": {"tenant": {"description": "the tenant's name"}}}
                if tenant == "<tenant>"
                else {}
            ),
        }
        channels[f"{channel}_reply"] = {
            "address": None,
            "messages": {
                "Ok": {"$ref": "#/components/messages/Ok"},
                "Failed": {"$ref": "#/components/messages/Failed"},
            },
        }
        operations[f"send_{agg}_{verb}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "reply": {"channel": {"$ref": f"#/channels/{channel}_reply"}},
        }
    for type_name in EVENT_TYPES:
        messages[type_name] = {
            "name": type_name,
            "headers": {
                "type": "object",
                "properties": {
                    h: {"type": "string"}
                    for h in (
                        "Splice-Topic",
                        "Splice-Version",
                        "Splice-Actor",
                        "Splice-Command-Id",
                        "Splice-Correlation-Id",
                    )
                },
            },
            "payload": {"$ref": f"#/components/schemas/{type_name}"},
        }
    channels["events"] = {
        "address": "splice.evt.{tenant}.{aggregate}.{id}.{type}",
        "parameters": {
            "tenant": {"description": "tenant, or _admin / _host"},
            "aggregate": {"description": "the aggregate's kind"},
            "id": {"description": "the aggregate's uuid"},
            "type": {"description": "the event's type name", "enum": list(EVENT_TYPES)},
        },
        "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in EVENT_TYPES},
    }
    operations["receive_events"] = {"action": "receive", "channel": {"$ref": "#/channels/events"}}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Splice message API",
            "version": "1",
            "description": "Commands (request/reply) and events (JetStream stream SPLICE_EVENTS).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components, "messages": messages},
    }
