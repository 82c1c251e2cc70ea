"""Load balancers, Octavia's model: the resource tree and its events (commands: `lbaas_commands`).

The whole tree (listeners, pools, members, health monitors, L7 policies and rules) lives in one
aggregate, so a change to any part is one event with the new part whole, and every change moves
the load balancer to its next *generation*. Agents report the generation they converged;
provisioning status follows from that (a change while PENDING is simply the next generation).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .wire import (
    EventMeta,
    InsertionState,
    IPv4,
    Name,
    PortNumber,
    Uuid,
)

Protocol = Literal["TCP", "HTTP", "HTTPS"]
Algorithm = Literal["ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP"]
PersistenceType = Literal["SOURCE_IP", "HTTP_COOKIE", "APP_COOKIE"]
MonitorType = Literal["TCP", "HTTP", "PING"]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
RuleType = Literal["HOST_NAME", "PATH", "HEADER", "COOKIE", "FILE_TYPE"]
CompareType = Literal["EQUAL_TO", "STARTS_WITH", "ENDS_WITH", "CONTAINS", "REGEX"]
PolicyAction = Literal["REJECT", "REDIRECT_TO_POOL", "REDIRECT_TO_URL"]
ProvisioningStatus = Literal[
    "PENDING_CREATE", "PENDING_UPDATE", "PENDING_DELETE", "ACTIVE", "ERROR", "DELETED"
]
OperatingStatus = Literal["ONLINE", "DRAINING", "OFFLINE", "DEGRADED", "ERROR", "NO_MONITOR"]

Weight = Annotated[int, Meta(ge=0, le=256)]
Retries = Annotated[int, Meta(ge=1, le=10)]
Seconds = Annotated[int, Meta(ge=1, le=86400)]
Millis = Annotated[int, Meta(ge=0, le=86_400_000)]
ConnectionLimit = Annotated[int, Meta(ge=-1, le=1_000_000)]
UrlPath = Annotated[
    str, Meta(max_length=255, pattern=r"^/[A-Za-z0-9._~%/?=&+-]*$(?!\n)", description="An HTTP path.")
]
ExpectedCodes = Annotated[
    str,
    Meta(
        max_length=64,
        pattern=r"^[1-5][0-9][0-9](-[1-5][0-9][0-9])?(,[1-5][0-9][0-9](-[1-5][0-9][0-9])?)*$(?!\n)",
        description="HTTP status codes: '200', '200,202', '200-204'.",
    ),
]
CookieName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$(?!\n)")]
HeaderName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9-]{1,64}$(?!\n)")]
RuleValue = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=255,
        pattern=r"""^[^\x00-\x1f\x7f-\x9f\u2028\u2029"'\\`]*$(?!\n)""",
        description="Compared with the request; no control characters, line separators, quotes or backslashes.",
    ),
]
RedirectUrl = Annotated[
    str,
    Meta(
        max_length=255,
        pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/?=&+-]*)?$(?!\n)",
    ),
]
Position = Annotated[int, Meta(ge=1, le=1000)]
RedirectCode = Literal[301, 302, 303, 307, 308]

# -- the tree as stored ---------------------------------------------------------------------


class HealthMonitor(Struct, kw_only=True):
    type: MonitorType
    delay: Seconds = 5
    timeout: Seconds = 5
    max_retries: Retries = 3
    max_retries_down: Retries = 3
    http_method: HttpMethod = "GET"
    url_path: UrlPath = "/"
    expected_codes: ExpectedCodes = "200"
    admin_state_up: bool = True


class SessionPersistence(Struct, kw_only=True):
    type: PersistenceType
    cookie_name: CookieName | None = None


class MemberIn(Struct, kw_only=True):
    address: IPv4
    protocol_port: PortNumber
    weight: Weight = 1
    backup: bool = False
    admin_state_up: bool = True
    name: Name | None = None


class Member(MemberIn, kw_only=True):
    """A member as stored: its input with the id Splice chose."""

    id: Uuid


class PoolIn(Struct, kw_only=True):
    name: Name
    protocol: Protocol
    lb_algorithm: Algorithm = "ROUND_ROBIN"
    session_persistence: SessionPersistence | None = None
    members: list[MemberIn] = []
    healthmonitor: HealthMonitor | None = None
    admin_state_up: bool = True


class Pool(PoolIn, kw_only=True):
    id: Uuid
    members: list[Member] = []  # type: ignore[assignment]  # stored members carry ids


class L7RuleIn(Struct, kw_only=True):
    type: RuleType
    compare_type: CompareType
    value: RuleValue
    key: HeaderName | None = None
    invert: bool = False


class L7Rule(L7RuleIn, kw_only=True):
    id: Uuid


class L7Policy(Struct, kw_only=True):
    id: Uuid
    action: PolicyAction
    position: Position = 1
    name: Name | None = None
    redirect_pool_id: Uuid | None = None
    redirect_url: RedirectUrl | None = None
    redirect_http_code: RedirectCode = 302
    rules: list[L7Rule] = []
    admin_state_up: bool = True


class Listener(Struct, kw_only=True):
    id: Uuid
    name: Name
    protocol: Protocol
    protocol_port: PortNumber
    connection_limit: ConnectionLimit = -1
    timeout_client_data: Millis = 50_000
    timeout_member_connect: Millis = 5_000
    timeout_member_data: Millis = 50_000
    default_pool_id: Uuid | None = None
    l7policies: list[L7Policy] = []
    admin_state_up: bool = True


# -- inputs (ids are decided by Splice) -----------------------------------------------------


class L7PolicyIn(Struct, kw_only=True):
    action: PolicyAction
    position: Position = 1
    name: Name | None = None
    redirect_pool: Name | None = None  # a pool of this load balancer, by name
    redirect_pool_id: Uuid | None = None
    redirect_url: RedirectUrl | None = None
    redirect_http_code: RedirectCode = 302
    rules: list[L7RuleIn] = []
    admin_state_up: bool = True


class ListenerIn(Struct, kw_only=True):
    name: Name
    protocol: Protocol
    protocol_port: PortNumber
    connection_limit: ConnectionLimit = -1
    timeout_client_data: Millis = 50_000
    timeout_member_connect: Millis = 5_000
    timeout_member_data: Millis = 50_000
    default_pool: Name | None = None  # a pool of this load balancer, by name
    default_pool_id: Uuid | None = None
    l7policies: list[L7PolicyIn] = []
    admin_state_up: bool = True


# -- events ---------------------------------------------------------------------------------
#
# Every change to a load balancer's tree carries the generation it moves to (`TreeChange`). A
# change to a listener or a pool carries the part whole (created, updated) or names it by id
# (`ListenerChange`, `PoolChange`: the part itself, or its L7 policies, members, health monitor).
# These bases carry no tag: they are no events of their own; nor do those of the parts carried
# whole (`ListenerWhole`, `PoolWhole`, `MemberWhole`).


class TreeChange(EventMeta, kw_only=True):
    """A change to the load balancer or its tree, its creation too: the generation it moves to.

    Keyword-only, so that `generation` comes after each event's own fields.
    """

    generation: int


class ListenerChange(TreeChange):
    """A change to one listener, named by id: the listener itself or its L7 policies."""

    listener_id: str


class PoolChange(TreeChange):
    """A change to one pool, named by id: the pool itself, its members or its health monitor."""

    pool_id: str


class LoadBalancerCreated(TreeChange, tag="LoadBalancerCreated"):
    """A load balancer was created whole: its VIP, insertion, pools and listeners."""

    name: str
    description: str
    vip_network_id: str
    vip_address: str
    vip_port_id: str
    insertion: InsertionState
    admin_state_up: bool
    pools: list[Pool]
    listeners: list[Listener]


class LoadBalancerUpdated(TreeChange, tag="LoadBalancerUpdated"):
    """The load balancer's own fields were changed (name, description, admin state)."""

    name: str
    description: str
    admin_state_up: bool


class LoadBalancerScheduled(EventMeta, tag="LoadBalancerScheduled"):
    """The scheduler placed the load balancer on a host ("": none), or found none."""

    host: str
    previous_host: str | None = None
    # With host "": the provider no live host offers, that the load balancer waits for
    # (absent on older events, and None once it is placed).
    waiting_for: str | None = None


class ListenerWhole(TreeChange):
    """A listener carried whole: as created, or as an update leaves it."""

    listener: Listener


class ListenerCreated(ListenerWhole, tag="ListenerCreated"):
    """A listener was added, carried whole."""


class ListenerUpdated(ListenerWhole, tag="ListenerUpdated"):
    """A listener was changed; it is carried as the update leaves it."""


class ListenerDeleted(ListenerChange, tag="ListenerDeleted"):
    """The listener (and its L7 policies) was removed."""


class PoolWhole(TreeChange):
    """A pool carried whole (its members and health monitor too): created, or updated."""

    pool: Pool


class PoolCreated(PoolWhole, tag="PoolCreated"):
    """A pool was added, with its members and health monitor."""


class PoolUpdated(PoolWhole, tag="PoolUpdated"):
    """A pool was changed; it is carried as the update leaves it."""


class PoolDeleted(PoolChange, tag="PoolDeleted"):
    """The pool (and its members and health monitor) was removed."""


class MemberWhole(PoolChange):
    """A pool's member carried whole: created, or updated."""

    member: Member


class MemberCreated(MemberWhole, tag="MemberCreated"):
    """A member was added to the pool."""


class MemberUpdated(MemberWhole, tag="MemberUpdated"):
    """A member was changed; it is carried as the update leaves it."""


class MemberDeleted(PoolChange, tag="MemberDeleted"):
    """The member was removed from the pool."""

    member_id: str


class MembersReplaced(PoolChange, tag="MembersReplaced"):
    """The pool's members are now this list (a batch update)."""

    members: list[Member]


class HealthMonitorSet(PoolChange, tag="HealthMonitorSet"):
    """The pool's health monitor was set, or replaced."""

    healthmonitor: HealthMonitor


class HealthMonitorDeleted(PoolChange, tag="HealthMonitorDeleted"):
    """The pool no longer has a health monitor."""


class L7PolicySet(ListenerChange, tag="L7PolicySet"):
    """An L7 policy of the listener was set (added, or replaced with its rules)."""

    policy: L7Policy


class L7PolicyDeleted(ListenerChange, tag="L7PolicyDeleted"):
    """The L7 policy (and its rules) was removed from the listener."""

    policy_id: str


class LoadBalancerDeleteRequested(TreeChange, tag="LoadBalancerDeleteRequested"):
    """Deletion was asked for: PENDING_DELETE until its host has removed it."""


class AgentReport(EventMeta):
    """What the agent on `host` said of the load balancer's `generation` (no event of its own:
    it has no tag)."""

    host: str
    generation: int


class LoadBalancerProvisioned(AgentReport, tag="LoadBalancerProvisioned"):
    """An agent converged `generation`; ACTIVE when it is the newest one."""


class LoadBalancerProvisioningFailed(AgentReport, tag="LoadBalancerProvisioningFailed"):
    """An agent could not converge `generation`: ERROR, with its reason."""

    reason: str


class LoadBalancerProvisioningTimedOut(EventMeta, tag="LoadBalancerProvisioningTimedOut"):
    """No agent answered for `generation` in time: ERROR, with the reason."""

    generation: int
    reason: str


class LoadBalancerDeleted(EventMeta, tag="LoadBalancerDeleted"):
    """Gone from its host (or never placed): DELETED, the VIP's address released."""


class LoadBalancerOperatingStatusChanged(EventMeta, tag="LoadBalancerOperatingStatusChanged"):
    """Health checks moved operating statuses (only those that changed)."""

    loadbalancer: str | None = None
    listeners: dict[str, str] = {}
    pools: dict[str, str] = {}
    members: dict[str, str] = {}
