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


# A command on a part of the tree names its load balancer, and the parts above the one it
# changes: the listener of an L7 policy, and its policy for an L7 rule; the pool of a member or
# a health monitor. These bases are untagged (`tag=False`): they are no commands of their own.


class TreeCommand(Command, tag=False):
    """A command on a part of one load balancer's tree."""

    loadbalancer_id: Uuid


class ListenerCommand(TreeCommand, tag=False):
    """A command on a listener's L7 policies."""

    listener_id: Uuid


class PolicyCommand(ListenerCommand, tag=False):
    """A command on an L7 policy's rules."""

    policy_id: Uuid


class PoolCommand(TreeCommand, tag=False):
    """A command on a pool's members or health monitor."""

    pool_id: Uuid


class CreateListener(TreeCommand, tag="listener.create"):
    listener: ListenerIn


class TreePartCommand(TreeCommand, tag=False):
    """A command on one listener or pool of the tree, named by its id."""

    id: Uuid


class UpdateListener(TreePartCommand, tag="listener.update"):
    name: Name | None = None
    connection_limit: ConnectionLimit | None = None
    timeout_client_data: Millis | None = None
    timeout_member_connect: Millis | None = None
    timeout_member_data: Millis | None = None
    default_pool_id: Uuid | None = None
    admin_state_up: bool | None = None


class DeleteListener(TreePartCommand, tag="listener.delete"):
    pass


class CreatePool(TreeCommand, tag="pool.create"):
    pool: PoolIn


class UpdatePool(TreePartCommand, tag="pool.update"):
    name: Name | None = None
    lb_algorithm: Algorithm | None = None
    session_persistence: SessionPersistence | None = None
    clear_session_persistence: bool = False
    admin_state_up: bool | None = None


class DeletePool(TreePartCommand, tag="pool.delete"):
    pass


class CreateMember(PoolCommand, tag="member.create"):
    member: MemberIn


class MemberCommand(PoolCommand, tag=False):
    """A command on one member of the pool, named by its id."""

    id: Uuid


class UpdateMember(MemberCommand, tag="member.update"):
    weight: Weight | None = None
    backup: bool | None = None
    admin_state_up: bool | None = None
    name: Name | None = None


class DeleteMember(MemberCommand, tag="member.delete"):
    pass


class ReplaceMembers(PoolCommand, tag="member.batch_update"):
    """Replace a pool's members with this list (members with the same address:port keep ids)."""

    members: list[MemberIn]


class SetHealthMonitor(PoolCommand, tag="healthmonitor.set"):
    healthmonitor: HealthMonitor


class DeleteHealthMonitor(PoolCommand, tag="healthmonitor.delete"):
    pass


class CreateL7Policy(ListenerCommand, tag="l7policy.create"):
    policy: L7PolicyIn


class DeleteL7Policy(ListenerCommand, tag="l7policy.delete"):
    id: Uuid


class CreateL7Rule(PolicyCommand, tag="l7rule.create"):
    rule: L7RuleIn


class DeleteL7Rule(PolicyCommand, tag="l7rule.delete"):
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
