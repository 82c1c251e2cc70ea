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

Events a view could not apply are recorded in ``projection_set_aside`` (view, seq, subject,
type, error), in the same transaction as the batch that skipped them. This module holds the
dialect-neutral part; the two backends are in `backends.py`.
"""

# SQL text is built from table and column names declared in code (views/), never from
# input; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from splice.events.follow import SetAside

from .schema import Column, Table, cols, decode_value, encode_rows

POSITIONS = "projection_positions"
META = "projection_meta"
SET_ASIDE = Table(
    "projection_set_aside", cols("view, seq:int, subject, type, error"), key=("view", "seq")
)


class PositionConflict(Exception):
    """Another writer moved a view's position first: this batch was not applied."""


@dataclass
class TableWrites:
    """What one batch changes in one table."""

    table: Table
    upserts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[tuple[Any, ...]] = field(default_factory=list)
    appends: list[tuple[Any, ...]] = field(default_factory=list)
    encoded: list[Sequence[Any]] | None = None  # the upserts as parameter rows, once encoded

    def encode(self) -> None:
        """Encode the upserts now (their dicts may change after this, the rows will not)."""
        if self.encoded is None:
            self.encoded = encode_rows(self.table, self.upserts)


def _sql_type(col: Column, dialect: str) -> str:
    if dialect == "postgres":
        return {"text": "TEXT", "int": "BIGINT", "bool": "BOOLEAN", "json": "TEXT"}.get(
            col.type, "BIGINT"
        )
    return {"text": "TEXT", "bool": "INTEGER", "json": "TEXT"}.get(col.type, "INTEGER")


class Store:
    """Dialect-neutral part: DDL, statements, the transaction protocol."""

    dialect = "sqlite"
    ph = "?"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()  # one writer transaction at a time per Store
        # Empty tables whose secondary indexes wait for `build_indexes` (a bulk load).
        self.deferred: dict[str, Table] = {}
        self._staged = False  # a transaction is open with rows `stage` wrote (see there)

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
        return stmts + self.index_ddl(table)

    @staticmethod
    def index_ddl(table: Table) -> list[str]:
        """The table's secondary indexes (created at once, or once a bulk load has caught up)."""
        return [
            f"CREATE INDEX IF NOT EXISTS ix_{table.name}_{'_'.join(idx)} "
            f"ON {table.name} ({', '.join(idx)})"
            for idx in table.indexes
        ]

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
                for stmt in self.ddl(SET_ASIDE):
                    cur.execute(stmt)
                cur.execute(f"SELECT view, schema_version FROM {POSITIONS}")
                known = {r[0]: int(r[1]) for r in cur.fetchall()}
                deferred = [t for v in views for t in self._ensure_view(cur, v, known.get(v.name))]
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            self.deferred.update((t.name, t) for t in deferred)

    def _ensure_view(self, cur: Any, view: Any, known_version: int | None) -> list[Table]:
        """Create the view's tables; returns the empty ones whose indexes wait (a bulk load:
        see `build_indexes`)."""
        if known_version is not None and known_version != view.version:
            self._drop_view(cur, view)
            known_version = None
        deferred = []
        for table in view.tables:
            cur.execute(self.ddl(table)[0])
            cur.execute(f"SELECT 1 FROM {table.name} LIMIT 1")
            if cur.fetchone() is None and table.indexes:
                deferred.append(table)
                continue
            for stmt in self.index_ddl(table):
                cur.execute(stmt)
        if known_version is None:
            p = self.ph
            cur.execute(
                f"INSERT INTO {POSITIONS} (view, seq, schema_version) VALUES ({p}, 0, {p})",
                (view.name, view.version),
            )
        return deferred

    def _drop_view(self, cur: Any, view: Any) -> None:
        """A view's tables, position and set-aside events go (it is rebuilt from seq 0)."""
        for table in view.tables:
            cur.execute(f"DROP TABLE IF EXISTS {table.name}")
        for meta in (POSITIONS, SET_ASIDE.name):
            cur.execute(f"DELETE FROM {meta} WHERE view = {self.ph}", (view.name,))

    def reset(self, views: Sequence[Any]) -> None:
        """Drop every view's tables and positions (a rebuild from the start)."""
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            self._begin(conn)
            try:
                for view in views:
                    self._drop_view(cur, view)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        self.ensure(views)

    def build_indexes(self) -> None:
        """Create the secondary indexes `ensure` left out on empty tables.

        Filling an empty table and then indexing it once (a sort) costs a fraction of keeping
        the indexes up to date row by row: the projector calls this once it has caught up
        with the stream (and `close` does, if it never did). Queries are right meanwhile,
        only slower; a process that dies first gets them from `ensure` at its next start.
        """
        if not self.deferred:
            return
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            self._begin(conn)
            try:
                for table in self.deferred.values():
                    for stmt in self.index_ddl(table):
                        cur.execute(stmt)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            self.deferred.clear()

    # -- reading for the projector ---------------------------------------------------------
    def positions(self) -> dict[str, int]:
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            cur.execute(f"SELECT view, seq FROM {POSITIONS}")
            rows = cur.fetchall()
            self._end_read(conn)
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
            self._end_read(conn)
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
            self._end_read(conn)
        return out

    @staticmethod
    def _decode_row(table: Table, r: Sequence[Any]) -> dict[str, Any]:
        return {c.name: decode_value(c, v) for c, v in zip(table.columns, r, strict=True)}

    # -- the batch transaction -------------------------------------------------------------
    def stage(self, writes: Sequence[TableWrites]) -> None:
        """Write appended rows now, in a transaction left open: the next `commit` makes them
        part of its transaction, `discard` drops them. A rebuild stages each chunk's audit
        rows as it folds, so that the commit at the end of a transaction has less to write."""
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            if not self._staged:
                self._begin(conn)
                self._staged = True
            try:
                for w in writes:
                    if w.appends:
                        self._append(cur, w.table, w.appends)
            except BaseException:
                self._staged = False
                conn.rollback()
                raise

    def discard(self) -> None:
        """Drop what `stage` wrote and no `commit` took."""
        with self._lock:
            if self._staged:
                self._staged = False
                self._write_conn().rollback()

    def _end_read(self, conn: Any) -> None:
        if not self._staged:  # else the read was part of the staged transaction: it goes on
            conn.commit()

    def commit(
        self,
        writes: Sequence[TableWrites],
        moves: dict[str, tuple[int, int]],
        set_aside: Sequence[tuple[str, SetAside]] = (),
    ) -> None:
        """Apply a batch's writes, record what it set aside, and move the views' positions,
        all in one transaction (with what was staged before it, if anything).

        `moves` maps view name -> (position the batch started from, new position);
        `set_aside` holds (view name, event) for the events a view skipped. Raises
        PositionConflict (and applies nothing) when a position is no longer the expected one.
        """
        with self._lock:
            conn = self._write_conn()
            cur = conn.cursor()
            if not self._staged:
                self._begin(conn)
            self._staged = False
            try:
                self._move_positions(cur, moves)
                for w in writes:
                    self._write_table(cur, w)
                if set_aside:
                    rows = [(v, r.seq, r.subject, r.topic, r.error) for v, r in set_aside]
                    self._append(cur, SET_ASIDE, rows)
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
            w.encode()
            self._upsert(cur, t, w.encoded or [])
        if w.appends:
            self._append(cur, t, w.appends)

    def _upsert(self, cur: Any, t: Table, rows: list[Sequence[Any]]) -> None:
        names = t.column_names
        marks = ", ".join([self.ph] * len(names))
        cur.executemany(
            f"INSERT INTO {t.name} ({', '.join(names)}) VALUES ({marks}) {on_conflict(t)}", rows
        )

    # -- reading for queries (a connection of its own) --------------------------------------
    def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._read_conn()
        cur = conn.cursor()
        try:
            cur.execute(sql, params)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.commit()  # end the read transaction: the next query sees newer data

    def set_aside(self, up_to: int | None = None) -> list[dict[str, Any]]:
        """The events views set aside (up to a stream sequence), in stream order."""
        names = ", ".join(SET_ASIDE.column_names)
        sql = f"SELECT {names} FROM {SET_ASIDE.name}"
        params: tuple[Any, ...] = ()
        if up_to is not None:
            sql, params = f"{sql} WHERE seq <= {self.ph}", (up_to,)
        rows = self.select(f"{sql} ORDER BY seq, view", params)
        return [self._decode_row(SET_ASIDE, r) for r in rows]

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


def on_conflict(t: Table) -> str:
    """The upsert's clause: a row already there takes every non-key column of the new one."""
    updates = ", ".join(f"{n} = excluded.{n}" for n in t.column_names if n not in t.key)
    return f"ON CONFLICT ({', '.join(t.key)}) " + (
        f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    )


def is_postgres(db_url: str) -> bool:
    return db_url.startswith(("postgresql://", "postgres://"))


def with_database(db_url: str, name: str) -> str:
    """The same PostgreSQL URL, naming another database (a scratch one)."""
    parts = urlsplit(db_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def open_store(db_url: str) -> Store:
    """`postgresql://...` → PostgreSQL; `sqlite:///path`, a path, anything else → SQLite file."""
    from .backends import PostgresStore, SQLiteStore  # they build on Store, defined above

    if is_postgres(db_url):
        return PostgresStore(db_url)
    path = db_url.removeprefix("sqlite:///") if db_url.startswith("sqlite:///") else db_url
    return SQLiteStore(path)
