"""Where the read models live: a SQLite file (default) or PostgreSQL (when scaled out).

Exactly-once comes from one rule: a batch's rows and the views' new positions are written in one
transaction, and the position update is conditional on the position the batch started from
(``UPDATE ... WHERE seq = <old>``). A crash at any point leaves either the whole batch or none
of it; a second projector racing on the same database loses the check and re-reads instead of
applying anything twice.

Speed settings, and why they are safe here:

* SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is not fsynced, so a power cut
  may roll back the last few batches — rows and positions together, so the projector simply
  re-applies them from the stream. A process crash (SIGKILL) loses nothing committed. Readers
  (the query responder) never block the writer in WAL mode.
* PostgreSQL sessions use ``synchronous_commit = off`` for the same reason and the same
  guarantee (atomic, possibly-late durability), and append-only tables go in with ``COPY``.
"""

# SQL text is built from table and column names declared in code (views/), never from
# input; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import operator
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from .schema import Column, Table

POSITIONS = "projection_positions"
META = "projection_meta"

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.decode


class PositionConflict(Exception):
    """Another writer moved a view's position first: this batch was not applied."""


@dataclass
class TableWrites:
    """What one batch changes in one table."""

    table: Table
    upserts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[tuple[Any, ...]] = field(default_factory=list)
    appends: list[tuple[Any, ...]] = field(default_factory=list)


def _sql_type(col: Column, dialect: str) -> str:
    if dialect == "postgres":
        return {"text": "TEXT", "int": "BIGINT", "bool": "BOOLEAN", "json": "TEXT"}.get(
            col.type, "BIGINT"
        )
    return {"text": "TEXT", "bool": "INTEGER", "json": "TEXT"}.get(col.type, "INTEGER")


def encode_value(col: Column, value: Any) -> Any:
    if value is None:
        return None
    if col.type == "json":
        return _json_encode(value).decode()
    if col.type == "bool":
        return bool(value)
    return value


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


class Store:
    """Dialect-neutral part: DDL, statements, the transaction protocol."""

    dialect = "sqlite"
    ph = "?"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()  # one writer transaction at a time per Store

    # -- to be provided by a backend ------------------------------------------------------
    def _write_conn(self) -> Any:
        raise NotImplementedError

    def _read_conn(self) -> Any:
        raise NotImplementedError

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    def _append(self, cur: Any, table: Table, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- DDL --------------------------------------------------------------------------------
    def ddl(self, table: Table) -> list[str]:
        columns = ", ".join(f"{c.name} {_sql_type(c, self.dialect)}" for c in table.columns)
        stmts = [
            f"CREATE TABLE IF NOT EXISTS {table.name} ({columns}, "
            f"PRIMARY KEY ({', '.join(table.key)}))"
        ]
        for idx in table.indexes:
            name = f"ix_{table.name}_{'_'.join(idx)}"
            stmts.append(f"CREATE INDEX IF NOT EXISTS {name} ON {table.name} ({', '.join(idx)})")
        return stmts

    def ensure(self, views: Sequence[Any]) -> None:
        """Create what is missing; drop and reset any view whose definition's version changed."""
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            self._begin(conn)
            try:
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {POSITIONS} (view TEXT PRIMARY KEY, "
                    f"seq BIGINT NOT NULL, schema_version INTEGER NOT NULL)"
                )
                cur.execute(f"CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT)")
                cur.execute(f"SELECT view, schema_version FROM {POSITIONS}")
                known = {r[0]: int(r[1]) for r in cur.fetchall()}
                for view in views:
                    self._ensure_view(cur, view, known.get(view.name))
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    def _ensure_view(self, cur: Any, view: Any, known_version: int | None) -> None:
        p = self.ph
        if known_version is not None and known_version != view.version:
            for table in view.tables:
                cur.execute(f"DROP TABLE IF EXISTS {table.name}")
            cur.execute(f"DELETE FROM {POSITIONS} WHERE view = {p}", (view.name,))
            known_version = None
        for table in view.tables:
            for stmt in self.ddl(table):
                cur.execute(stmt)
        if known_version is None:
            cur.execute(
                f"INSERT INTO {POSITIONS} (view, seq, schema_version) VALUES ({p}, 0, {p})",
                (view.name, view.version),
            )

    def reset(self, views: Sequence[Any]) -> None:
        """Drop every view's tables and positions (a rebuild from the start)."""
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            self._begin(conn)
            try:
                for view in views:
                    for table in view.tables:
                        cur.execute(f"DROP TABLE IF EXISTS {table.name}")
                    cur.execute(f"DELETE FROM {POSITIONS} WHERE view = {self.ph}", (view.name,))
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        self.ensure(views)

    # -- reading for the projector ---------------------------------------------------------
    def positions(self) -> dict[str, int]:
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            cur.execute(f"SELECT view, seq FROM {POSITIONS}")
            rows = cur.fetchall()
            conn.commit()
        return {r[0]: int(r[1]) for r in rows}

    def get_meta(self, key: str) -> str | None:
        rows = self.select(f"SELECT value FROM {META} WHERE key = {self.ph}", (key,))
        return None if not rows else rows[0][0]

    def set_meta(self, key: str, value: str | None) -> None:
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            self._begin(conn)
            try:
                cur.execute(f"DELETE FROM {META} WHERE key = {self.ph}", (key,))
                if value is not None:
                    cur.execute(
                        f"INSERT INTO {META} (key, value) VALUES ({self.ph}, {self.ph})",
                        (key, value),
                    )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    def is_empty(self, table: Table) -> bool:
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            cur.execute(f"SELECT 1 FROM {table.name} LIMIT 1")
            empty = cur.fetchone() is None
            conn.commit()
        return empty

    def fetch(self, table: Table, keys: Iterable[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict]:
        """Rows by primary key (decoded), for the rows a batch is about to change."""
        names = table.column_names
        select = f"SELECT {', '.join(names)} FROM {table.name}"
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        keys = list(keys)
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            if len(table.key) == 1:
                for i in range(0, len(keys), 500):
                    chunk = [k[0] for k in keys[i : i + 500]]
                    marks = ", ".join([self.ph] * len(chunk))
                    cur.execute(f"{select} WHERE {table.key[0]} IN ({marks})", chunk)
                    for r in cur.fetchall():
                        row = self._decode_row(table, r)
                        out[(row[table.key[0]],)] = row
            else:
                where = " AND ".join(f"{k} = {self.ph}" for k in table.key)
                for k in keys:
                    cur.execute(f"{select} WHERE {where}", k)
                    r = cur.fetchone()
                    if r is not None:
                        out[k] = self._decode_row(table, r)
            conn.commit()
        return out

    @staticmethod
    def _decode_row(table: Table, r: Sequence[Any]) -> dict[str, Any]:
        return {c.name: decode_value(c, v) for c, v in zip(table.columns, r, strict=True)}

    # -- the batch transaction -------------------------------------------------------------
    def commit(self, writes: Sequence[TableWrites], moves: dict[str, tuple[int, int]]) -> None:
        """Apply a batch's writes and move the views' positions, all in one transaction.

        `moves` maps view name -> (position the batch started from, new position). Raises
        PositionConflict (and applies nothing) when a position is no longer the expected one.
        """
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            self._begin(conn)
            try:
                self._move_positions(cur, moves)
                for w in writes:
                    self._write_table(cur, w)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    def _move_positions(self, cur: Any, moves: dict[str, tuple[int, int]]) -> None:
        p = self.ph
        for view, (old, new) in moves.items():
            cur.execute(
                f"UPDATE {POSITIONS} SET seq = {p} WHERE view = {p} AND seq = {p}",
                (new, view, old),
            )
            if cur.rowcount != 1:
                raise PositionConflict(f"view {view} is no longer at {old}")

    def _write_table(self, cur: Any, w: TableWrites) -> None:
        t = w.table
        p = self.ph
        if w.deletes:
            where = " AND ".join(f"{k} = {p}" for k in t.key)
            cur.executemany(f"DELETE FROM {t.name} WHERE {where}", w.deletes)
        if w.upserts:
            names = t.column_names
            updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in t.key)
            conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
            sql = (
                f"INSERT INTO {t.name} ({', '.join(names)}) VALUES ({', '.join([p] * len(names))}) "
                f"ON CONFLICT ({', '.join(t.key)}) {conflict}"
            )
            cur.executemany(sql, encode_rows(t, w.upserts))
        if w.appends:
            self._append(cur, t, w.appends)

    # -- reading for queries (a connection of its own) --------------------------------------
    def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._read_conn()
        cur = conn.cursor()
        try:
            cur.execute(sql, params)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.commit()  # end the read transaction: the next query sees newer data

    def dump(self, table: Table) -> list[dict[str, Any]]:
        """Every row of a table, decoded, in key order (for `projections verify`)."""
        names = ", ".join(table.column_names)
        rows = self.select(f"SELECT {names} FROM {table.name} ORDER BY {', '.join(table.key)}")
        return [self._decode_row(table, r) for r in rows]

    def snapshot(self, tables: Sequence[Table]) -> tuple[dict[str, int], dict[str, list[dict]]]:
        """Positions and every row of `tables`, all read in one transaction (one picture)."""
        conn = self._snapshot_conn()
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT view, seq FROM {POSITIONS}")
            positions = {r[0]: int(r[1]) for r in cur.fetchall()}
            rows: dict[str, list[dict]] = {}
            for t in tables:
                names = ", ".join(t.column_names)
                cur.execute(f"SELECT {names} FROM {t.name} ORDER BY {', '.join(t.key)}")
                rows[t.name] = [self._decode_row(t, r) for r in cur.fetchall()]
            conn.commit()
        finally:
            conn.close()
        return positions, rows

    def _snapshot_conn(self) -> Any:
        raise NotImplementedError


class SQLiteStore(Store):
    dialect = "sqlite"
    ph = "?"

    def __init__(self, path: str | Path) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._w: sqlite3.Connection | None = None
        self._r = threading.local()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        conn.isolation_level = None  # explicit BEGIN/COMMIT: we decide where a transaction ends
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    def _write_conn(self) -> sqlite3.Connection:
        if self._w is None:
            self._w = self._open()
        return self._w

    def _read_conn(self) -> _SQLiteReader:
        conn: _SQLiteReader | None = getattr(self._r, "conn", None)
        if conn is None:
            conn = self._r.conn = _SQLiteReader(self._open())
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _snapshot_conn(self) -> sqlite3.Connection:
        conn = self._open()
        conn.execute("BEGIN")  # a read transaction: one WAL snapshot for every SELECT in it
        return conn

    def _append(self, cur: Any, table: Table, rows: list[tuple[Any, ...]]) -> None:
        names = table.column_names
        cur.executemany(
            f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            rows,
        )

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class _SQLiteReader:
    """A read connection in autocommit mode: `commit()` is a no-op that Store.select calls."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def cursor(self) -> sqlite3.Cursor:
        return self.conn.cursor()

    def commit(self) -> None:
        return None


class PostgresStore(Store):
    dialect = "postgres"
    ph = "%s"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._w: Any = None
        self._r = threading.local()

    def _open(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=False)
        conn.execute("SET synchronous_commit = off")
        conn.commit()
        return conn

    def _write_conn(self) -> Any:
        if self._w is None or self._w.closed:
            self._w = self._open()
        return self._w

    def _read_conn(self) -> Any:
        conn = getattr(self._r, "conn", None)
        if conn is None or conn.closed:
            conn = self._r.conn = self._open()
        return conn

    def _begin(self, conn: Any) -> None:
        return None  # psycopg opens a transaction on the first statement

    def _snapshot_conn(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=False)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return conn

    def _append(self, cur: Any, table: Table, rows: list[tuple[Any, ...]]) -> None:
        names = ", ".join(table.column_names)
        with cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None
        conn = getattr(self._r, "conn", None)
        if conn is not None:
            conn.close()


def is_postgres(db_url: str) -> bool:
    return db_url.startswith(("postgresql://", "postgres://"))


def with_database(db_url: str, name: str) -> str:
    """The same PostgreSQL URL, naming another database (a scratch one)."""
    parts = urlsplit(db_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def open_store(db_url: str) -> Store:
    """`postgresql://...` → PostgreSQL; `sqlite:///path`, a path, anything else → SQLite file."""
    if is_postgres(db_url):
        return PostgresStore(db_url)
    path = db_url.removeprefix("sqlite:///") if db_url.startswith("sqlite:///") else db_url
    return SQLiteStore(path)
