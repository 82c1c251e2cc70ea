"""The two places read models live: a SQLite file and a PostgreSQL database (see store.py)."""

# SQL text is built from table and column names declared in code (views/), never from
# input; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from .schema import Table
from .store import Store, on_conflict

# Rows per statement of a SQLite append, within the parameters a statement may have (999 before
# SQLite 3.32).
APPEND_ROWS, MAX_PARAMS = 64, 999
STAGE_FROM = 64  # rows of one table in one batch from which PostgreSQL upserts go through COPY


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

    def _append(self, cur: Any, table: Table, rows: Sequence[Sequence[Any]]) -> None:
        """Many rows per INSERT (each statement run is a round through SQLite's VM and, in
        Python's sqlite3, a release and a re-take of the GIL); the rest one by one."""
        names = table.column_names
        one = f"({', '.join('?' * len(names))})"
        head = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES "
        per = max(1, min(APPEND_ROWS, MAX_PARAMS // len(names)))
        full = len(rows) - len(rows) % per
        if full:
            cur.executemany(
                head + ", ".join([one] * per),
                (tuple(chain.from_iterable(rows[i : i + per])) for i in range(0, full, per)),
            )
        if full < len(rows):
            cur.executemany(head + one, rows[full:])

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

    def _append(self, cur: Any, table: Table, rows: Sequence[Sequence[Any]]) -> None:
        self._copy(cur, table.name, table, rows)

    @staticmethod
    def _copy(cur: Any, into: str, table: Table, rows: Sequence[Sequence[Any]]) -> None:
        names = ", ".join(table.column_names)
        with cur.copy(f"COPY {into} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _upsert(self, cur: Any, t: Table, rows: list[Sequence[Any]]) -> None:
        """Many rows: COPY them into a temporary table of the same shape, then one
        ``INSERT ... SELECT ... ON CONFLICT``: the client sends rows instead of running a
        statement per row (a tenth of the client's CPU), and the server works in bulk."""
        if len(rows) < STAGE_FROM:
            super()._upsert(cur, t, rows)
            return
        stage = f"pg_temp.stage_{t.name}"
        # ON COMMIT DELETE ROWS: empty at the start of every transaction. LIKE copies the
        # columns only (no key): a table redefined later gets a fresh stage (`_drop_view`).
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS stage_{t.name} (LIKE {t.name}) "
                    f"ON COMMIT DELETE ROWS")
        self._copy(cur, stage, t, rows)
        names = ", ".join(t.column_names)
        cur.execute(f"INSERT INTO {t.name} ({names}) SELECT {names} FROM {stage} {on_conflict(t)}")

    def _drop_view(self, cur: Any, view: Any) -> None:
        super()._drop_view(cur, view)
        for table in view.tables:
            cur.execute(f"DROP TABLE IF EXISTS pg_temp.stage_{table.name}")

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None
        conn = getattr(self._r, "conn", None)
        if conn is not None:
            conn.close()
