"""What the command side accepts for provider nftables-l4 is what its driver serves: TCP only,
round robin or source IP, TCP health checks, no L7 policies, no connection limit. Each refusal
is `invalid` naming the field, and appends nothing; the same trees stay accepted for haproxy.

No NATS, no threads: `World` runs the production handlers and aggregate (as in
test_domain_rules).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from world import World

from splice.services.domain import InvalidError

T = "acme"


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    yield world
    world.close()


def setup(w: World) -> dict[str, str]:
    l4 = w.cmd("_admin", "CreateServiceType", name="l4", providers={"loadbalancer": "nftables-l4"})
    ha = w.cmd("_admin", "CreateServiceType", name="ha", providers={"loadbalancer": "haproxy"})
    net = w.cmd(T, "CreateNetwork", name="web", cidr="10.1.0.0/24")
    return {"l4": l4, "ha": ha, "net": net}


def tree(pool: dict[str, Any] | None = None, listener: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": "lb",
        "pools": [{"name": "p", "protocol": "TCP",
                   "members": [{"address": "10.1.0.11", "protocol_port": 8080}], **(pool or {})}],
        "listeners": [{"name": "l", "protocol": "TCP", "protocol_port": 80, "default_pool": "p",
                       **(listener or {})}],
    }


def refused(w: World, command: str, field: str, /, **fields: Any) -> None:
    """Refused as `invalid` with ``field`` named, and nothing appended."""
    events = len(list(w.app.recorder.select_notifications(0, 1_000_000)))
    with pytest.raises(InvalidError) as e:
        w.cmd(T, command, **fields)
    assert e.value.field == field, e.value.message
    assert "nftables-l4" in e.value.message
    assert len(list(w.app.recorder.select_notifications(0, 1_000_000))) == events


CREATE_REFUSALS = [
    ({"listener": {"protocol": "HTTP"}, "pool": {"protocol": "HTTP"}}, "$.pools[0].protocol"),
    ({"listener": {"protocol": "HTTPS"}}, "$.listeners[0].protocol"),
    ({"pool": {"lb_algorithm": "LEAST_CONNECTIONS"}}, "$.pools[0].lb_algorithm"),
    ({"pool": {"session_persistence": {"type": "HTTP_COOKIE"}, "protocol": "HTTP"}},
     "$.pools[0].protocol"),
    ({"pool": {"healthmonitor": {"type": "HTTP"}}}, "$.pools[0].healthmonitor.type"),
    ({"pool": {"healthmonitor": {"type": "PING"}}}, "$.pools[0].healthmonitor.type"),
    ({"listener": {"connection_limit": 100}}, "$.listeners[0].connection_limit"),
    ({"listener": {"l7policies": [{"action": "REJECT"}]}}, "$.listeners[0].l7policies"),
]


@pytest.mark.parametrize(("change", "field"), CREATE_REFUSALS, ids=[c[1] for c in CREATE_REFUSALS])
def test_a_tree_nftables_l4_cannot_serve_is_refused_at_create_naming_the_field(
        w: World, change: dict[str, Any], field: str) -> None:
    b = setup(w)
    refused(w, "CreateLoadBalancer", field, vip_network_id=b["net"], service_type_id=b["l4"],
            **tree(**change))


def test_what_nftables_l4_serves_is_accepted_and_haproxy_keeps_what_it_serves(w: World) -> None:
    b = setup(w)
    for pool in ({}, {"lb_algorithm": "SOURCE_IP"},
                 {"session_persistence": {"type": "SOURCE_IP"},
                  "healthmonitor": {"type": "TCP", "delay": 1, "timeout": 1}}):
        lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], service_type_id=b["l4"],
                   **tree(pool))
        assert w.get(T, "loadbalancer", lb).insertion.provider == "nftables-l4"
    w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], service_type_id=b["ha"],
          **tree({"lb_algorithm": "LEAST_CONNECTIONS", "healthmonitor": {"type": "PING"}},
                 {"connection_limit": 100}))


def test_changes_to_an_nftables_l4_tree_are_held_to_the_same_rules(w: World) -> None:
    b = setup(w)
    lb = w.cmd(T, "CreateLoadBalancer", vip_network_id=b["net"], service_type_id=b["l4"], **tree())
    state = w.get(T, "loadbalancer", lb)
    pool = next(iter(state.pools))
    listener = next(iter(state.listeners))
    refused(w, "CreateListener", "$.listener.protocol", loadbalancer_id=lb,
            listener={"name": "h", "protocol": "HTTP", "protocol_port": 81})
    refused(w, "CreateListener", "$.listener.connection_limit", loadbalancer_id=lb,
            listener={"name": "t", "protocol": "TCP", "protocol_port": 82, "connection_limit": 5})
    refused(w, "UpdateListener", "$.connection_limit", loadbalancer_id=lb, id=listener,
            connection_limit=10)
    refused(w, "CreatePool", "$.pool.protocol", loadbalancer_id=lb,
            pool={"name": "h", "protocol": "HTTP"})
    refused(w, "CreatePool", "$.pool.lb_algorithm", loadbalancer_id=lb,
            pool={"name": "q", "protocol": "TCP", "lb_algorithm": "LEAST_CONNECTIONS"})
    refused(w, "UpdatePool", "$.lb_algorithm", loadbalancer_id=lb, id=pool,
            lb_algorithm="LEAST_CONNECTIONS")
    refused(w, "UpdatePool", "$.session_persistence.type", loadbalancer_id=lb, id=pool,
            session_persistence={"type": "APP_COOKIE", "cookie_name": "c"})
    refused(w, "SetHealthMonitor", "$.healthmonitor.type", loadbalancer_id=lb, pool_id=pool,
            healthmonitor={"type": "HTTP"})
    refused(w, "CreateL7Policy", "$.policy", loadbalancer_id=lb, listener_id=listener,
            policy={"action": "REJECT"})
    # what it serves goes through
    w.cmd(T, "UpdatePool", loadbalancer_id=lb, id=pool, lb_algorithm="SOURCE_IP")
    w.cmd(T, "SetHealthMonitor", loadbalancer_id=lb, pool_id=pool,
          healthmonitor={"type": "TCP", "delay": 2, "timeout": 1})
    w.cmd(T, "UpdateListener", loadbalancer_id=lb, id=listener, connection_limit=-1, name="l2")
    w.cmd(T, "CreateListener", loadbalancer_id=lb,
          listener={"name": "t", "protocol": "TCP", "protocol_port": 82, "default_pool_id": pool})
