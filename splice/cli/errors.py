"""A refused command's error in the CLI's terms: the option to fix, the values allowed.

The reply names a JSON path into the body (`$.pools[0].protocol`); the CLI names the option
that carries it (`--pools`, at `pools[0].protocol`), lists an enum's values when a value is not
one of them, and says what a pattern means (the contract's description) instead of printing
its regular expression.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from splice.events.contracts import Command

_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
ALIASES = {"ip_address": "vip_address", "network_id": "vip_network_id"}
_REGEX = re.compile(r"Expected `str` matching regex .*", re.S)


def path_of(field: str) -> list[str | int] | None:
    """`$.pools[0].protocol` -> ["pools", 0, "protocol"]; None for anything else."""
    if not field.startswith("$"):
        return None
    parts: list[str | int] = []
    pos = 1
    for m in _SEGMENT.finditer(field, 1):
        if m.start() != pos:
            return None
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return parts if pos == len(field) else None


def _fields(cmd: type[Command]) -> dict[str, msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(cmd)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: f for f in info.fields}


def option_of(cmd: type[Command], field: str | None) -> tuple[str, str] | None:
    """(the option, the body field it sets) for a reply's field; None if none matches."""
    path = path_of(field or "")
    if not path or not isinstance(path[0], str):
        return None
    fields = _fields(cmd)
    name = path[0]
    if name not in fields:  # the VIP's port answers as a port would: `$.ip_address`
        name = ALIASES.get(name, name)
    if name not in fields:
        return None
    return ("ID" if name == "id" else "--" + name.replace("_", "-")), name


def unwrap(t: Any) -> tuple[Any, list[str]]:
    """The type under Optional and constraints, and the constraints' descriptions."""
    notes: list[str] = []
    while True:
        if isinstance(t, msgspec.inspect.Metadata):
            described = (t.extra_json_schema or {}).get("description")
            if described:
                notes.append(str(described))
            t = t.type
        elif isinstance(t, msgspec.inspect.UnionType):
            rest = [u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)]
            if len(rest) != 1:
                return t, notes
            t = rest[0]
        else:
            return t, notes


def type_at(cmd: type[Command], path: list[str | int]) -> tuple[Any, list[str]]:
    """The type a JSON path into the command's body points at (None where it cannot tell)."""
    t: Any = msgspec.inspect.type_info(cmd)
    notes: list[str] = []
    for part in path:
        t, notes = unwrap(t)
        if isinstance(t, msgspec.inspect.StructType) and isinstance(part, str):
            found = [f.type for f in t.fields if f.name == part]
            if not found:
                return None, []
            t = found[0]
        elif isinstance(t, msgspec.inspect.ListType | msgspec.inspect.SetType):
            t = t.item_type
        elif isinstance(t, msgspec.inspect.DictType):
            t = t.value_type
        else:
            return None, []
    t, more = unwrap(t)
    return t, notes + more


def allowed(t: Any) -> list[str]:
    """The values an enum (or a mapping keyed or valued by one) allows."""
    if isinstance(t, msgspec.inspect.LiteralType):
        return [str(v) for v in t.values]
    if isinstance(t, msgspec.inspect.DictType):
        for side in (t.key_type, t.value_type):
            inner, _ = unwrap(side)
            if isinstance(inner, msgspec.inspect.LiteralType):
                return [str(v) for v in inner.values]
    return []


def explain(cmd: type[Command] | None, error: dict[str, Any]) -> str:
    """`code: message (option)`, with the allowed values or the expected form filled in."""
    code, message, field = error.get("code"), str(error.get("message") or ""), error.get("field")
    where = f" (field: {field})" if field else ""
    if cmd is None:
        return f"{code}: {message}{where}"
    path = path_of(field or "")
    t, notes = type_at(cmd, path) if path else (None, [])
    if message.startswith("Invalid enum value") and allowed(t):
        message += f"; allowed: {', '.join(allowed(t))}"
    elif _REGEX.match(message):
        message = f"expected {notes[-1][0].lower()}{notes[-1][1:]}".rstrip(".") if notes \
            else "not in the expected form"
    opt = option_of(cmd, field)
    if opt is not None:
        flag, _ = opt
        where = f" ({flag})" if path and len(path) == 1 else f" ({flag}, at {str(field)[2:]})"
    return f"{code}: {message}{where}"
