"""What the command service checks of a request before the executor sees it, and the fit of
its reply: the subject, the size, the depth and the body (`parse`, pure), and a reply that is
never bigger than the server's maximum payload (`fit`)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from splice.events import subjects
from splice.events.contracts import ADMIN_TENANT, COMMANDS, HOST_TENANT, Error, Failed, Ok, scope_of
from splice.events.wire import MAX_DEPTH, MAX_PAYLOAD, Token, too_deep

from .executor import Parsed, failed

_AT = re.compile(r" - at (?:`key` in )?`(\$[^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")

_encoder = msgspec.json.Encoder()
_DECODERS = {t: msgspec.json.Decoder(t) for t in COMMANDS.values()}


def parse(subject: str, data: bytes, max_payload: int = MAX_PAYLOAD) -> Parsed | Failed:
    """Subject, size, depth and body checks. Pure: no I/O. A refusal echoes the body's
    `command_id` whenever it can be read."""

    def refuse(code: str, message: str, field: str) -> Failed:
        return failed(code, message, field, command_id_of(data[:max_payload]))

    parts = subjects.parse_command(subject)
    if parts is None:
        return refuse(
            "invalid", "command subjects are splice.cmd.<tenant>.<aggregate>.<verb>", "subject"
        )
    tenant, aggregate, verb = parts
    if not subjects.TENANT_TOKEN.fullmatch(tenant):
        return refuse("invalid", f"{tenant!r} is not a valid tenant", "subject")
    cmd_type = COMMANDS.get((aggregate, verb))
    if cmd_type is None:
        return refuse("invalid", f"unknown command {aggregate}.{verb}", "subject")
    scope = scope_of(aggregate, verb)
    expected = {"admin": ADMIN_TENANT, "host": HOST_TENANT}.get(scope)
    if (expected is not None and tenant != expected) or (expected is None and tenant.startswith("_")):
        where = {"admin": "the admin scope (_admin)", "host": "agents (_host)"}.get(scope, "a tenant")
        return refuse("forbidden", f"{aggregate}.{verb} belongs to {where}", "subject")
    if len(data) > max_payload:
        return refuse("invalid", f"payload of {len(data)} bytes exceeds {max_payload}", "$")
    if too_deep(data, MAX_DEPTH):
        return refuse("invalid", f"JSON nested deeper than {MAX_DEPTH} levels", "$")
    try:
        cmd = _DECODERS[cmd_type].decode(data)
    except msgspec.ValidationError as e:
        return refuse("invalid", *_describe(e))
    except msgspec.DecodeError as e:
        return refuse("invalid", str(e), "$")
    sent = _plain.decode(data)
    unknown = flat_unknown(sent, cmd_type)
    if unknown is _NESTED:
        unknown = unknown_field(sent, _plain.decode(_encoder.encode(cmd)), "$")
    if unknown is not None:
        return refuse("invalid", f"unknown field `{unknown.rsplit('.', 1)[-1]}`", unknown)
    return Parsed(subject, tenant, aggregate, verb, cmd)


_NESTED = "nested"  # `flat_unknown`'s "not flat: ask `unknown_field`"
_FIELDS = {t: frozenset((*t.__struct_encode_fields__, "type")) for t in COMMANDS.values()}


def flat_unknown(sent: Any, cmd_type: type) -> str | None:
    """`unknown_field` for a body whose values hold no object or array (most commands), from
    the command's field names alone, without encoding the command again; `_NESTED` for any
    other body."""
    if type(sent) is not dict:
        return _NESTED
    fields = _FIELDS[cmd_type]
    for key, value in sent.items():
        if type(value) in (dict, list):
            return _NESTED
        if key not in fields:
            return f"$.{key}"
    return None


def unknown_field(sent: Any, known: Any, path: str) -> str | None:
    """The JSON path of the first key `sent` has that the decoded command does not know.

    `known` is the decoded command encoded again: every field it has (defaults included), so a
    key of `sent` missing from it at the same place is not a field of the contract. The tag
    (`type`) is the one key allowed beside the fields.
    """
    if isinstance(sent, dict) and isinstance(known, dict):
        for key, value in sent.items():
            if key not in known:
                if path == "$" and key == "type":
                    continue
                return f"{path}.{key}"
            found = unknown_field(value, known[key], f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(sent, list) and isinstance(known, list):
        for i, (a, b) in enumerate(zip(sent, known, strict=False)):
            found = unknown_field(a, b, f"{path}[{i}]")
            if found is not None:
                return found
    return None


class _Id(msgspec.Struct):
    command_id: Token | None = None


_id_decoder = msgspec.json.Decoder(_Id)
_plain = msgspec.json.Decoder()


def command_id_of(data: bytes) -> str | None:
    """The command id of a body that was refused, when it can be read."""
    try:
        return _id_decoder.decode(data).command_id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def _describe(e: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's message without the location, and the location as a JSON path."""
    text = str(e)
    m = _AT.search(text)
    path = m.group(1) if m else "$"
    missing = _MISSING.search(text)
    if missing:
        path = f"{path}.{missing.group(1)}"
    return _AT.sub("", text), path


# -- back-pressure and fairness -------------------------------------------------------------


def tenant_token(subject: str) -> str:
    """The tenant token of a command subject (cheap; `parse` checks the whole subject)."""
    parts = subject.split(".", 3)
    return parts[2] if len(parts) > 2 else ""


def fit(reply: Ok | Failed, limit: int) -> bytes:
    """The reply encoded, no bigger than `limit` bytes: a long error's message and field are
    cut (marked `…`), never the reply dropped."""
    data = _encoder.encode(reply)
    if len(data) <= limit or not isinstance(reply, Failed):
        return data
    e = reply.error
    room = max(64, (limit - 256) // 4)  # a character may take several bytes as JSON

    def cut(text: str | None) -> str | None:
        return text if text is None or len(text) <= room else text[:room] + "…"

    note = f" (cut to fit the server's maximum payload of {limit} bytes)"
    message = e.message if len(e.message) <= room else f"{cut(e.message)}{note}"
    short = Error(code=e.code, message=message, field=cut(e.field), retry_after_ms=e.retry_after_ms)
    data = _encoder.encode(Failed(error=short, command_id=reply.command_id))
    if len(data) <= limit:
        return data
    return _encoder.encode(
        failed("invalid", f"the error does not fit the server's maximum payload of {limit} bytes")
    )
