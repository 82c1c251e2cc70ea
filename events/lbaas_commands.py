"""Load balancers' commands: the tree's inputs (`lbaas.py`) in requests, one tag each."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from .lbaas import (
    Algorithm,
    ConnectionLimit,
    HealthMonitor,
    L7PolicyIn,
    L7RuleIn,
    ListenerIn,
    MemberIn,
    Millis,
    OperatingStatus,
    PoolIn,
    SessionPersistence,
    Weight,
)
from .wire import Command, Description, HostName, IPv4, Name, TenantName, Uuid

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
