"""The copy of a cached aggregate that a command decides on (`SpliceAggregate.__deepcopy__`).

The repository hands every command a copy of the cached aggregate, and only a saved decision
replaces the cached one: whatever a decision changes in its copy, and then abandons (refused,
lost a concurrency check), must leave the cached aggregate as it was. The copy shares what is
immutable and copies the rest, each container as deep as it must be.
"""

from __future__ import annotations

import copy

from splice.services.domain import Meta, acting
from splice.services.servicetype import ServiceType


def _type() -> ServiceType:
    with acting(Meta("alice", "c1", "c1", "_admin")):
        st = ServiceType.create("_admin.servicetype.1", "lb", "load balancers",
                                {"LOADBALANCER": "haproxy"})
        st.use("t1.loadbalancer.a")
    st.collect_events()
    return st


def test_a_decision_on_the_copy_leaves_the_cached_aggregate_as_it_was() -> None:
    cached = _type()
    before = (cached.version, dict(cached.providers), set(cached.users), cached.description)
    mine = copy.deepcopy(cached)
    with acting(Meta("bob", "c2", "c2", "_admin")):
        mine.use("t1.loadbalancer.b")
        mine.update("lb", "changed", {"LOADBALANCER": "nftables-l4"})
    mine.users.add("t2.router.x")  # a change in place, as a fold may make
    mine.providers["FIREWALL"] = "nftables"
    assert mine.version == cached.version + 2
    assert (cached.version, cached.providers, cached.users, cached.description) == before
    assert cached.applied_version("_admin", "c2") is None
    assert mine.applied_version("_admin", "c1") == cached.applied_version("_admin", "c1") == 2


def test_the_copy_shares_only_what_cannot_change() -> None:
    cached = _type()
    mine = copy.deepcopy(cached)
    assert mine.users == cached.users and mine.users is not cached.users
    assert mine.providers == cached.providers and mine.providers is not cached.providers
    assert mine.name is cached.name  # a str: shared
    # the remembered commands: a persistent map, shared, however many there are (a copy per
    # command must not cost what the aggregate's history holds)
    assert mine.__dict__["_commands"] is cached.__dict__["_commands"]


def test_a_long_history_of_commands_is_remembered_apart_in_each_copy() -> None:
    cached = _type()
    with acting(Meta("bob", "c0", "c0", "_admin")):
        for i in range(2_000):
            cached.update("lb", f"d{i}", {"LOADBALANCER": "haproxy"})
    cached.collect_events()
    mine = copy.deepcopy(cached)
    with acting(Meta("bob", "new", "new", "t1")):
        mine.update("lb", "last", {"LOADBALANCER": "haproxy"})
    mine.collect_events()  # stored: now it counts
    assert mine.applied_version("t1", "new") == cached.version + 1
    assert cached.applied_version("t1", "new") is None  # the cached one never saw it
    assert mine.applied_version("_admin", "c1") == cached.applied_version("_admin", "c1") == 2
    assert mine.applied_version("_admin", "c0") == cached.version  # the last event of c0
