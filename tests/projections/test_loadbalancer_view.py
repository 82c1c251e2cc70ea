"""The load-balancer status tree (Octavia's model) from a known history of LB events.

Events are appended as the command side writes them (same subjects, headers and payloads);
the projector, the queries and time travel read them back.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import nats
from streamgen import Appender, Ev

from splice.events.lbaas import HealthMonitor, Listener, Member, Pool
from splice.events.wire import InsertionState
from splice.natsserver import NatsServer
from splice.projections.projector import Projector
from splice.projections.queries import parse_query, run_query
from splice.projections.reading import last_event_seq, run_projection
from splice.projections.store import open_store
from splice.projections.timetravel import At, state_at
from splice.projections.views import QUERY_VIEWS

TENANT = "acme"


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def lb_history(lb: str) -> tuple[list[Ev], dict[str, str]]:
    pool, listener, m1, m2, m3 = ids(5)
    b = msgspec.to_builtins
    members = [
        Member(id=m1, address="10.0.0.11", protocol_port=8080),
        Member(id=m2, address="10.0.0.12", protocol_port=8080),
    ]
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            "LoadBalancerCreated",
            {
                "name": "web",
                "description": "",
                "vip_network_id": str(uuid.uuid4()),
                "vip_address": "10.0.0.5",
                "vip_port_id": str(uuid.uuid4()),
                "insertion": b(
                    InsertionState(
                        mode="floating", service_type_id=str(uuid.uuid4()), provider="haproxy"
                    )
                ),
                "admin_state_up": True,
                "pools": [b(Pool(id=pool, name="p", protocol="HTTP", members=members))],
                "listeners": [
                    b(
                        Listener(
                            id=listener,
                            name="l",
                            protocol="HTTP",
                            protocol_port=80,
                            default_pool_id=pool,
                        )
                    )
                ],
                "generation": 1,
            },
        ),
        ("LoadBalancerScheduled", {"host": "h1"}),
        ("LoadBalancerProvisioned", {"host": "h1", "generation": 1}),  # 3: ACTIVE
        (
            "LoadBalancerOperatingStatusChanged",
            {
                "loadbalancer": "DEGRADED",
                "listeners": {listener: "ONLINE"},
                "pools": {pool: "DEGRADED"},
                "members": {m1: "ONLINE", m2: "ERROR"},
            },
        ),  # 4
        (
            "MemberCreated",
            {
                "pool_id": pool,
                "member": b(Member(id=m3, address="10.0.0.13", protocol_port=8080)),
                "generation": 2,
            },
        ),
        (
            "HealthMonitorSet",
            {"pool_id": pool, "healthmonitor": b(HealthMonitor(type="HTTP")), "generation": 3},
        ),
        ("MemberDeleted", {"pool_id": pool, "member_id": m2, "generation": 4}),  # 7: PENDING_UPDATE
        ("LoadBalancerProvisioned", {"host": "h1", "generation": 4}),  # 8: ACTIVE
        ("LoadBalancerDeleteRequested", {"generation": 5}),
        ("LoadBalancerDeleted", {}),  # 10
    ]
    evs = [
        Ev(TENANT, "loadbalancer", lb, v, typ, fields, actor="lb-tester")
        for v, (typ, fields) in enumerate(steps, 1)
    ]
    return evs, {"pool": pool, "listener": listener, "m1": m1, "m2": m2, "m3": m3}


async def project(url: str, db_url: str, until: int) -> None:
    nc = await nats.connect(url)
    store = open_store(db_url)
    try:
        await asyncio.wait_for(
            run_projection(nc.jetstream(), Projector(store), asyncio.Event(), until=until), 30
        )
    finally:
        store.close()
        await nc.close()


def ask(db_url: str, view: str, tenant: str = TENANT, **filters: Any) -> list[dict[str, Any]]:
    store = open_store(db_url)
    try:
        return run_query(store, parse_query(tenant, QUERY_VIEWS[view], filters))["items"]
    finally:
        store.close()


async def test_the_status_tree_follows_provisioning_and_operating_reports(
    fresh_nats: NatsServer, db_url: str
) -> None:
    lb = str(uuid.uuid4())
    evs, part = lb_history(lb)
    appender = Appender(fresh_nats.url)
    try:
        seqs = [appender.append([e])[0] for e in evs]
    finally:
        appender.close()

    await project(fresh_nats.url, db_url, seqs[3])  # created, scheduled, ACTIVE, statuses
    [row] = ask(db_url, "loadbalancers")
    assert (row["provisioning_status"], row["operating_status"], row["host"]) == (
        "ACTIVE",
        "DEGRADED",
        "h1",
    )
    tree = row["status_tree"]["loadbalancer"]
    [listener] = tree["listeners"]
    assert (listener["id"], listener["operating_status"]) == (part["listener"], "ONLINE")
    [pool] = listener["pools"]
    assert pool["operating_status"] == "DEGRADED"
    assert {m["id"]: m["operating_status"] for m in pool["members"]} == {
        part["m1"]: "ONLINE",
        part["m2"]: "ERROR",
    }
    assert ask(db_url, "loadbalancers", tenant="other") == []

    await project(fresh_nats.url, db_url, seqs[6])  # member added, monitor set, member removed
    [row] = ask(db_url, "loadbalancers")
    assert row["provisioning_status"] == "PENDING_UPDATE" and row["generation"] == 4
    members = {m["id"]: m for m in ask(db_url, "members", pool_id=part["pool"])}
    assert set(members) == {part["m1"], part["m3"]}
    assert members[part["m3"]]["operating_status"] == "OFFLINE"  # monitored, not yet reported
    assert members[part["m1"]]["provisioning_status"] == "PENDING_UPDATE"
    [pool_row] = ask(db_url, "pools")
    assert pool_row["healthmonitor"]["type"] == "HTTP"

    await project(fresh_nats.url, db_url, seqs[-1])
    assert ask(db_url, "loadbalancers") == []  # deleted ones are hidden by default
    [gone] = ask(db_url, "loadbalancers", deleted=True)
    assert gone["provisioning_status"] == "DELETED"
    assert ask(db_url, "members") == [] and ask(db_url, "listeners") == []

    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        assert await last_event_seq(js) == seqs[-1]
        then = await state_at(js, At(seq=seqs[7]), resource_id=lb)
    finally:
        await nc.close()
    [was] = then["loadbalancers"]
    assert was["provisioning_status"] == "ACTIVE" and was["deleted"] is False
    assert {m["id"] for m in then["members"]} == {part["m1"], part["m3"]}
