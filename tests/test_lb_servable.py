"""Accepted means servable: every load balancer the command side accepts renders a config that
`haproxy -c` accepts.

Random sequences of the whole load-balancer command family (create with a tree, listeners,
pools, members, monitors, L7 policies and rules, and their updates) go through the production
handlers and aggregate (`tests/world.py`, no I/O). Each command is decoded from JSON like the
wire does; it is either refused (by the wire's types, or by the domain with the field named) or
accepted. After every accepted command, the fold's state is rendered by the production renderer
and checked by a real haproxy. The five cases that used to be accepted and then refused by the
agent are pinned one by one below.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from splice.agents.drivers.haproxy.render import LbPaths, render
from splice.agents.model import LoadBalancerSpec, NetworkSpec
from splice.services.domain import DomainError
from tests.world import World

T = "acme"
PATHS = LbPaths("/var/lib/splice/lb/prop")

names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
protocols = st.sampled_from(["HTTP", "TCP", "HTTPS"])
millis = st.sampled_from([0, 1, 500, 50_000, 86_400_000])
limits = st.sampled_from([-1, 0, 1, 1000])
values = st.from_regex(r"[A-Za-z0-9 #${}().*/^-]{1,12}", fullmatch=True)


def member() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"address": st.sampled_from(["10.1.0.11", "10.1.0.12", "10.9.9.9"]),
         "protocol_port": st.sampled_from([80, 8080, 65535])},
        optional={"weight": st.integers(0, 256), "backup": st.booleans(),
                  "admin_state_up": st.booleans(), "name": names})


def monitor() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["TCP", "HTTP", "PING"]),
         "delay": st.sampled_from([1, 5, 3600, 3601, 86400]),
         "timeout": st.sampled_from([1, 5, 60, 86400])},
        optional={"max_retries": st.integers(1, 10), "max_retries_down": st.integers(1, 10),
                  "http_method": st.sampled_from(["GET", "HEAD", "POST"]),
                  "url_path": st.sampled_from(["/", "/healthz", "/a?b=c&d=%20"]),
                  "expected_codes": st.sampled_from(["200", "200,202", "200-204", "204-200"]),
                  "admin_state_up": st.booleans()})


def persistence() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["SOURCE_IP", "HTTP_COOKIE", "APP_COOKIE"])},
        optional={"cookie_name": st.sampled_from(["JSESSIONID", "sid", "x-y_z"])})


def pool(name: str | None = None) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"name": st.just(name) if name else names, "protocol": protocols},
        optional={"lb_algorithm": st.sampled_from(["ROUND_ROBIN", "LEAST_CONNECTIONS",
                                                   "SOURCE_IP"]),
                  "session_persistence": persistence(),
                  "members": st.lists(member(), max_size=3),
                  "healthmonitor": monitor(), "admin_state_up": st.booleans()})


def rule() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["HOST_NAME", "PATH", "HEADER", "COOKIE", "FILE_TYPE"]),
         "compare_type": st.sampled_from(["EQUAL_TO", "STARTS_WITH", "ENDS_WITH", "CONTAINS",
                                          "REGEX"]),
         "value": values},
        optional={"key": st.sampled_from(["X-Test", "beta"]), "invert": st.booleans()})


def policy() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"action": st.sampled_from(["REJECT", "REDIRECT_TO_POOL", "REDIRECT_TO_URL"])},
        optional={"position": st.integers(1, 5), "redirect_pool": st.sampled_from(["p0", "p1"]),
                  "redirect_url": st.just("https://example.com/x?y=%25"),
                  "redirect_http_code": st.sampled_from([301, 302, 308]),
                  "rules": st.lists(rule(), max_size=2), "name": names})


def listener() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"name": names, "protocol": protocols,
         "protocol_port": st.sampled_from([80, 443, 8080])},
        optional={"connection_limit": limits, "timeout_client_data": millis,
                  "timeout_member_connect": millis, "timeout_member_data": millis,
                  "default_pool": st.sampled_from(["p0", "p1"]),
                  "l7policies": st.lists(policy(), max_size=2), "admin_state_up": st.booleans()})


def create() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "name": names,
        "pools": st.tuples(pool("p0"), pool("p1")).map(list) | st.lists(pool(), max_size=1),
        "listeners": st.lists(listener(), max_size=2),
    })


# Later commands: (command type, strategy of its fields given ids of the load balancer's parts)
def later(ids: dict[str, list[str]]) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    pool_id = st.sampled_from(ids["pools"] or ["00000000-0000-4000-8000-000000000000"])
    listener_id = st.sampled_from(ids["listeners"] or ["00000000-0000-4000-8000-000000000000"])
    return st.one_of(
        st.tuples(st.just("CreateListener"), st.fixed_dictionaries({"listener": listener()})),
        st.tuples(st.just("UpdateListener"), st.fixed_dictionaries(
            {"id": listener_id}, optional={"connection_limit": limits,
                                           "timeout_client_data": millis,
                                           "timeout_member_data": millis})),
        st.tuples(st.just("CreatePool"), st.fixed_dictionaries({"pool": pool()})),
        st.tuples(st.just("UpdatePool"), st.fixed_dictionaries(
            {"id": pool_id}, optional={"session_persistence": persistence(),
                                       "lb_algorithm": st.just("SOURCE_IP")})),
        st.tuples(st.just("CreateMember"), st.fixed_dictionaries(
            {"pool_id": pool_id, "member": member()})),
        st.tuples(st.just("SetHealthMonitor"), st.fixed_dictionaries(
            {"pool_id": pool_id, "healthmonitor": monitor()})),
        st.tuples(st.just("CreateL7Policy"), st.fixed_dictionaries(
            {"listener_id": listener_id, "policy": policy()})),
    )


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def haproxy_accepts(spec: LoadBalancerSpec, scratch: Path) -> None:
    path = scratch / "haproxy.cfg"
    path.write_text(render(spec, PATHS))
    proc = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, f"{proc.stderr}\n{path.read_text()}"


class Tenant:
    """One world with a service type and a network, and a way to send commands as JSON."""

    def __init__(self) -> None:
        self.w = World()
        self.w.cmd("_admin", "CreateServiceType", name="gold",
                   providers={"loadbalancer": "haproxy"})
        self.net = self.w.cmd(T, "CreateNetwork", name="web", cidr="10.1.0.0/24")
        self.network = NetworkSpec(self.net, "10.1.0.0/24", "10.1.0.1")

    def send(self, command: str, fields: dict[str, Any]) -> str | None:
        """The reply's id, or None when refused; a domain refusal must name the field."""
        try:
            return self.w.cmd(T, command, **fields)
        except msgspec.ValidationError:
            return None  # refused by the wire's types
        except DomainError as e:
            assert e.field, f"{command} refused without naming the field: {e.message}"
            return None

    def spec(self, lb: str) -> LoadBalancerSpec:
        return LoadBalancerSpec(lb, self.network, self.w.get(T, "loadbalancer", lb).state)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_accepted_load_balancer_renders_a_config_haproxy_accepts(data: Any,
                                                                     scratch: Path) -> None:
    t = Tenant()
    try:
        lb = t.send("CreateLoadBalancer", {"vip_network_id": t.net, **data.draw(create())})
        event(f"create {'refused' if lb is None else 'accepted'}")
        if lb is None:
            return
        haproxy_accepts(t.spec(lb), scratch)
        for _ in range(data.draw(st.integers(0, 4))):
            state = t.spec(lb).state
            ids = {"pools": sorted(state.pools), "listeners": sorted(state.listeners)}
            command, fields = data.draw(later(ids))
            accepted = t.send(command, {"loadbalancer_id": lb, **fields}) is not None
            event(f"{command} {'accepted' if accepted else 'refused'}")
            if accepted:
                haproxy_accepts(t.spec(lb), scratch)
    finally:
        t.w.close()


HTTP_POOL = {"name": "p0", "protocol": "HTTP", "members": [
    {"address": "10.1.0.11", "protocol_port": 8080}]}
HTTP_LISTENER = {"name": "http", "protocol": "HTTP", "protocol_port": 80, "default_pool": "p0"}

# The five cases the agent used to refuse after the command side had accepted them:
# (what is sent, the field a refusal names, or None when it is served).
FIVE = {
    "HTTP_COOKIE with a cookie name": (
        {"pools": [{**HTTP_POOL, "session_persistence": {"type": "HTTP_COOKIE",
                                                         "cookie_name": "sid"}}]},
        "$.pools[0].session_persistence.cookie_name"),
    "a PATH rule with a key": (
        {"pools": [HTTP_POOL], "listeners": [{**HTTP_LISTENER, "l7policies": [
            {"action": "REJECT", "rules": [{"type": "PATH", "compare_type": "EQUAL_TO",
                                            "value": "/x", "key": "k"}]}]}]},
        "$.listeners[0].l7policies[0].rules[0].key"),
    "a monitor delay over 3600 s": (
        {"pools": [{**HTTP_POOL, "healthmonitor": {"type": "HTTP", "delay": 7200,
                                                   "timeout": 5}}]}, None),
    "a listener timeout of 0": (
        {"pools": [HTTP_POOL], "listeners": [{**HTTP_LISTENER, "timeout_client_data": 0}]},
        None),
    "connection_limit 0": (
        {"pools": [HTTP_POOL], "listeners": [{**HTTP_LISTENER, "connection_limit": 0}]},
        "$.listeners[0].connection_limit"),
}


@pytest.mark.parametrize("case", sorted(FIVE))
def test_each_case_the_agent_used_to_refuse_is_refused_naming_the_field_or_served(
    case: str, scratch: Path
) -> None:
    body, field = FIVE[case]
    t = Tenant()
    try:
        try:
            lb = t.w.cmd(T, "CreateLoadBalancer", name="lb", vip_network_id=t.net, **body)
        except DomainError as e:
            assert e.field == field, e.message
            return
        assert field is None, f"accepted, but should have been refused at {field}"
        haproxy_accepts(t.spec(lb), scratch)
    finally:
        t.w.close()
