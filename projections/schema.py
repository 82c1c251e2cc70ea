"""Table definitions of the read models, independent of the SQL dialect, and their values.

A view declares its tables with these few types; `store.py` turns them into SQLite or
PostgreSQL DDL and statements, with values encoded and decoded here. Column types are deliberately few: ``text``, ``int`` (64-bit),
``bool``, ``json`` (stored as text, decoded on the way out) and ``time`` (nanoseconds since the
epoch as a 64-bit integer: exact, cheap to write, and range filters are integer compares; shown
as RFC 3339 in answers).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.decode

ColumnType = Literal["text", "int", "bool", "json", "time"]


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType = "text"


@dataclass(frozen=True)
class Table:
    """One table of a view.

    key: the primary key's columns. append_only: rows are only ever inserted (the audit log),
    so they skip the row cache and go in with the backend's fastest bulk path.
    prefetch: given an event, the key of the row its handler will touch — lets a batch load
    all the rows it needs in one query instead of one query per row.
    """

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    append_only: bool = False
    prefetch: Callable[[Any], Any] | None = field(default=None, compare=False)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def cols(spec: str) -> tuple[Column, ...]:
    """Columns from a compact spec: ``"id, name, version:int, providers:json"``."""
    out: list[Column] = []
    for part in spec.split(","):
        name, _, typ = part.strip().partition(":")
        out.append(Column(name, typ or "text"))  # type: ignore[arg-type]
    return tuple(out)


def encode_rows(table: Table, rows: Sequence[dict[str, Any]]) -> list[Sequence[Any]]:
    """Rows as parameter tuples in column order; json columns encoded. The hot path of a batch.

    `itemgetter` builds each tuple in C; only json columns need a Python step. bool needs none
    (sqlite3 stores it as 0/1, psycopg as a boolean).
    """
    names = table.column_names
    getter = operator.itemgetter(*names)
    json_at = [i for i, c in enumerate(table.columns) if c.type == "json"]
    out: list[Sequence[Any]] = []
    for row in rows:
        try:
            values = getter(row)
        except KeyError:  # a handler left a column out: it is NULL
            values = tuple(row.get(n) for n in names)
        if json_at:
            values = list(values)
            for i in json_at:
                v = values[i]
                if v is not None:
                    values[i] = _json_encode(v).decode()
        out.append(values)
    return out


def decode_value(col: Column, value: Any) -> Any:
    if value is None:
        return None
    if col.type == "json":
        return _json_decode(value)
    if col.type == "bool":
        return bool(value)
    return value
