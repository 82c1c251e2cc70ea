"""How the event store names an aggregate in subject tokens, reversibly.

Splice's aggregate ids are strings ``<tenant>.<aggregate>.<uuid>`` and are their own three
tokens. Any other id (a UUID, as in the library's tests, or an arbitrary string) is stored
under tenant ``_`` and aggregate ``uuid`` or ``str``, its value percent-encoded into one token.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote
from uuid import UUID

_TOKEN_OK = re.compile(r"^[A-Za-z0-9_-]+$")


@lru_cache(maxsize=4096)  # an event's topic, once per event written
def encode_token(value: str) -> str:
    """Encode any string as one subject token, reversibly (percent-encoding)."""
    if _TOKEN_OK.match(value):
        return value
    out = []
    for ch in value:
        if ch.isascii() and (ch.isalnum() or ch in "_-:~!@$^&()+=,;[]{}|<'\"`/?"):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out) or "%00"


def decode_token(token: str) -> str:
    return "" if token == "%00" else unquote(token)


@lru_cache(maxsize=16384)  # a command's write names its aggregates several times
def aggregate_path(originator_id: UUID | str) -> str:
    """The three subject tokens naming an aggregate: tenant.aggregate.id."""
    if isinstance(originator_id, UUID):
        return f"_.uuid.{originator_id}"
    parts = originator_id.split(".")
    if len(parts) == 3 and all(_TOKEN_OK.match(p) for p in parts) and parts[0] != "_":
        return originator_id
    return f"_.str.{encode_token(originator_id)}"


def originator_from_path(tenant: str, aggregate: str, ident: str) -> UUID | str:
    if tenant == "_":
        if aggregate == "uuid":
            return UUID(ident)
        return decode_token(ident)
    return f"{tenant}.{aggregate}.{ident}"
