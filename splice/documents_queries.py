"""The query channels' schemas in the AsyncAPI document: each view's request, page and rows.

From the views the projector answers (`splice.projections.views`): their filters, paging and
columns; json columns whose values are contract types point at those types' schemas.
"""

from __future__ import annotations

from typing import Any

import msgspec

from splice.events import subjects
from splice.events.lbaas import HealthMonitor, L7Policy, SessionPersistence
from splice.events.wire import InsertionState
from splice.projections.queries import DEFAULT_LIMIT, MAX_LIMIT
from splice.projections.schema import Column
from splice.projections.views import View

REF = "#/components/schemas/{name}"
# One tenant-token grammar for command and query subjects (and a query's `tenant`).
TENANT_PATTERN = f"^(?:{subjects.TENANT_TOKEN.pattern})$"

# json columns of the views whose values are one of the contracts' types.
JSON_COLUMN_TYPES: dict[str, Any] = {
    "insertion": InsertionState | None,
    "healthmonitor": HealthMonitor | None,
    "session_persistence": SessionPersistence | None,
    "l7policies": list[L7Policy],
}

def column_schema(view: View, col: Column, names: dict[str, str]) -> dict[str, Any]:
    if col.name == "status_tree":
        return {"$ref": REF.format(name="StatusTree")}
    if col.type == "json":
        if col.name in JSON_COLUMN_TYPES:
            return {"$ref": REF.format(name=names[f"Column.{col.name}"])}
        if col.name in ("providers", "labels"):
            return {"type": "object", "additionalProperties": {"type": "string"}}
        return {"description": "A JSON value."}
    base = {
        "text": {"type": "string"},
        "int": {"type": "integer"},
        "bool": {"type": "boolean"},
        "time": {"type": "string", "format": "date-time"},
    }[col.type]
    if col.name in view.table().key:
        return base
    return {"oneOf": [base, {"type": "null"}]}


def row_schema(view: View, names: dict[str, str]) -> dict[str, Any]:
    table = view.table()
    props = {
        view.rename.get(c.name, c.name): column_schema(view, c, names)
        for c in table.columns
        if c.name not in view.hidden
    }
    return {
        "type": "object",
        "description": f"One row of the {view.name} view.",
        "properties": props,
        "required": list(props),
    }


def filter_schema(view: View, name: str) -> dict[str, Any]:
    flt = view.filters[name]
    col = view.table().column(flt.column)
    op = {"=": "equal to", ">=": "at least", "<": "less than", "<=": "at most",
          "contains": "containing"}[flt.op]
    description = f"Rows whose {flt.column} is {op} this value; null: no filter."
    if name in view.defaults:
        description += f" Default: {msgspec.json.encode(view.defaults[name]).decode()}."
    value: dict[str, Any]
    if col.type == "time":
        value = {"oneOf": [{"type": "string", "format": "date-time"},
                           {"type": "integer", "description": "nanoseconds since the epoch"}]}
    elif flt.type is bool:
        value = {"type": "boolean"}
    elif flt.type is int:
        value = {"type": "integer"}
    else:
        value = {"type": "string", "maxLength": 256, "pattern": "^[^\\x00-\\x1f]*$"}
    return {"description": description, "oneOf": [value, {"type": "null"}]}


def query_schema(view: View) -> dict[str, Any]:
    props: dict[str, Any] = {
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                  "default": DEFAULT_LIMIT, "description": "Items per page."},
        "cursor": {"oneOf": [{"type": "string"}, {"type": "null"}],
                   "description": "The previous page's `next` (keyset paging); not with offset."},
        "offset": {"type": "integer", "minimum": 0, "default": 0,
                   "description": "Skip this many items (simple clients); not with cursor."},
        "min_seq": {"type": "integer", "minimum": 0, "default": 0,
                    "description": "Wait until the view has applied this stream sequence (a "
                                   "command reply's `seq`): read your own writes."},
        "wait": {"type": "integer", "minimum": 0, "maximum": 30, "default": 5,
                 "description": "Seconds to wait for min_seq before answering unavailable."},
    }
    if view.scope == "tenant":
        props["tenant"] = {
            "type": "string", "pattern": TENANT_PATTERN,
            "description": "Only `_admin` may give it: the rows of this tenant only.",
        }
    for name in view.filters:
        props[name] = filter_schema(view, name)
    scope = ("each tenant sees its own rows; `_admin` sees every tenant's"
             if view.scope == "tenant" else "admin-scoped: every tenant reads all rows")
    return {
        "type": "object",
        "description": f"A query of the {view.name} view ({scope}). An unknown key is invalid.",
        "properties": props,
        "additionalProperties": False,
    }


def page_schema(view: View) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"A page of the {view.name} view.",
        "properties": {
            "ok": {"enum": [True]},
            "items": {"type": "array", "items": {"$ref": REF.format(name=f"Row.{view.name}")}},
            "next": {"oneOf": [{"type": "string"}, {"type": "null"}],
                     "description": "The cursor of the next page; null on the last page."},
            "position": {"type": "integer",
                         "description": "The stream sequence the view had applied."},
        },
        "required": ["ok", "items", "next", "position"],
    }


def status_schemas() -> dict[str, Any]:
    def node(extra: dict[str, Any], required: list[str]) -> dict[str, Any]:
        props = {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "provisioning_status": {"type": "string"},
            "operating_status": {"type": "string"},
            **extra,
        }
        return {"type": "object", "properties": props,
                "required": ["id", "name", "provisioning_status", "operating_status", *required]}

    pools = {"type": "array", "items": {"$ref": REF.format(name="StatusTree.pool")}}
    return {
        "StatusTree": {
            "type": "object",
            "description": "Octavia's status tree of one load balancer (both statuses).",
            "properties": {"loadbalancer": {"$ref": REF.format(name="StatusTree.loadbalancer")}},
            "required": ["loadbalancer"],
        },
        "StatusTree.loadbalancer": node(
            {"listeners": {"type": "array",
                           "items": {"$ref": REF.format(name="StatusTree.listener")}},
             "pools": pools},
            ["listeners", "pools"],
        ),
        "StatusTree.listener": node({"pools": pools}, ["pools"]),
        "StatusTree.pool": node(
            {"members": {"type": "array", "items": {"$ref": REF.format(name="StatusTree.member")}},
             "healthmonitor": {"type": "object",
                               "properties": {"type": {"type": "string"},
                                              "provisioning_status": {"type": "string"}},
                               "required": ["type", "provisioning_status"]}},
            ["members"],
        ),
        "StatusTree.member": node(
            {"address": {"type": "string"}, "protocol_port": {"type": "integer"}},
            ["address", "protocol_port"],
        ),
    }
