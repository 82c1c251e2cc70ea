"""Fixed load balancers for golden-file and injection tests, in the wire's shape (deterministic
ids, no randomness): `build` converts them as the fold holds them, with the wire's checks."""

from __future__ import annotations

from typing import Any

import msgspec

from splice.agents.model import LoadBalancerSpec
from splice.events.wire import Name

LB = "11111111-0000-4000-8000-000000000001"
NET = "22222222-0000-4000-8000-000000000002"
L_HTTP = "33333333-0000-4000-8000-000000000003"
L_TCP = "33333333-0000-4000-8000-000000000004"
L_TLS = "33333333-0000-4000-8000-000000000005"
P_WEB = "44444444-0000-4000-8000-000000000006"
P_API = "44444444-0000-4000-8000-000000000007"
P_TCP = "44444444-0000-4000-8000-000000000008"
P_TLS = "44444444-0000-4000-8000-000000000009"


def member(n: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"55555555-0000-4000-8000-{n:012d}", "address": f"10.77.7.{20 + n}",
            "protocol_port": 8080, **extra}


def rule(n: int) -> str:
    return f"77777777-0000-4000-8000-{n:012d}"


def network() -> dict[str, Any]:
    return {"id": NET, "cidr": "10.77.7.0/24", "gateway": "10.77.7.1"}


def http_full(**names: str) -> dict[str, Any]:
    """Every HTTP feature: L7 policies of all actions, cookies, monitors, member flags."""
    return {
        "id": LB, "generation": 7, "name": names.get("lb", "web"),
        "network": network(), "vip_address": "10.77.7.10",
        "listeners": [{
            "id": L_HTTP, "protocol": "HTTP", "protocol_port": 80, "default_pool_id": P_WEB,
            "name": names.get("listener", "http"), "connection_limit": 1000,
            "timeout_client_data": 30000,
            "l7policies": [
                {"id": "66666666-0000-4000-8000-000000000003", "position": 3,
                 "action": "REDIRECT_TO_URL", "name": names.get("policy", "old"),
                 "redirect_url": names.get("url", "https://example.com/new?a=1&b=%20"),
                 "redirect_http_code": 301,
                 "rules": [{"id": rule(1), "type": "PATH", "compare_type": "STARTS_WITH",
                            "value": names.get("path", "/old")}]},
                {"id": "66666666-0000-4000-8000-000000000001", "position": 1,
                 "action": "REJECT",
                 "rules": [{"id": rule(2), "type": "HEADER", "key": names.get("header", "X-Block"),
                            "compare_type": "EQUAL_TO", "value": names.get("value", "yes")},
                           {"id": rule(3), "type": "HOST_NAME", "compare_type": "ENDS_WITH",
                            "value": ".example.com", "invert": True}]},
                {"id": "66666666-0000-4000-8000-000000000002", "position": 2,
                 "action": "REDIRECT_TO_POOL", "redirect_pool_id": P_API,
                 "rules": [{"id": rule(4), "type": "PATH", "compare_type": "REGEX",
                            "value": names.get("regex", "^/api/v[0-9]+/")},
                           {"id": rule(5), "type": "COOKIE", "key": names.get("cookie", "beta"),
                            "compare_type": "CONTAINS", "value": "1"},
                           {"id": rule(6), "type": "FILE_TYPE", "compare_type": "EQUAL_TO", "value": ".json"}]},
            ],
        }],
        "pools": [
            {"id": P_WEB, "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
             "name": names.get("pool", "web"),
             "session_persistence": {"type": "HTTP_COOKIE"},
             "healthmonitor": {"type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 2,
                               "max_retries_down": 4, "http_method": "HEAD",
                               "url_path": names.get("url_path", "/healthz"),
                               "expected_codes": "200-204,301"},
             "members": [member(1, weight=10, name=names.get("member", "a")),
                         member(2, weight=0), member(3, backup=True),
                         member(4, admin_state_up=False)]},
            {"id": P_API, "name": "api", "protocol": "HTTP", "lb_algorithm": "LEAST_CONNECTIONS",
             "session_persistence": {"type": "APP_COOKIE",
                                     "cookie_name": names.get("app_cookie", "JSESSIONID")},
             "healthmonitor": {"type": "HTTP", "delay": 2, "timeout": 1,
                               "expected_codes": "200,202"},
             "members": [member(5), member(6)]},
        ],
    }


def tcp_mix() -> dict[str, Any]:
    """TCP and HTTPS pass-through: source persistence, TCP and PING monitors, admin down."""
    return {
        "id": LB, "generation": 3, "network": network(), "vip_address": "10.77.7.11",
        "listeners": [
            {"id": L_TCP, "name": "pg", "protocol": "TCP", "protocol_port": 5432,
             "default_pool_id": P_TCP, "connection_limit": 200,
             "timeout_member_connect": 1500, "timeout_member_data": 3600000},
            {"id": L_TLS, "name": "tls", "protocol": "HTTPS", "protocol_port": 443,
             "default_pool_id": P_TLS},
            {"id": "33333333-0000-4000-8000-000000000099", "name": "off", "protocol": "TCP",
             "protocol_port": 6000, "admin_state_up": False},
        ],
        "pools": [
            {"id": P_TCP, "name": "pg", "protocol": "TCP", "lb_algorithm": "LEAST_CONNECTIONS",
             "session_persistence": {"type": "SOURCE_IP"},
             "healthmonitor": {"type": "TCP", "delay": 3, "timeout": 2},
             "members": [member(1, protocol_port=5432), member(2, protocol_port=5432)]},
            {"id": P_TLS, "name": "tls", "protocol": "HTTPS", "lb_algorithm": "SOURCE_IP",
             "healthmonitor": {"type": "PING", "delay": 10, "timeout": 5, "max_retries": 10,
                               "max_retries_down": 10},
             "members": [member(3, protocol_port=443)], "admin_state_up": False},
        ],
    }


def build(data: dict[str, Any]) -> LoadBalancerSpec:
    """As the fold would hold it; the LB's own name is checked as the create command checks it."""
    msgspec.convert(data.get("name", "lb"), Name)
    return LoadBalancerSpec.from_dict(data)
