"""The AsyncAPI 3.0 document of the whole message API: commands, queries, events, heartbeats.

Built from the code that serves them: command bodies, replies and events from the wire
contracts (`splice.events.documents`, the same components as the JSON Schema), the query
channels from the views the projector answers (`splice.projections.views.QUERY_VIEWS`: filters,
paging, rows). It lives in the wiring package because it needs both.

Written from a client's side: it *sends* commands and queries and gets the reply on its own
inbox (NATS request/reply: the reply subject travels with the request, so the reply channels'
address is the `inbox` parameter), *receives* events from the stream, and (an agent) *sends*
heartbeats. Parameters carry their grammar as ``x-pattern`` (AsyncAPI 3.0's Parameter Object has
no schema) or as an ``enum``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from splice.events import subjects
from splice.events.contracts import COMMANDS, EVENT_TYPES, scope_of
from splice.events.documents import components
from splice.events.wire import HostName, Ok, Uuid
from splice.projections.views import QUERY_VIEWS

from . import documents_queries as queries

REF = "#/components/schemas/{name}"
NATS_BINDING = {"nats": {"bindingVersion": "0.1.0"}}
EVENT_HEADERS = {
    subjects.H_TOPIC: "The event's type name (its stable wire name), as in the subject.",
    subjects.H_VERSION: "The aggregate's version after this event.",
    subjects.H_ACTOR: "Who sent the command that made this event.",
    subjects.H_COMMAND_ID: "The command's id.",
    subjects.H_CORRELATION_ID: "The conversation the command belongs to.",
}


def _pattern_of(t: Any) -> str:
    return str(msgspec.json.schema(t)["pattern"])


def _parameters() -> dict[str, Any]:
    aggregates = sorted({agg for agg, _ in COMMANDS})
    return {
        "tenant": {
            "description": (
                "The tenant token of a command: a tenant's name (or `_admin` for the admin "
                "scope, `_host` for agents, in the commands of those scopes)."
            ),
            "examples": ["acme"],
            "x-pattern": queries.TENANT_PATTERN,
        },
        "query_tenant": {
            "description": (
                "The tenant token of a query (the commands' grammar): a tenant's name, or "
                "`_admin`, which sees every tenant's rows."
            ),
            "examples": ["acme", subjects.ADMIN],
            "x-pattern": queries.TENANT_PATTERN,
        },
        "event_tenant": {
            "description": "The event's tenant token: a tenant's name, `_admin` or `_host`.",
            "examples": ["acme", subjects.ADMIN],
            "x-pattern": queries.TENANT_PATTERN,
        },
        "aggregate": {
            "description": (
                "The aggregate's kind (commands name theirs in the subject: "
                f"{', '.join(aggregates)}; some events belong to internal aggregates)."
            ),
            "examples": ["loadbalancer", "servicetype"],
            "x-pattern": "^[a-z][a-z0-9_]*$",
        },
        "id": {
            "description": "The aggregate's id (a lowercase UUID).",
            "x-pattern": _pattern_of(Uuid),
        },
        "type": {
            "description": "The event's type name (also its Splice-Topic header).",
            "enum": list(EVENT_TYPES),
        },
        "host": {
            "description": "The host's name, as its agent registered it.",
            "examples": ["vm"],
            "x-pattern": _pattern_of(HostName),
        },
        "inbox": {
            "description": (
                "The request's reply subject, chosen by the requester: NATS clients' "
                "request() makes an inbox (`_INBOX.<unique>` by default, or the inbox prefix "
                "the credentials allow). The reply is one message on it."
            ),
            "examples": ["_INBOX.kH3ulL4HfTmo8BQRbK3RJK"],
            "x-pattern": "^[!-~]+$",
        },
    }


def _summary(t: type[Any], fallback: str) -> str:
    doc = (t.__doc__ or "").strip()
    line = doc.split("\n\n")[0].replace("\n", " ").strip()
    return line or fallback


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the whole message API, from the contracts and the views."""
    names, schemas = components(
        REF, extra={f"Column.{k}": t for k, t in queries.JSON_COLUMN_TYPES.items()}
    )
    schemas.update(queries.status_schemas())
    schemas["QueryFailed"] = {
        "type": "object",
        "description": "The query was refused (invalid, not_found, forbidden, unavailable, "
                       "internal), naming the field ($.limit) or `subject`.",
        "properties": {"ok": {"enum": [False]}, "error": {"$ref": REF.format(name="Error")}},
        "required": ["ok", "error"],
    }
    if "Error" not in schemas:
        raise ValueError("the replies' Error type is not a component")
    for view in QUERY_VIEWS.values():
        schemas[f"Query.{view.name}"] = queries.query_schema(view)
        schemas[f"Page.{view.name}"] = queries.page_schema(view)
        schemas[f"Row.{view.name}"] = queries.row_schema(view, names)

    def payload(key: str) -> dict[str, Any]:
        return {"$ref": REF.format(name=key)}

    messages: dict[str, Any] = {
        "Ok": {"name": "Ok", "title": "Ok", "summary": _summary(Ok, "Applied."),
               "payload": payload(names["Ok"])},
        "Failed": {"name": "Failed", "title": "Failed",
                   "summary": "Refused, with a stable code and the offending field; appended "
                              "nothing.",
                   "payload": payload(names["Failed"])},
        "QueryFailed": {"name": "QueryFailed", "title": "QueryFailed",
                        "summary": "The query was refused, naming the field.",
                        "payload": payload("QueryFailed")},
        "Heartbeat": {
            "name": "Heartbeat", "title": "Heartbeat",
            "summary": "An agent is alive (core NATS, every 2 s; not an event).",
            "payload": {"description": "Any payload, empty is fine; Splice's agents send "
                                       "{\"host\": …, \"providers\": […]}."},
        },
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    reply_to = {"inbox": {"$ref": "#/components/parameters/inbox"}}
    channels["command_reply"] = {
        "address": "{inbox}",
        "title": "A command's reply",
        "description": "The reply to one command, on the requester's inbox.",
        "parameters": reply_to,
        "messages": {"Ok": {"$ref": "#/components/messages/Ok"},
                     "Failed": {"$ref": "#/components/messages/Failed"}},
    }
    for (agg, verb), cmd in COMMANDS.items():
        name = names[f"{agg}.{verb}"]
        summary = _summary(cmd, f"{agg}.{verb}")
        messages[name] = {"name": name, "title": f"{agg}.{verb}", "summary": summary,
                          "payload": payload(name)}
        scope = scope_of(agg, verb)
        tenant = {"admin": subjects.ADMIN, "host": subjects.HOSTS}.get(scope, "{tenant}")
        channel: dict[str, Any] = {
            "address": subjects.command(tenant, agg, verb),
            "title": f"{agg}.{verb}",
            "description": f"Requests of {agg}.{verb} ({scope} scope); the reply is Ok or "
                           "Failed on the requester's inbox.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        if tenant == "{tenant}":
            channel["parameters"] = {"tenant": {"$ref": "#/components/parameters/tenant"}}
        channels[f"cmd_{agg}_{verb}"] = channel
        operations[f"send_{agg}_{verb}"] = {
            "action": "send",
            "title": f"{agg}.{verb}",
            "summary": summary,
            "channel": {"$ref": f"#/channels/cmd_{agg}_{verb}"},
            "messages": [{"$ref": f"#/channels/cmd_{agg}_{verb}/messages/{name}"}],
            "reply": {
                "channel": {"$ref": "#/channels/command_reply"},
                "messages": [{"$ref": "#/channels/command_reply/messages/Ok"},
                             {"$ref": "#/channels/command_reply/messages/Failed"}],
            },
            "bindings": NATS_BINDING,
        }
    query_reply: dict[str, Any] = {"QueryFailed": {"$ref": "#/components/messages/QueryFailed"}}
    for view in QUERY_VIEWS.values():
        q, page = f"query.{view.name}", f"page.{view.name}"
        messages[q] = {"name": q, "title": f"query {view.name}",
                       "summary": f"Filters and paging of a {view.name} query.",
                       "payload": payload(f"Query.{view.name}")}
        messages[page] = {"name": page, "title": f"{view.name} page",
                          "summary": f"A page of {view.name} rows.",
                          "payload": payload(f"Page.{view.name}")}
        query_reply[page] = {"$ref": f"#/components/messages/{page}"}
        channels[f"qry_{view.name}"] = {
            "address": subjects.query("{tenant}", view.name),
            "title": f"query {view.name}",
            "description": f"Queries of the {view.name} read model; the reply is a page or "
                           "QueryFailed on the requester's inbox.",
            "parameters": {"tenant": {"$ref": "#/components/parameters/query_tenant"}},
            "messages": {q: {"$ref": f"#/components/messages/{q}"}},
        }
        operations[f"query_{view.name}"] = {
            "action": "send",
            "title": f"query {view.name}",
            "summary": f"Read the {view.name} view: filters, keyset paging, read-your-writes.",
            "channel": {"$ref": f"#/channels/qry_{view.name}"},
            "messages": [{"$ref": f"#/channels/qry_{view.name}/messages/{q}"}],
            "reply": {
                "channel": {"$ref": "#/channels/query_reply"},
                "messages": [{"$ref": f"#/channels/query_reply/messages/{page}"},
                             {"$ref": "#/channels/query_reply/messages/QueryFailed"}],
            },
            "bindings": NATS_BINDING,
        }
    channels["query_reply"] = {
        "address": "{inbox}",
        "title": "A query's reply",
        "description": "The reply to one query, on the requester's inbox.",
        "parameters": reply_to,
        "messages": query_reply,
    }
    schemas["EventHeaders"] = {
        "type": "object",
        "description": "The headers of every stored event message.",
        "properties": {h: {"type": "string", "description": d} for h, d in EVENT_HEADERS.items()},
        "required": list(EVENT_HEADERS),
    }
    for type_name in EVENT_TYPES:
        messages[type_name] = {
            "name": type_name,
            "title": type_name,
            "summary": _summary(EVENT_TYPES[type_name], type_name),
            "headers": {"$ref": REF.format(name="EventHeaders")},
            "payload": payload(names[type_name]),
        }
    channels["events"] = {
        "address": subjects.event("{tenant}", "{aggregate}", "{id}", "{type}"),
        "title": "Events",
        "description": f"The stored events: JetStream stream {subjects.STREAM} (read it with a "
                       "consumer; a subject filter selects a tenant, a kind, an aggregate, a "
                       "type). Global order is the stream sequence.",
        "parameters": {
            "tenant": {"$ref": "#/components/parameters/event_tenant"},
            "aggregate": {"$ref": "#/components/parameters/aggregate"},
            "id": {"$ref": "#/components/parameters/id"},
            "type": {"$ref": "#/components/parameters/type"},
        },
        "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in EVENT_TYPES},
    }
    operations["receive_events"] = {
        "action": "receive",
        "title": "Events",
        "summary": "Follow the event stream (a JetStream consumer, filtered by subject).",
        "channel": {"$ref": "#/channels/events"},
        "bindings": NATS_BINDING,
    }
    channels["heartbeats"] = {
        "address": subjects.heartbeat("{host}"),
        "title": "Heartbeats",
        "description": "An agent's liveness, on core NATS; a host silent for "
                       "SPLICE_HOST_TIMEOUT (10 s) is declared lost.",
        "parameters": {"host": {"$ref": "#/components/parameters/host"}},
        "messages": {"Heartbeat": {"$ref": "#/components/messages/Heartbeat"}},
    }
    operations["send_heartbeat"] = {
        "action": "send",
        "title": "Heartbeat",
        "summary": "An agent says its host is alive, every 2 seconds after host.register.",
        "channel": {"$ref": "#/channels/heartbeats"},
        "bindings": NATS_BINDING,
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Splice message API",
            "version": "1",
            "description": (
                "Commands are NATS requests on splice.cmd.<tenant>.<aggregate>.<verb> (replies "
                "Ok or Failed); queries are requests on splice.qry.<tenant>.<view>; events are "
                f"the JetStream stream {subjects.STREAM}; agents heartbeat on "
                "splice.hb.<host>. Bodies are JSON; the JSON Schema of the same contracts is "
                "`splice schema`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "{host}:{port}",
                "protocol": "nats",
                "title": "NATS",
                "summary": "Any NATS server Splice's services use.",
                "description": "`splice up` prints its URL (port 4222 when free); any NATS "
                               "URL and credentials can be given instead.",
                "variables": {
                    "host": {"default": "localhost", "description": "The server's host."},
                    "port": {"default": "4222", "description": "The server's client port."},
                },
                "bindings": {"nats": {}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": _parameters(),
        },
    }
