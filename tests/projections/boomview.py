"""A view that refuses one event: its handler raises on a service type described "boom".

The projector then sets that event aside for this view only (`tests/projections/test_set_aside.py`,
`test_rebuild_transactions.py`).
"""

from __future__ import annotations

from splice.projections.envelope import Event
from splice.projections.schema import Table, cols
from splice.projections.views import VIEWS, Tx, View

BOOM = Table("boom", cols("id, seq:int"), key=("id",))


def touch_unless_boom(ev: Event, tx: Tx) -> None:
    if ev.payload.get("description") == "boom":
        raise ValueError("this view cannot take a boom")
    tx["boom"].put({"id": ev.aggregate_id, "seq": ev.seq})


BOOM_VIEW = View(
    name="boom",
    tables=(BOOM,),
    handlers={"ServiceTypeCreated": touch_unless_boom, "ServiceTypeUpdated": touch_unless_boom},
)
WITH_BOOM = (*VIEWS, BOOM_VIEW)
