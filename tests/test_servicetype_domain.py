"""ServiceType's rules, as pure domain tests: given events, when a command, then events or an error.

No NATS, no threads: the handlers run against the library's in-memory (POPO) store with Splice's
own mapper, so the events also round-trip through the wire encoding.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from splice.events.contracts import (
    EVENT_TYPES,
    CreateServiceType,
    DeleteServiceType,
    SetDefaultServiceType,
    UpdateServiceType,
)
from splice.services.codec import type_name
from splice.services.domain import (
    DefaultRequiredError,
    Meta,
    NameTakenError,
    NotFoundError,
    acting,
)
from splice.services.handlers import COMMAND_HANDLERS, Decision, SpliceApplication


@pytest.fixture
def app() -> Iterator[SpliceApplication]:
    a = SpliceApplication(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.popo",
            "MAPPER_TOPIC": "splice.services.codec:SpliceMapper",
        }
    )
    yield a
    a.close()


def meta() -> Meta:
    cid = str(uuid.uuid4())
    return Meta(actor="tester", command_id=cid, correlation_id=cid)


def when(app: SpliceApplication, cmd: Any) -> tuple[Decision, list[str]]:
    """Run one command; save its decision; return it and the type names of the new events."""
    with acting(meta()):
        decision = COMMAND_HANDLERS[type(cmd)](app, "_admin", cmd)
    names = [type_name(e.payload) for agg in decision.save for e in agg.pending_events]
    if decision.save:
        app.save(*decision.save)
    return decision, names


def create(app: SpliceApplication, name: str, default: bool = False) -> str:
    d, _ = when(
        app, CreateServiceType(name=name, providers={"loadbalancer": "haproxy"}, default=default)
    )
    return d.subject.id.rsplit(".", 1)[-1]


def test_first_service_type_becomes_the_default(app: SpliceApplication) -> None:
    d, names = when(app, CreateServiceType(name="a", providers={"loadbalancer": "haproxy"}))
    assert names == [
        "ServiceTypeCreated",
        "ServiceTypeDefaultSet",
        "ServiceTypeNameCreated",
        "ServiceTypeNameClaimed",
        "DefaultServiceTypeCreated",
        "DefaultServiceTypeChanged",
    ]
    assert app.repository.get(d.subject.id).is_default


def test_second_service_type_is_not_the_default_unless_asked(app: SpliceApplication) -> None:
    create(app, "a")
    _, names = when(app, CreateServiceType(name="b", providers={"nat": "nftables"}))
    assert names == ["ServiceTypeCreated", "ServiceTypeNameCreated", "ServiceTypeNameClaimed"]


def test_creating_with_default_moves_the_default_atomically(app: SpliceApplication) -> None:
    a = create(app, "a")
    d, names = when(app, CreateServiceType(name="b", providers={"nat": "nftables"}, default=True))
    assert "ServiceTypeDefaultCleared" in names and "DefaultServiceTypeChanged" in names
    assert not app.repository.get(f"_admin.servicetype.{a}").is_default
    assert app.repository.get(d.subject.id).is_default


def test_a_taken_name_is_refused(app: SpliceApplication) -> None:
    create(app, "a")
    with pytest.raises(NameTakenError) as e:
        when(app, CreateServiceType(name="a", providers={"tap": "tc-mirror"}))
    assert e.value.field == "$.name"


def test_renaming_releases_the_old_name(app: SpliceApplication) -> None:
    a = create(app, "a")
    _, names = when(app, UpdateServiceType(id=a, name="z"))
    assert names == [
        "ServiceTypeUpdated",
        "ServiceTypeNameCreated",
        "ServiceTypeNameClaimed",
        "ServiceTypeNameReleased",
    ]
    create(app, "a")  # free again
    with pytest.raises(NameTakenError):
        create(app, "z")


def test_setting_the_current_default_again_records_nothing(app: SpliceApplication) -> None:
    a = create(app, "a")
    d, names = when(app, SetDefaultServiceType(id=a))
    assert names == [] and d.save == []


def test_the_default_cannot_be_deleted_and_others_can(app: SpliceApplication) -> None:
    a = create(app, "a")
    b = create(app, "b")
    with pytest.raises(DefaultRequiredError):
        when(app, DeleteServiceType(id=a))
    _, names = when(app, DeleteServiceType(id=b))
    assert names == ["ServiceTypeDeleted", "ServiceTypeNameReleased"]
    with pytest.raises(NotFoundError):
        when(app, UpdateServiceType(id=b, description="x"))


def test_unknown_ids_are_not_found(app: SpliceApplication) -> None:
    for cmd in (
        UpdateServiceType(id=str(uuid.uuid4())),
        DeleteServiceType(id=str(uuid.uuid4())),
        SetDefaultServiceType(id=str(uuid.uuid4())),
    ):
        with pytest.raises(NotFoundError):
            when(app, cmd)


def test_replaying_the_events_rebuilds_the_same_state(app: SpliceApplication) -> None:
    a = create(app, "a")
    b = create(app, "b")
    when(app, SetDefaultServiceType(id=b))
    when(app, UpdateServiceType(id=a, description="changed", providers={"firewall": "nftables"}))
    when(app, DeleteServiceType(id=a))
    for agg_id in (f"_admin.servicetype.{a}", f"_admin.servicetype.{b}"):
        stored = app.recorder.select_events(agg_id)
        mapper = app.mapper
        rebuilt: Any = None
        for s in stored:
            rebuilt = mapper.to_domain_event(s).mutate(rebuilt)
        live = app.repository.get(agg_id)
        assert vars(rebuilt) == vars(live)


def test_every_event_type_is_applied_by_some_aggregate() -> None:
    from splice.services.registry import AGGREGATES

    for name in EVENT_TYPES:
        appliers = [a for a in AGGREGATES.values()
                    if hasattr(a, f"when_{name}") or name in getattr(a, "APPLIED_TAGS", ())]
        assert appliers, f"no aggregate applies {name}"


def test_stored_payloads_decode_into_the_wire_contracts(app: SpliceApplication) -> None:
    create(app, "a")
    for n in app.recorder.select_notifications(start=None, limit=100):
        ev = msgspec.json.decode(n.state, type=EVENT_TYPES[n.topic])
        assert ev.actor == "tester"
