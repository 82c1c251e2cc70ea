"""The audit log's summaries: every event type of the registry has its own, in domain terms;
representative events read as an operator expects; what a tenant wrote stays plain text."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.events.contracts import EVENT_TYPES
from splice.events.wire import EventMeta
from splice.projections.views.audit import summarize
from splice.projections.views.audit_text import SUMMARIES

META = {"originator_id", "originator_version", "timestamp", "actor", "command_id",
        "correlation_id", "causation_id", "schema", "aggregate", "command_tenant"}
NASTY = st.sampled_from(["[bold red]x[/bold red]", "a\nb\x1b[31m", "{0}%s{name}", "ÿ" * 90, ""])


def values(t: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """Payload values of a contract's field type, as the event's JSON would carry them; strings
    include markup, control characters and format directives."""
    i = msgspec.inspect
    if isinstance(t, i.Metadata):
        return values(t.type)
    if isinstance(t, i.UnionType):
        return st.one_of(*[values(u) for u in t.types])
    if isinstance(t, i.NoneType):
        return st.none()
    if isinstance(t, i.BoolType):
        return st.booleans()
    if isinstance(t, i.IntType):
        return st.integers(-1, 10**6)
    if isinstance(t, i.StrType):
        return st.one_of(st.text(max_size=20), NASTY)
    if isinstance(t, i.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, i.ListType):
        return st.lists(values(t.item_type), max_size=3)
    if isinstance(t, i.DictType):
        return st.dictionaries(st.text(max_size=8), values(t.value_type), max_size=3)
    if isinstance(t, i.StructType):
        return fields_of(t)
    return st.text(max_size=8)


def fields_of(info: msgspec.inspect.StructType) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f.encode_name: values(f.type) for f in info.fields
                                  if f.name not in META})


def event_fields(event: type[EventMeta]) -> st.SearchStrategy[dict[str, Any]]:
    info = msgspec.inspect.type_info(event)
    assert isinstance(info, msgspec.inspect.StructType)
    return fields_of(info)


def test_every_event_type_of_the_registry_has_a_summary_of_its_own() -> None:
    missing = sorted(set(EVENT_TYPES) - set(SUMMARIES))
    assert missing == [], f"event types without an audit summary: {missing}"
    unknown = sorted(set(SUMMARIES) - set(EVENT_TYPES))
    assert unknown == [], f"summaries of types the registry does not have: {unknown}"


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_summary_reads_any_valid_payload_as_one_plain_line(
    event_type: str, data: st.DataObject
) -> None:
    fields = data.draw(event_fields(EVENT_TYPES[event_type]), label="fields")
    before = data.draw(st.one_of(st.none(), event_fields(EVENT_TYPES[event_type])),
                       label="before")
    line = SUMMARIES[event_type](fields, before)  # raises: the test fails (no fallback here)
    assert isinstance(line, str) and line
    assert line.isprintable(), repr(line)  # one line: newlines and escapes are escaped
    assert "\x1b" not in line


POOL: dict[str, Any] = {"id": "p1", "name": "web", "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
        "members": [{"id": "m1", "address": "10.1.0.11", "protocol_port": 8080, "weight": 1,
                     "backup": False, "admin_state_up": True, "name": None}]}
LB: dict[str, Any] = {"name": "lb1", "description": "", "pools": [POOL], "listeners": [
    {"id": "l1", "name": "http", "protocol": "HTTP", "protocol_port": 80}]}
M2: dict[str, Any] = {"id": "m2", "address": "10.1.0.12", "protocol_port": 8080, "weight": 1, "backup": False,
      "admin_state_up": True, "name": None}

CASES: list[tuple[str, str, dict[str, Any] | None, dict[str, Any], str]] = [
    ("quota-consumed-not-a-diff", "QuotaConsumed",
     {"tenant": "acme", "resource": "network", "used": 2, "limit": 100},
     {"resource": "loadbalancer", "used": 3, "limit": 50},
     "quota loadbalancer consumed 1: 3 used (of 50)"),
    ("member-added-to-pool-by-name", "MemberCreated", LB,
     {"pool_id": "p1", "member": M2, "generation": 2},
     "member 10.1.0.12:8080 added to pool web"),
    ("member-weight-from-the-creation", "MemberUpdated", LB,
     {"pool_id": "p1", "member": {**POOL["members"][0], "weight": 5}, "generation": 2},
     "member 10.1.0.11:8080 of pool web: weight 1 → 5"),
    ("member-weight-from-the-last-update", "MemberUpdated",
     {**LB, "member": {**POOL["members"][0], "weight": 5}},
     {"pool_id": "p1", "member": {**POOL["members"][0], "weight": 7, "backup": True},
      "generation": 3},
     "member 10.1.0.11:8080 of pool web: weight 5 → 7, backup False → True"),
    ("member-removed", "MemberDeleted", LB, {"pool_id": "p1", "member_id": "m1",
                                             "generation": 2},
     "member 10.1.0.11:8080 removed from pool web"),
    ("servicetype-update", "ServiceTypeUpdated",
     {"name": "gold", "description": "a", "providers": {"loadbalancer": "haproxy"}},
     {"name": "gold", "description": "b", "providers": {"loadbalancer": "haproxy"}},
     "service type gold updated: description 'a' → 'b'"),
    ("quota-limits", "QuotaLimitsSet", {"tenant": "acme", "limits": {"loadbalancers": 100}},
     {"limits": {"loadbalancers": 50, "networks": 5}},
     "quota limits set: loadbalancers 100 → 50, networks 5"),
    ("statuses", "LoadBalancerOperatingStatusChanged", LB,
     {"loadbalancer": "ONLINE", "listeners": {}, "pools": {},
      "members": {"0a1b2c3d-0000-0000-0000-000000000000": "ERROR"}},
     "operating status: load balancer ONLINE, member 0a1b2c3d ERROR"),
    ("waiting", "LoadBalancerScheduled", LB,
     {"host": "", "previous_host": None, "waiting_for": "nftables-l4"},
     "load balancer waits for a host that offers nftables-l4"),
    ("deleted-by-name", "LoadBalancerDeleted", LB, {}, "load balancer lb1 deleted"),
    ("port-without-a-name", "PortCreated", None,
     {"network_id": "acme.network.0a1b2c3d-0000", "ip_address": "10.1.0.2",
      "mac_address": "fa:16:3e:00:00:01", "name": None, "device_owner": "", "host": None},
     "port created: 10.1.0.2 (fa:16:3e:00:00:01) on network 0a1b2c3d"),
    ("markup-and-newlines-are-text", "NetworkCreated", None,
     {"name": "[red]x[/red]\nevil", "cidr": "10.0.0.0/24", "gateway": "10.0.0.1",
      "segmentation_id": 7},
     "network [red]x[/red]\\nevil created: 10.0.0.0/24, gateway 10.0.0.1, VNI 7"),
]


@pytest.mark.parametrize(("event_type", "before", "fields", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_representative_summaries(
    event_type: str, before: dict[str, Any] | None, fields: dict[str, Any], expected: str
) -> None:
    summary, _ = summarize(event_type, "x", before, fields)
    assert summary == expected


def test_changes_diff_only_updates_of_the_resource_itself() -> None:
    before = {"resource": "networks", "used": 2, "limit": 100}
    _, consumed = summarize("QuotaConsumed", "quota", before,
                            {"resource": "loadbalancers", "used": 3, "limit": 50})
    assert consumed["limit"] == [None, 50]  # what it set, not "100 → 50" from another kind
    _, updated = summarize("LoadBalancerUpdated", "loadbalancer",
                           {"name": "a", "description": "", "admin_state_up": True},
                           {"name": "b", "description": "", "admin_state_up": True})
    assert updated == {"name": ["a", "b"]}


def test_a_type_this_release_does_not_know_gets_the_generic_line() -> None:
    summary, changes = summarize("NetworkRenamedInTheFuture", "network", {"name": "n1"},
                                 {"name": "n1b"})
    assert summary == "renamed in the future: name: 'n1' → 'n1b'"
    assert changes == {"name": ["n1", "n1b"]}
