"""The audit log (one row per event, any event type) and the generic resource fold behind it.

Each event type of the registry says what it changed in domain terms (audit_text.py: "member
10.1.0.12:8080 added to pool web", "quota loadbalancer consumed 1: 3 used (of 50)"); a type
this release does not know is audited all the same, generically (its fields, or what differs
from before). To say what an update changed ("weight 1 → 5") it keeps the last known fields
of every aggregate (`resources`: the fold of all its events' fields, and `status_reason`: why
a service waits, from the `waiting_for` its scheduling events carry), written in the same transaction as the audit rows — so a restarted projector explains
the next change exactly as a clean rebuild would.

An event the projector set aside (unreadable, or refused by a view) is in the log all the same,
at its sequence: the row's summary says "seq N on <subject> was set aside by <views>: <error>"
(after what the event changed, when the audit view could read it). `note_set_aside` writes it,
in the transaction that records the event as set aside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from splice.events import subjects
from splice.events.folding import status_reason
from splice.events.follow import SetAside

from ..envelope import Event
from ..schema import Table, cols
from .audit_text import SUMMARIES, UPDATES
from .base import Filter, Tx, View

_encode = msgspec.json.Encoder().encode

AUDIT = Table(
    "audit",
    cols(
        "seq:int, time:time, tenant, actor, command_id, correlation_id, aggregate, "
        "aggregate_id, type, version:int, summary, changes:json"
    ),
    key=("seq",),
    indexes=(("tenant", "seq"), ("aggregate_id", "seq"), ("time",)),
    append_only=True,
)

RESOURCES = Table(
    "resources",
    cols(
        "key, tenant, aggregate, id, version:int, deleted:bool, fields:json, status_reason, "
        "created_seq:int, updated_seq:int, created_time:time, updated_time:time"
    ),
    key=("key",),
    # The key is "<tenant>.<aggregate>.<id>": its primary-key index also serves a tenant's and a
    # kind's rows (a prefix range), so no second index slows every batch down.
    prefetch=lambda ev: (ev.key,),
)

_WORD = re.compile(r"[A-Z][a-z0-9]*|[a-z0-9]+")
MAX_VALUE = 80


def show(value: Any) -> str:
    """A value as a person reads it in one line: repr, cut to a sensible length."""
    text = repr(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


_HUMANIZED: dict[tuple[str, str], str] = {}


def humanize(event_type: str, aggregate: str) -> str:
    """'ServiceTypeDefaultSet' on a 'servicetype' → 'default set' (cached: called per event)."""
    try:
        return _HUMANIZED[(event_type, aggregate)]
    except KeyError:
        text = _HUMANIZED[(event_type, aggregate)] = _humanize(event_type, aggregate)
        return text


def _humanize(event_type: str, aggregate: str) -> str:
    words = _WORD.findall(event_type)
    prefix = ""
    for i, w in enumerate(words):
        prefix += w.lower()
        if prefix == aggregate:
            words = words[i + 1 :]
            break
        if not aggregate.startswith(prefix):
            break
    return " ".join(w.lower() for w in words) or event_type


def summarize(
    event_type: str, aggregate: str, before: dict[str, Any] | None, fields: dict[str, Any]
) -> tuple[str, dict[str, list[Any]]]:
    """A readable line and the structured changes {field: [old, new]} of one event.

    `before` is the aggregate's folded fields before the event (None: its first event). A type
    of the registry says what it changed in its own words (`audit_text.SUMMARIES`); only an
    update of the resource's own attributes is a diff against `before`. A type this release
    does not know gets the generic line: its fields, or what differs from `before`.
    """
    known = SUMMARIES.get(event_type)
    if known is not None:
        try:
            summary = known(fields, before)
        except Exception:  # a payload the summary cannot read (upcast, raw): the generic line
            return _generic(event_type, aggregate, before, fields)
        if before is not None and event_type in UPDATES:
            return summary, {k: [before.get(k), v] for k, v in fields.items()
                             if before.get(k) != v}
        return summary, {k: [None, v] for k, v in fields.items()}
    return _generic(event_type, aggregate, before, fields)


def _generic(
    event_type: str, aggregate: str, before: dict[str, Any] | None, fields: dict[str, Any]
) -> tuple[str, dict[str, list[Any]]]:
    action = humanize(event_type, aggregate)
    if before is None:
        shown = ", ".join(f"{k}={show(v)}" for k, v in fields.items())
        changes = {k: [None, v] for k, v in fields.items()}
        return (f"{action}: {shown}" if shown else action), changes
    changes = {k: [before.get(k), v] for k, v in fields.items() if before.get(k) != v}
    if not changes:
        return action, {}
    diff = "; ".join(f"{k}: {show(old)} → {show(new)}" for k, (old, new) in changes.items())
    return f"{action}: {diff}", changes


def on_event(ev: Event, tx: Tx) -> None:
    """Every event: fold its fields into its resource, and append its audit row."""
    resources = tx["resources"]
    key = ev.key
    row = resources.get(key)
    fields = ev.fields()
    before = None if row is None else row["fields"]
    summary, changes = summarize(ev.type, ev.aggregate, before, fields)
    deleted = ev.type.endswith("Deleted")
    if row is None:
        resources.put(
            {
                "key": key,
                "tenant": ev.tenant,
                "aggregate": ev.aggregate,
                "id": ev.aggregate_id,
                "version": ev.version,
                "deleted": deleted,
                "fields": fields,
                "status_reason": None if deleted else status_reason(fields.get("waiting_for")),
                "created_seq": ev.seq,
                "updated_seq": ev.seq,
                "created_time": ev.time_ns,
                "updated_time": ev.time_ns,
            }
        )
    else:
        for k, v in fields.items():  # a loop, not any(): no generator per event
            if before.get(k) != v:  # type: ignore[union-attr]
                row["fields"] = {**before, **fields}  # type: ignore[dict-item]
                break
        row["version"] = ev.version
        row["updated_seq"] = ev.seq
        row["updated_time"] = ev.time_ns
        if deleted:
            row["deleted"] = True
        row["status_reason"] = (
            None if row["deleted"] else status_reason(row["fields"].get("waiting_for"))
        )
        resources.put(row)
    p = ev.payload
    tx["audit"].append(
        (
            ev.seq,
            ev.time_ns,
            ev.tenant,
            p.get("actor", ""),
            p.get("command_id", ""),
            p.get("correlation_id", ""),
            ev.aggregate,
            ev.aggregate_id,
            ev.type,
            ev.version,
            summary,
            _encode(changes).decode() if changes else "{}",
        )
    )


MAX_ERROR = 300  # characters of a set-aside event's error kept in its audit summary


def set_aside_note(record: SetAside, views: Sequence[str]) -> str:
    """'seq 12 on splice.evt.… was set aside by audit, loadbalancers: ValidationError: …'."""
    error = " ".join(record.error.split())  # one line
    if len(error) > MAX_ERROR:
        error = error[: MAX_ERROR - 1] + "…"
    by = f" by {', '.join(views)}" if views else ""
    return f"seq {record.seq} on {record.subject} was set aside{by}: {error}"


def _version(headers: Mapping[str, str]) -> int:
    try:
        return int(headers.get(subjects.H_VERSION) or 0)
    except ValueError:
        return 0


def set_aside_row(record: SetAside, note: str) -> tuple[Any, ...]:
    """The audit row of an event the audit view could not read: what its subject and headers
    say (a tenant's own events stay the tenant's), and the note as its summary."""
    parts = subjects.parse_event(record.subject)
    tenant, aggregate, ident = (parts.tenant, parts.aggregate, parts.ident) if parts else ("", "", "")
    h = record.headers
    return (
        record.seq,
        record.time_ns,
        tenant,
        h.get(subjects.H_ACTOR, ""),
        h.get(subjects.H_COMMAND_ID, ""),
        h.get(subjects.H_CORRELATION_ID, ""),
        aggregate,
        ident,
        record.topic,
        _version(h),
        note,
        "{}",
    )


SUMMARY = AUDIT.column_names.index("summary")


def note_set_aside(tx: Tx, notes: Sequence[tuple[SetAside, Sequence[str]]]) -> None:
    """Record set-aside events in the audit rows of this transaction.

    `notes`: each event set aside (in stream order) with the views that set it aside. An event
    the audit view applied in this transaction has its row's summary extended with the note;
    any other gets a row of its own. Only for events the audit view is applying now (the
    caller's check): an older row is never written twice.
    """
    rows = tx["audit"]
    where = {row[0]: i for i, row in enumerate(rows.appended)} if rows.appended else {}
    for record, views in notes:
        note = set_aside_note(record, views)
        i = where.get(record.seq)
        if i is None:
            rows.append(set_aside_row(record, note))
            continue
        row = list(rows.appended[i])
        row[SUMMARY] = f"{row[SUMMARY]} — {note}"
        rows.appended[i] = tuple(row)


AUDIT_VIEW = View(
    name="audit",
    tables=(AUDIT, RESOURCES),
    handlers={},
    any_event=on_event,
    version=3,  # 2: resources.status_reason; 3: a summary per event type (audit_text)
    scope="tenant",
    query_table="audit",
    order_by=("seq",),
    filters={
        "actor": Filter("actor"),
        "aggregate": Filter("aggregate"),
        "aggregate_id": Filter("aggregate_id"),
        "id": Filter("aggregate_id"),
        "type": Filter("type"),
        "command_id": Filter("command_id"),
        "correlation_id": Filter("correlation_id"),
        "since": Filter("time", ">=", int),
        "until": Filter("time", "<", int),
        "from_seq": Filter("seq", ">=", int),
        "to_seq": Filter("seq", "<=", int),
    },
)

RESOURCES_VIEW_QUERY = View(
    # Not a second projection: a query face on the `resources` table the audit view keeps
    # (every aggregate's latest folded fields, any kind). Has no handlers of its own.
    name="resources",
    tables=(RESOURCES,),
    handlers={},
    scope="tenant",
    projected_by="audit",
    tenant_prefix="key",
    query_table="resources",
    order_by=("key",),
    filters={
        "aggregate": Filter("aggregate"),
        "id": Filter("id"),
        "deleted": Filter("deleted", "=", bool),
    },
    defaults={"deleted": False},
    hidden=("key",),
)


def kind_face(name: str, aggregate: str) -> View:
    """A query face on `resources` for one aggregate kind (its latest folded fields).

    Generic on purpose: every family gets a queryable list the day its events land; a family
    that needs more than "the last value of each field" (a tree, a list of parts) gets a view
    module of its own, as load balancers have.
    """
    return View(
        name=name,
        tables=(RESOURCES,),
        handlers={},
        scope="tenant",
        projected_by="audit",
        tenant_prefix="key",
        query_table="resources",
        order_by=("key",),
        filters={"id": Filter("id"), "deleted": Filter("deleted", "=", bool)},
        defaults={"deleted": False},
        fixed={"aggregate": aggregate},
        hidden=("key",),
    )


# Families without a dedicated view yet: networks, ports, routers, hosts, quotas, firewalls,
# NAT, taps, service chains (query name -> aggregate kind on the subject).
KIND_FACES = tuple(
    kind_face(name, kind)
    for name, kind in {
        "networks": "network",
        "ports": "port",
        "routers": "router",
        "hosts": "hosts",
        "quotas": "quota",
        "firewalls": "firewall",
        "nats": "nat",
        "taps": "tap",
        "chains": "chain",
    }.items()
)
