"""The pieces a rebuild's fold is made of, where they were made faster: an event's own fields,
appends of many rows per statement, and the committer that works on the caller's thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.projections.committer import Committer
from splice.projections.envelope import META_KEYS, Event
from splice.projections.projector import Projector
from splice.projections.schema import Table, cols
from splice.projections.store import TableWrites, open_store

_values = st.one_of(st.none(), st.integers(), st.text(max_size=5),
                    st.lists(st.integers(), max_size=2))
_keys = st.one_of(st.sampled_from(sorted(META_KEYS)), st.text(max_size=6))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=12))
def test_an_events_fields_are_its_payload_without_the_metadata_in_order(
    payload: dict[str, Any],
) -> None:
    ev = Event(1, 0, "t", "servicetype", "id", "ServiceTypeUpdated", 1, dict(payload))
    fields = ev.fields()
    expected = {k: v for k, v in payload.items() if k not in META_KEYS}
    assert list(fields.items()) == list(expected.items())
    assert ev.payload == payload  # the payload itself is left as it was


WIDE = Table("wide", cols(", ".join(["n:int"] + [f"c{i}" for i in range(19)])), key=("n",),
             append_only=True)
NARROW = Table("narrow", cols("n:int, v"), key=("n",), append_only=True)


@pytest.mark.parametrize("table", [NARROW, WIDE], ids=["2 columns", "20 columns"])
@pytest.mark.parametrize("count", [1, 48, 49, 50, 63, 64, 65, 129, 500])
def test_appended_rows_all_go_in_in_order(db_url: str, table: Table, count: int) -> None:
    """Whatever the count against the rows a statement takes (64, or fewer for a wide table),
    every row is there once, with its values."""
    store = open_store(db_url)
    try:
        conn = store._write_conn()
        cur = conn.cursor()
        cur.execute(store.ddl(table)[0])
        conn.commit()
        width = len(table.columns)
        rows = [(n, *(f"{n}-{i}" for i in range(1, width))) for n in range(count)]
        store.stage([TableWrites(table, appends=rows)])
        store.commit([], {})
        got = store.select(f"SELECT {', '.join(table.column_names)} FROM {table.name} ORDER BY n")
        assert got == rows
    finally:
        store.close()


def test_the_committer_works_at_once_and_fails_at_the_next_wait() -> None:
    committer = Committer()
    ran: list[tuple[str, int]] = []
    committer.queue(lambda: ran.append(("first", threading.get_ident())))
    assert ran == [("first", threading.get_ident())]  # done before queue returned, right here

    def fails() -> None:
        raise ValueError("the database said no")

    committer.queue(fails)
    committer.queue(lambda: ran.append(("after", 0)))  # not after a failure not yet raised
    with pytest.raises(ValueError, match="said no"):
        committer.submit(lambda: ran.append(("commit", 0)))
    committer.wait()  # raised once
    committer.submit(lambda: ran.append(("again", 0)))
    assert [name for name, _ in ran] == ["first", "again"]


def test_a_projectors_batch_is_in_when_submitted(db_url: str) -> None:
    store = open_store(db_url)
    try:
        projector = Projector(store)
        ev = Event(1, 5, "_admin", "servicetype", "abc", "ServiceTypeCreated", 1,
                   {"name": "web", "providers": {}})
        projector.submit(projector.prepare([ev]), wait=False)
        assert store.positions()["servicetypes"] == 1  # committed, not in flight
        assert store.select("SELECT name FROM servicetypes") == [("web",)]
        projector.close()
    finally:
        store.close()
