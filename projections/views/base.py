"""What a view is: tables, and one handler per event type name. Plus the row cache they write to.

A view module is small on purpose: a `Table` or two, functions ``handler(event, tx)`` that read
and write rows through ``tx[table_name]`` (a dict-like `Rows`), and a `View` tying them to the
event type names they handle. The projector owns transactions, positions, batching and SQL;
handlers only say what a row looks like after an event, so the same handlers also run against
an in-memory `Tx` to fold state "as it was then" (`splice state --at`).

Handlers follow the appliers' rule: no checks, no clocks, no randomness — every value comes from
the event, so a rebuild gives the same rows every time (what `projections verify` checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..envelope import Event
from ..schema import Table
from ..store import Store, TableWrites

Row = dict[str, Any]
Key = tuple[Any, ...]
Handler = Callable[[Event, "Tx"], None]

ROW_CACHE_LIMIT = 200_000  # rows kept between batches per table; beyond it, the cache restarts


@dataclass(frozen=True)
class Filter:
    """A query filter a view accepts: `column` compared with `op` to a value of `type`."""

    column: str
    op: str = "="  # "=", ">=", "<", "<=", "contains" (a quoted string inside a json column)
    type: type = str


@dataclass(frozen=True)
class View:
    """A read model: its tables, its handlers, and how it answers queries.

    version: bump it when the tables or handlers change meaning; the store then drops the
    view's tables and the projector rebuilds it from the start of the stream.
    scope: "tenant" (rows carry a tenant; each tenant sees its own) or "admin" (rows belong to
    the operator; readable by every tenant, written only by admin commands).
    any_event: a handler for every event, whatever its type (the audit log).
    """

    name: str
    tables: tuple[Table, ...]
    handlers: Mapping[str, Handler]
    version: int = 1
    scope: str = "tenant"
    any_event: Handler | None = None
    # queries
    query_table: str = ""
    order_by: tuple[str, ...] = ("id",)
    filters: Mapping[str, Filter] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # filters applied unless given
    rename: Mapping[str, str] = field(default_factory=dict)  # column -> key in answers
    hidden: tuple[str, ...] = ()  # columns not shown in answers
    fixed: Mapping[str, Any] = field(default_factory=dict)  # column = value, always applied
    tenant_prefix: str = ""  # a key column starting "<tenant>.": tenant filters use its index
    projected_by: str = ""  # a query face on another view's table: that view's position counts

    def table(self, name: str | None = None) -> Table:
        wanted = name or self.query_table or self.tables[0].name
        for t in self.tables:
            if t.name == wanted:
                return t
        raise KeyError(wanted)

    def wants(self, event_type: str) -> bool:
        return self.any_event is not None or event_type in self.handlers

    def apply(self, event: Event, tx: Tx) -> None:
        if self.any_event is not None:
            self.any_event(event, tx)
        handler = self.handlers.get(event.type)
        if handler is not None:
            handler(event, tx)


class Rows:
    """One table's rows as the current batch sees them.

    Rows are loaded on first use (or prefetched for the whole batch), changed in memory by the
    handlers, and written back once per batch (an upsert per changed row, however many events
    touched it). `complete` means the cache holds every row of the table (it started empty and
    every write since went through here), so a miss is an absent row without asking the store.
    """

    def __init__(self, table: Table, store: Store | None, complete: bool) -> None:
        self.table = table
        self.store = store
        self.complete = complete or store is None
        self.cache: dict[Key, Row | None] = {}
        self.dirty: set[Key] = set()
        self.appended: list[tuple[Any, ...]] = []
        self._one_key = table.key[0] if len(table.key) == 1 else None

    def _key(self, key: Any) -> Key:
        return key if isinstance(key, tuple) else (key,)

    def get(self, key: Any) -> Row | None:
        k = self._key(key)
        try:
            return self.cache[k]
        except KeyError:
            pass
        row = None
        if not self.complete and self.store is not None:
            row = self.store.fetch(self.table, [k]).get(k)
        self.cache[k] = row
        return row

    def put(self, row: Row) -> Row:
        one = self._one_key
        k = (row[one],) if one is not None else tuple(row[c] for c in self.table.key)
        self.cache[k] = row
        self.dirty.add(k)
        return row

    def change(self, key: Any, values: Mapping[str, Any]) -> Row | None:
        """Change some columns of an existing row; an absent row stays absent."""
        k = self._key(key)
        row = self.get(k)
        if row is not None:
            row.update(values)
            self.dirty.add(k)
        return row

    def delete(self, key: Any) -> None:
        k = self._key(key)
        self.cache[k] = None
        self.dirty.add(k)

    def append(self, values: tuple[Any, ...]) -> None:
        """Insert a row (append-only tables): values in column order, already encoded."""
        self.appended.append(values)

    def prefetch(self, keys: Iterable[Key]) -> None:
        if self.complete or self.store is None:
            return
        missing = {k for k in keys if k not in self.cache}
        if not missing:
            return
        found = self.store.fetch(self.table, missing)
        for k in missing:
            self.cache[k] = found.get(k)

    def take_writes(self) -> TableWrites:
        """This batch's changes, and forget them (the rows stay cached for the next batch)."""
        w = self.take_appends()
        for k in self.dirty:
            row = self.cache.get(k)
            if row is None:
                w.deletes.append(k)
            else:
                w.upserts.append(row)
        self.dirty = set()
        return w

    def take_appends(self) -> TableWrites:
        """The rows appended since the last take, and forget them."""
        w = TableWrites(self.table, appends=self.appended)
        self.appended = []
        return w

    def over_limit(self) -> bool:
        return len(self.cache) > ROW_CACHE_LIMIT

    def trim(self) -> None:
        """Keep memory bounded: past the limit, drop the cache (misses then ask the store)."""
        if self.over_limit():
            self.cache.clear()
            self.complete = False

    def rows(self) -> list[Row]:
        """Every cached row (for in-memory folds, where the cache is the whole table)."""
        return [r for r in self.cache.values() if r is not None]


class Tx:
    """The tables a batch (or an in-memory fold) writes to, by name."""

    def __init__(self, tables: Mapping[str, Rows]) -> None:
        self.tables = dict(tables)

    def __getitem__(self, name: str) -> Rows:
        return self.tables[name]

    @classmethod
    def in_memory(cls, views: Iterable[View]) -> Tx:
        return cls({t.name: Rows(t, None, True) for v in views for t in v.tables})
