"""Service types (admin scope): name, description, providers, default flag, deleted flag.

Readable by every tenant (a tenant picks a service type by id when it creates a router or a
floating service); changed only by admin commands.
"""

from __future__ import annotations

from ..envelope import Event
from ..schema import Table, cols
from .base import Filter, Tx, View

SERVICETYPES = Table(
    "servicetypes",
    cols(
        "id, name, description, providers:json, labels:json, is_default:bool, deleted:bool, "
        "version:int, created_time:time, updated_time:time, created_seq:int, updated_seq:int"
    ),
    key=("id",),
    indexes=(("name",),),
    prefetch=lambda ev: (ev.aggregate_id,),
)


def _touch(ev: Event, tx: Tx, values: dict[str, object]) -> None:
    values["version"] = ev.version
    values["updated_time"] = ev.time_ns
    values["updated_seq"] = ev.seq
    tx["servicetypes"].change(ev.aggregate_id, values)


def created(ev: Event, tx: Tx) -> None:
    p = ev.payload
    tx["servicetypes"].put(
        {
            "id": ev.aggregate_id,
            "name": p.get("name", ""),
            "description": p.get("description", ""),
            "providers": p.get("providers", {}),
            "labels": p.get("labels", {}),
            "is_default": False,
            "deleted": False,
            "version": ev.version,
            "created_time": ev.time_ns,
            "updated_time": ev.time_ns,
            "created_seq": ev.seq,
            "updated_seq": ev.seq,
        }
    )


def updated(ev: Event, tx: Tx) -> None:
    p = ev.payload
    _touch(ev, tx, {
        "name": p.get("name", ""),
        "description": p.get("description", ""),
        "providers": p.get("providers", {}),
        "labels": p.get("labels", {}),
    })


def default_set(ev: Event, tx: Tx) -> None:
    _touch(ev, tx, {"is_default": True})


def default_cleared(ev: Event, tx: Tx) -> None:
    _touch(ev, tx, {"is_default": False})


def deleted(ev: Event, tx: Tx) -> None:
    _touch(ev, tx, {"deleted": True, "is_default": False})


VIEW = View(
    name="servicetypes",
    tables=(SERVICETYPES,),
    handlers={
        "ServiceTypeCreated": created,
        "ServiceTypeUpdated": updated,
        "ServiceTypeDefaultSet": default_set,
        "ServiceTypeDefaultCleared": default_cleared,
        "ServiceTypeDeleted": deleted,
    },
    version=1,
    scope="admin",
    order_by=("name", "id"),
    filters={
        "id": Filter("id"),
        "name": Filter("name"),
        "default": Filter("is_default", "=", bool),
        "deleted": Filter("deleted", "=", bool),
        "provider": Filter("providers", "contains"),
    },
    defaults={"deleted": False},
    rename={"is_default": "default"},
)
