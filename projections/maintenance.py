"""Rebuilding the read models from the stream, and verifying the live ones against a rebuild.

Rebuild is resumable: it records the stream's last event sequence as its target
(``projection_meta.rebuild_target``) before dropping the views, then projects batch by batch
with positions committed alongside the rows; run again after an interruption, it carries on
from those positions up to the same target, and clears the mark at the end. ``restart`` drops
everything again.

Verify takes one consistent snapshot of the live database (positions and rows in a single read
transaction), rebuilds into a scratch database of the same kind (a temporary SQLite file, or a
temporary PostgreSQL database on the same server) up to the live position, and compares the
tables row by row. Events a view set aside (live or in the rebuild) are reported under
``set_aside`` (how many records, how many events, and the first events with the views that set
each aside and why), and then the read models are not called identical: they skipped
something. So are read models behind the stream (``behind``: events stored after the live
position). The scratch rebuild counts nothing in the set-aside metric: it is a comparison.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .parallel import REBUILD_BATCH, project_until
from .reading import Progress, last_event_seq
from .store import SET_ASIDE, Store, is_postgres, open_store, with_database
from .views import VIEWS, View

REBUILD_MARK = "rebuild_target"
MAX_SHOWN = 10


async def rebuild(
    js: Any,
    db_url: str,
    *,
    restart: bool = False,
    batch_size: int = REBUILD_BATCH,
    on_batch: Callable[[Progress], None] | None = None,
    views: tuple[View, ...] = VIEWS,
) -> tuple[int, bool]:
    """Rebuild every view from the start of the stream. Returns (position, resumed)."""
    store = open_store(db_url)
    try:
        store.ensure(views)
        mark = store.get_meta(REBUILD_MARK)
        resumed = mark is not None and not restart
        if resumed:
            target = int(str(mark))
        else:
            target = await last_event_seq(js)
            store.set_meta(REBUILD_MARK, str(target))
            store.reset(views)
        position = await project_until(
            js, db_url, target, views=views, batch_size=batch_size, on_batch=on_batch
        )
        if position >= target:
            store.set_meta(REBUILD_MARK, None)
        return position, resumed
    finally:
        store.close()


@contextlib.contextmanager
def scratch_database(db_url: str) -> Iterator[str]:
    """A fresh, empty database of the same kind as `db_url`, removed afterwards."""
    if not is_postgres(db_url):
        with tempfile.TemporaryDirectory(prefix="splice-verify-") as tmp:
            yield str(Path(tmp) / "scratch.sqlite")
        return
    import psycopg

    name = f"splice_scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(db_url, name)
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def snapshot(store: Store, views: tuple[View, ...]) -> tuple[dict[str, int], dict[str, list]]:
    """Positions, every table's rows and the set-aside events, read in one transaction."""
    return store.snapshot([*(t for v in views for t in v.tables), SET_ASIDE])


def set_aside_report(live: list[dict], rebuilt: list[dict], up_to: int) -> dict[str, Any]:
    """Events the views skipped, live and in the rebuild: with any, nothing is identical.

    ``live`` and ``rebuilt`` count records (one per view and event); ``events`` counts the
    events; ``examples`` are the first events: seq, subject, type, and each view's error.
    """
    live = [r for r in live if r["seq"] <= up_to]
    events: dict[int, dict[str, Any]] = {}
    for r in sorted(live or rebuilt, key=lambda r: (r["seq"], r["view"])):
        ev = events.setdefault(
            r["seq"], {"seq": r["seq"], "subject": r["subject"], "type": r["type"], "views": {}}
        )
        ev["views"][r["view"]] = r["error"]
    return {
        "live": len(live),
        "rebuilt": len(rebuilt),
        "events": len(events),
        "examples": list(events.values())[:MAX_SHOWN],
    }


def compare_rows(table: Any, live: list[dict], fresh: list[dict]) -> dict[str, Any]:
    """Rows missing from the live table, extra in it, and different, by primary key."""

    def key(r: dict) -> tuple:
        return tuple(r[k] for k in table.key)

    a = {key(r): r for r in live}
    b = {key(r): r for r in fresh}
    missing = [list(k) for k in b if k not in a]
    extra = [list(k) for k in a if k not in b]
    changed = []
    for k in a.keys() & b.keys():
        if a[k] != b[k]:
            cols = {c: [a[k][c], b[k][c]] for c in a[k] if a[k][c] != b[k].get(c)}
            changed.append({"key": list(k), "live_vs_rebuilt": cols})
    return {
        "rows": len(a),
        "identical": not (missing or extra or changed),
        "missing": len(missing),
        "extra": len(extra),
        "changed": len(changed),
        "examples": {
            "missing": missing[:MAX_SHOWN],
            "extra": extra[:MAX_SHOWN],
            "changed": sorted(changed, key=lambda c: str(c["key"]))[:MAX_SHOWN],
        },
    }


async def verify(
    js: Any,
    db_url: str,
    *,
    batch_size: int = REBUILD_BATCH,
    on_batch: Callable[[Progress], None] | None = None,
    views: tuple[View, ...] = VIEWS,
) -> dict[str, Any]:
    """Compare the live read models with a rebuild from the stream up to the same position."""
    live = open_store(db_url)
    try:
        live.ensure(views)
        positions, live_rows = snapshot(live, views)
    finally:
        live.close()
    target = min((positions.get(v.name, 0) for v in views), default=0)
    stream_end = await last_event_seq(js)
    report: dict[str, Any] = {"position": target, "stream_position": stream_end,
                              "behind": max(0, stream_end - target), "views": {}, "tables": {}}
    with scratch_database(db_url) as scratch_url:
        await project_until(js, scratch_url, target, views=views, reader=None,
                            batch_size=batch_size, on_batch=on_batch)
        scratch = open_store(scratch_url)
        try:
            _, fresh_rows = snapshot(scratch, views)
        finally:
            scratch.close()
    for view in views:
        at = positions.get(view.name, 0)
        report["views"][view.name] = {"position": at, "compared": at == target}
        if at != target:
            continue
        for table in view.tables:
            report["tables"][table.name] = compare_rows(
                table, live_rows[table.name], fresh_rows[table.name]
            )
    names = {v.name for v in views}
    report["set_aside"] = aside = set_aside_report(
        [r for r in live_rows[SET_ASIDE.name] if r["view"] in names],
        fresh_rows[SET_ASIDE.name],
        target,
    )
    report["identical"] = (
        all(t["identical"] for t in report["tables"].values())
        and all(v["compared"] for v in report["views"].values())
        and not (aside["live"] or aside["rebuilt"])
        and report["behind"] == 0
    )
    return report
