"""Load balancers, Octavia's model: the resource tree, its commands and its events.

The whole tree (listeners, pools, members, health monitors, L7 policies and rules) lives in one
aggregate, so a change to any part is one event with the new part whole, and every change moves
the load balancer to its next *generation*. Agents report the generation they converged;
provisioning status follows from that (a change while PENDING is simply the next generation).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .wire import (
    Command,
    Description,
    EventMeta,
    HostName,
    InsertionState,
    IPv4,
    Name,
    PortNumber,
    TenantName,
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
    str, Meta(max_length=255, pattern=r"^/[A-Za-z0-9._~%/?=&+-]*$", description="An HTTP path.")
]
ExpectedCodes = Annotated[
    str,
    Meta(
        max_length=64,
        pattern=r"^[1-5]\d\d(-[1-5]\d\d)?(,[1-5]\d\d(-[1-5]\d\d)?)*$",
        description="HTTP status codes: '200', '200,202', '200-204'.",
    ),
]
CookieName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
HeaderName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9-]{1,64}$")]
RuleValue = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00-\x1f\x7f\"'\\`]*$",
        description="Compared with the request; no control characters, quotes or backslashes.",
    ),
]
RedirectUrl = Annotated[
    str,
    Meta(
        max_length=255,
        pattern=r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~%/?=&+-]*)?$",
    ),
]
Position = Annotated[int, Meta(ge=1, le=1000)]

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


# -- commands -------------------------------------------------------------------------------


class CreateLoadBalancer(Command, tag="loadbalancer.create"):
    """Create a load balancer, optionally with its whole tree (pools first, then listeners)."""

    name: Name
    vip_network_id: Uuid
    vip_address: IPv4 | None = None
    description: Description = ""
    router_id: Uuid | None = None
    service_type_id: Uuid | None = None
    out_of_path: bool = False
    admin_state_up: bool = True
    pools: list[PoolIn] = []
    listeners: list[ListenerIn] = []


class UpdateLoadBalancer(Command, tag="loadbalancer.update"):
    id: Uuid
    name: Name | None = None
    description: Description | None = None
    admin_state_up: bool | None = None


class DeleteLoadBalancer(Command, tag="loadbalancer.delete"):
    """Delete from any state; the whole tree goes with it (cascade)."""

    id: Uuid


class CreateListener(Command, tag="listener.create"):
    loadbalancer_id: Uuid
    listener: ListenerIn


class UpdateListener(Command, tag="listener.update"):
    loadbalancer_id: Uuid
    id: Uuid
    name: Name | None = None
    connection_limit: ConnectionLimit | None = None
    timeout_client_data: Millis | None = None
    timeout_member_connect: Millis | None = None
    timeout_member_data: Millis | None = None
    default_pool_id: Uuid | None = None
    admin_state_up: bool | None = None


class DeleteListener(Command, tag="listener.delete"):
    loadbalancer_id: Uuid
    id: Uuid


class CreatePool(Command, tag="pool.create"):
    loadbalancer_id: Uuid
    pool: PoolIn


class UpdatePool(Command, tag="pool.update"):
    loadbalancer_id: Uuid
    id: Uuid
    name: Name | None = None
    lb_algorithm: Algorithm | None = None
    session_persistence: SessionPersistence | None = None
    clear_session_persistence: bool = False
    admin_state_up: bool | None = None


class DeletePool(Command, tag="pool.delete"):
    loadbalancer_id: Uuid
    id: Uuid


class CreateMember(Command, tag="member.create"):
    loadbalancer_id: Uuid
    pool_id: Uuid
    member: MemberIn


class UpdateMember(Command, tag="member.update"):
    loadbalancer_id: Uuid
    pool_id: Uuid
    id: Uuid
    weight: Weight | None = None
    backup: bool | None = None
    admin_state_up: bool | None = None
    name: Name | None = None


class DeleteMember(Command, tag="member.delete"):
    loadbalancer_id: Uuid
    pool_id: Uuid
    id: Uuid


class ReplaceMembers(Command, tag="member.batch_update"):
    """Replace a pool's members with this list (members with the same address:port keep ids)."""

    loadbalancer_id: Uuid
    pool_id: Uuid
    members: list[MemberIn]


class SetHealthMonitor(Command, tag="healthmonitor.set"):
    loadbalancer_id: Uuid
    pool_id: Uuid
    healthmonitor: HealthMonitor


class DeleteHealthMonitor(Command, tag="healthmonitor.delete"):
    loadbalancer_id: Uuid
    pool_id: Uuid


class CreateL7Policy(Command, tag="l7policy.create"):
    loadbalancer_id: Uuid
    listener_id: Uuid
    policy: L7PolicyIn


class DeleteL7Policy(Command, tag="l7policy.delete"):
    loadbalancer_id: Uuid
    listener_id: Uuid
    id: Uuid


class CreateL7Rule(Command, tag="l7rule.create"):
    loadbalancer_id: Uuid
    listener_id: Uuid
    policy_id: Uuid
    rule: L7RuleIn


class DeleteL7Rule(Command, tag="l7rule.delete"):
    loadbalancer_id: Uuid
    listener_id: Uuid
    policy_id: Uuid
    id: Uuid


class ReportProvisioning(Command, tag="loadbalancer.report"):
    """From an agent (tenant `_host`): the generation it converged, or why it could not."""

    tenant: TenantName
    loadbalancer_id: Uuid
    host: HostName
    generation: Annotated[int, Meta(ge=0)]
    status: Literal["ACTIVE", "ERROR", "DELETED"]
    reason: Description = ""


class ReportOperatingStatus(Command, tag="loadbalancer.report_status"):
    """From an agent (tenant `_host`): operating statuses that changed."""

    tenant: TenantName
    loadbalancer_id: Uuid
    host: HostName
    loadbalancer: OperatingStatus | None = None
    listeners: dict[Uuid, OperatingStatus] = {}
    pools: dict[Uuid, OperatingStatus] = {}
    members: dict[Uuid, OperatingStatus] = {}


class ExpirePending(Command, tag="loadbalancer.expire_pending"):
    """From the watchdog: this generation has been PENDING for too long."""

    id: Uuid
    generation: Annotated[int, Meta(ge=1)]


# -- events ---------------------------------------------------------------------------------


class LoadBalancerCreated(EventMeta, tag="LoadBalancerCreated"):
    name: str
    description: str
    vip_network_id: str
    vip_address: str
    vip_port_id: str
    insertion: InsertionState
    admin_state_up: bool
    pools: list[Pool]
    listeners: list[Listener]
    generation: int


class LoadBalancerUpdated(EventMeta, tag="LoadBalancerUpdated"):
    name: str
    description: str
    admin_state_up: bool
    generation: int


class LoadBalancerScheduled(EventMeta, tag="LoadBalancerScheduled"):
    host: str
    previous_host: str | None = None


class ListenerCreated(EventMeta, tag="ListenerCreated"):
    listener: Listener
    generation: int


class ListenerUpdated(EventMeta, tag="ListenerUpdated"):
    listener: Listener
    generation: int


class ListenerDeleted(EventMeta, tag="ListenerDeleted"):
    listener_id: str
    generation: int


class PoolCreated(EventMeta, tag="PoolCreated"):
    pool: Pool
    generation: int


class PoolUpdated(EventMeta, tag="PoolUpdated"):
    pool: Pool
    generation: int


class PoolDeleted(EventMeta, tag="PoolDeleted"):
    pool_id: str
    generation: int


class MemberCreated(EventMeta, tag="MemberCreated"):
    pool_id: str
    member: Member
    generation: int


class MemberUpdated(EventMeta, tag="MemberUpdated"):
    pool_id: str
    member: Member
    generation: int


class MemberDeleted(EventMeta, tag="MemberDeleted"):
    pool_id: str
    member_id: str
    generation: int


class MembersReplaced(EventMeta, tag="MembersReplaced"):
    pool_id: str
    members: list[Member]
    generation: int


class HealthMonitorSet(EventMeta, tag="HealthMonitorSet"):
    pool_id: str
    healthmonitor: HealthMonitor
    generation: int


class HealthMonitorDeleted(EventMeta, tag="HealthMonitorDeleted"):
    pool_id: str
    generation: int


class L7PolicySet(EventMeta, tag="L7PolicySet"):
    listener_id: str
    policy: L7Policy
    generation: int


class L7PolicyDeleted(EventMeta, tag="L7PolicyDeleted"):
    listener_id: str
    policy_id: str
    generation: int


class LoadBalancerDeleteRequested(EventMeta, tag="LoadBalancerDeleteRequested"):
    generation: int


class LoadBalancerProvisioned(EventMeta, tag="LoadBalancerProvisioned"):
    """An agent converged `generation`; ACTIVE when it is the newest one."""

    host: str
    generation: int


class LoadBalancerProvisioningFailed(EventMeta, tag="LoadBalancerProvisioningFailed"):
    host: str
    generation: int
    reason: str


class LoadBalancerProvisioningTimedOut(EventMeta, tag="LoadBalancerProvisioningTimedOut"):
    generation: int
    reason: str


class LoadBalancerDeleted(EventMeta, tag="LoadBalancerDeleted"):
    """Gone from its host (or never placed): DELETED, the VIP's address released."""


class LoadBalancerOperatingStatusChanged(EventMeta, tag="LoadBalancerOperatingStatusChanged"):
    loadbalancer: str | None = None
    listeners: dict[str, str] = {}
    pools: dict[str, str] = {}
    members: dict[str, str] = {}


COMMANDS = (
    CreateLoadBalancer,
    UpdateLoadBalancer,
    DeleteLoadBalancer,
    CreateListener,
    UpdateListener,
    DeleteListener,
    CreatePool,
    UpdatePool,
    DeletePool,
    CreateMember,
    UpdateMember,
    DeleteMember,
    ReplaceMembers,
    SetHealthMonitor,
    DeleteHealthMonitor,
    CreateL7Policy,
    DeleteL7Policy,
    CreateL7Rule,
    DeleteL7Rule,
    ReportProvisioning,
    ReportOperatingStatus,
    ExpirePending,
)
EVENTS = (
    LoadBalancerCreated,
    LoadBalancerUpdated,
    LoadBalancerScheduled,
    ListenerCreated,
    ListenerUpdated,
    ListenerDeleted,
    PoolCreated,
    PoolUpdated,
    PoolDeleted,
    MemberCreated,
    MemberUpdated,
    MemberDeleted,
    MembersReplaced,
    HealthMonitorSet,
    HealthMonitorDeleted,
    L7PolicySet,
    L7PolicyDeleted,
    LoadBalancerDeleteRequested,
    LoadBalancerProvisioned,
    LoadBalancerProvisioningFailed,
    LoadBalancerProvisioningTimedOut,
    LoadBalancerDeleted,
    LoadBalancerOperatingStatusChanged,
)

__all__ = [
    "Algorithm",
    "CompareType",
    "ConnectionLimit",
    "CookieName",
    "CreateL7Policy",
    "CreateL7Rule",
    "CreateListener",
    "CreateLoadBalancer",
    "CreateMember",
    "CreatePool",
    "DeleteHealthMonitor",
    "DeleteL7Policy",
    "DeleteL7Rule",
    "DeleteListener",
    "DeleteLoadBalancer",
    "DeleteMember",
    "DeletePool",
    "ExpectedCodes",
    "ExpirePending",
    "HeaderName",
    "HealthMonitor",
    "HealthMonitorDeleted",
    "HealthMonitorSet",
    "HttpMethod",
    "L7Policy",
    "L7PolicyDeleted",
    "L7PolicyIn",
    "L7PolicySet",
    "L7Rule",
    "L7RuleIn",
    "Listener",
    "ListenerCreated",
    "ListenerDeleted",
    "ListenerIn",
    "ListenerUpdated",
    "LoadBalancerCreated",
    "LoadBalancerDeleteRequested",
    "LoadBalancerDeleted",
    "LoadBalancerOperatingStatusChanged",
    "LoadBalancerProvisioned",
    "LoadBalancerProvisioningFailed",
    "LoadBalancerProvisioningTimedOut",
    "LoadBalancerScheduled",
    "LoadBalancerUpdated",
    "Member",
    "MemberCreated",
    "MemberDeleted",
    "MemberIn",
    "MemberUpdated",
    "MembersReplaced",
    "Millis",
    "MonitorType",
    "OperatingStatus",
    "PersistenceType",
    "PolicyAction",
    "Pool",
    "PoolCreated",
    "PoolDeleted",
    "PoolIn",
    "PoolUpdated",
    "Position",
    "Protocol",
    "ProvisioningStatus",
    "RedirectUrl",
    "ReplaceMembers",
    "ReportOperatingStatus",
    "ReportProvisioning",
    "Retries",
    "RuleType",
    "RuleValue",
    "Seconds",
    "SessionPersistence",
    "SetHealthMonitor",
    "UpdateListener",
    "UpdateLoadBalancer",
    "UpdateMember",
    "UpdatePool",
    "UrlPath",
    "Weight",
]
