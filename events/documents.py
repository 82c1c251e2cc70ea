"""The JSON Schema of the wire contracts: every command, reply and event, generated from the types.

One JSON Schema (draft 2020-12) document. Its root asserts nothing; every message is a named
definition, reachable by a JSON pointer:

    #/$defs/commands/$defs/<aggregate>.<verb>   the body of a request on
                                                splice.cmd.<tenant>.<aggregate>.<verb>
    #/$defs/replies/$defs/Ok | Failed           a command's reply
    #/$defs/events/$defs/<EventType>            the payload of one stored event
    #/$defs/<TypeName>                          the types they are made of (msgspec's components)

Only standard keywords are used, so validators in strict mode (ajv's default) compile it, and
every pattern means the same under ECMA-262's ``u`` flag as in Python. A command's ``type`` is
optional (the subject names the command; given, it must be the command's tag).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .contracts import ADMIN_TENANT, COMMANDS, EVENT_TYPES, HOST_TENANT, scope_of
from .wire import Failed, Ok

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:splice:wire-contracts"
TAG_FIELD = "type"


def subject_tenant(aggregate: str, verb: str) -> str:
    """The tenant token of a command's subject: ``_admin``, ``_host``, or ``<tenant>``."""
    return {"admin": ADMIN_TENANT, "host": HOST_TENANT, "tenant": "<tenant>"}[
        scope_of(aggregate, verb)
    ]


def components(
    ref_template: str, extra: dict[str, Any] | None = None
) -> tuple[dict[str, str], dict[str, Any]]:
    """Every command, reply and event type (and the `extra` types) as a schema component.

    Returns (the component name of each message, by its wire name: ``servicetype.create``,
    ``Ok``, ``ServiceTypeCreated``, or its key in `extra`, which names the component of a type
    that is not a Struct; the components). Commands' ``type`` is not required.
    """
    named: dict[str, Any] = {
        **{f"{agg}.{verb}": t for (agg, verb), t in COMMANDS.items()},
        "Ok": Ok,
        "Failed": Failed,
        **EVENT_TYPES,
        **(extra or {}),
    }
    refs, comps = msgspec.json.schema_components(list(named.values()), ref_template=ref_template)
    prefix = ref_template.split("{name}")[0]
    names: dict[str, str] = {}
    for key, ref in zip(named, refs, strict=True):
        if "$ref" in ref:
            names[key] = ref["$ref"].removeprefix(prefix)
        else:  # not a Struct (an optional one, a list of them): a component of its own
            names[key] = key
            comps[key] = ref
    for agg, verb in COMMANDS:
        comp = comps[names[f"{agg}.{verb}"]]
        required = [f for f in comp.get("required", []) if f != TAG_FIELD]
        if required:
            comp["required"] = required
        else:
            comp.pop("required", None)
    _strict_commands(comps, [names[f"{agg}.{verb}"] for agg, verb in COMMANDS], prefix)
    return names, comps


def _refs(schema: Any, prefix: str) -> set[str]:
    """The component names `schema` refers to directly."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(prefix):
                found.add(value.removeprefix(prefix))
            else:
                found |= _refs(value, prefix)
    elif isinstance(schema, list):
        for value in schema:
            found |= _refs(value, prefix)
    return found


def _reachable(comps: dict[str, Any], roots: list[str], prefix: str) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_refs(comps[name], prefix) - seen)
    return seen


def _retarget(schema: Any, prefix: str, renamed: dict[str, str]) -> Any:
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            name = value.removeprefix(prefix) if key == "$ref" and isinstance(value, str) else ""
            out[key] = prefix + renamed[name] if name in renamed else _retarget(
                value, prefix, renamed
            )
        return out
    if isinstance(schema, list):
        return [_retarget(v, prefix, renamed) for v in schema]
    return schema


def _strict_commands(comps: dict[str, Any], commands: list[str], prefix: str) -> None:
    """Commands refuse unknown fields at any depth; events tolerate them.

    Every object type a command is made of gets ``additionalProperties: false``; a type that
    events use too is copied first (``<Name>.command``), so events stay open.
    """
    others = [n for n in comps if n not in commands]
    strict = _reachable(comps, commands, prefix)
    shared = strict & _reachable(comps, [n for n in others if n not in strict], prefix)
    renamed = {name: f"{name}.command" for name in sorted(shared)}
    clash = set(renamed.values()) & set(comps)
    if clash:
        raise ValueError(f"strict copies clash with components: {sorted(clash)}")
    for name in renamed:
        comps[renamed[name]] = comps[name]
    for name in [*(strict - shared), *renamed.values()]:
        comp = _retarget(comps[name], prefix, renamed)
        if "properties" in comp:
            comp["additionalProperties"] = False
        comps[name] = comp


def json_schema() -> dict[str, Any]:
    """One JSON Schema document with every command, reply and event, each reachable by name."""
    names, comps = components("#/$defs/{name}")

    def ref(key: str, description: str) -> dict[str, Any]:
        return {"$ref": f"#/$defs/{names[key]}", "description": description}

    commands = {
        f"{agg}.{verb}": ref(
            f"{agg}.{verb}",
            f"A request on splice.cmd.{subject_tenant(agg, verb)}.{agg}.{verb}.",
        )
        for agg, verb in COMMANDS
    }
    events = {
        name: ref(name, f"The payload of a {name} event (subject splice.evt.….{name}).")
        for name in EVENT_TYPES
    }
    groups = {
        "commands": {
            "description": "Command bodies by <aggregate>.<verb>; replies are Ok or Failed.",
            "$defs": commands,
        },
        "replies": {
            "description": "A command's reply.",
            "$defs": {
                "Ok": ref("Ok", "The command was applied."),
                "Failed": ref("Failed", "The command was refused; it appended nothing."),
            },
        },
        "events": {
            "description": "Event payloads by event type (the Splice-Topic header).",
            "$defs": events,
        },
    }
    clash = set(groups) & set(comps)
    if clash:
        raise ValueError(f"component names clash with the document's groups: {sorted(clash)}")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "Splice wire contracts",
        "description": (
            "Every command, reply and event of Splice. The root asserts nothing: validate a "
            "message against its definition, #/$defs/commands/$defs/<aggregate>.<verb>, "
            "#/$defs/replies/$defs/Ok or Failed, #/$defs/events/$defs/<EventType>."
        ),
        "$defs": {**groups, **comps},
    }
