"""Firewalls, NAT, taps and service chains: commands and events."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .wire import (
    Cidr,
    Command,
    Description,
    EventMeta,
    InsertionState,
    IPv4,
    Name,
    PortNumber,
    PortRange,
    ServiceKind,
    Uuid,
)

FirewallAction = Literal["allow", "deny", "reject"]
Protocol = Literal["tcp", "udp", "icmp", "any"]

# -- firewall -------------------------------------------------------------------------------


class FirewallRuleIn(Struct, kw_only=True):
    action: FirewallAction
    protocol: Protocol = "any"
    source_cidr: Cidr | None = None
    destination_cidr: Cidr | None = None
    source_port: PortRange | None = None
    destination_port: PortRange | None = None
    description: Description = ""


class FirewallRule(FirewallRuleIn, kw_only=True):
    """A rule as stored: its input with the id Splice chose."""

    id: Uuid


class CreateFirewall(Command, tag="firewall.create"):
    """Routed (`router_id`) or floating/bump-in-the-wire (`network_id` for its two ports)."""

    name: Name
    rules: Annotated[list[FirewallRuleIn], Meta(max_length=500)] = []
    default_action: Literal["allow", "deny"] = "deny"
    network_id: Uuid | None = None
    router_id: Uuid | None = None
    service_type_id: Uuid | None = None
    out_of_path: bool = False


class UpdateFirewall(Command, tag="firewall.update"):
    id: Uuid
    name: Name | None = None
    default_action: Literal["allow", "deny"] | None = None


class InsertFirewallRule(Command, tag="firewall.insert_rule"):
    """Insert before or after a rule (by id); neither: at the end."""

    id: Uuid
    rule: FirewallRuleIn
    before: Uuid | None = None
    after: Uuid | None = None


class MoveFirewallRule(Command, tag="firewall.move_rule"):
    id: Uuid
    rule_id: Uuid
    before: Uuid | None = None
    after: Uuid | None = None


class RemoveFirewallRule(Command, tag="firewall.remove_rule"):
    id: Uuid
    rule_id: Uuid


class DeleteFirewall(Command, tag="firewall.delete"):
    id: Uuid


class FirewallCreated(EventMeta, tag="FirewallCreated"):
    """A firewall was created with its ordered rules and its insertion."""

    name: str
    rules: list[FirewallRule]
    default_action: str
    insertion: InsertionState
    network_id: str | None
    port_ids: list[str]


class FirewallUpdated(EventMeta, tag="FirewallUpdated"):
    """The firewall's name or default action was changed."""

    name: str
    default_action: str


class FirewallRuleInserted(EventMeta, tag="FirewallRuleInserted"):
    """A rule was inserted at `index` of the ordered rules."""

    rule: FirewallRule
    index: int


class FirewallRuleMoved(EventMeta, tag="FirewallRuleMoved"):
    """The rule was moved to `index`."""

    rule_id: str
    index: int


class FirewallRuleRemoved(EventMeta, tag="FirewallRuleRemoved"):
    """The rule was removed."""

    rule_id: str


class FirewallDeleted(EventMeta, tag="FirewallDeleted"):
    """The firewall was deleted."""


# -- NAT: port forwarding on a router ---------------------------------------------------------


class PortForwardIn(Struct, kw_only=True):
    protocol: Literal["tcp", "udp"]
    external_port: PortNumber
    internal_address: IPv4
    internal_port: PortNumber


class PortForward(PortForwardIn, kw_only=True):
    id: Uuid


class CreateNat(Command, tag="nat.create"):
    """Port forwarding on a router's external address (NAT is routed: `router_id` required)."""

    name: Name
    router_id: Uuid
    port_forwards: Annotated[list[PortForwardIn], Meta(max_length=500)] = []


class AddPortForward(Command, tag="nat.add_forward"):
    id: Uuid
    forward: PortForwardIn


class RemovePortForward(Command, tag="nat.remove_forward"):
    id: Uuid
    forward_id: Uuid


class DeleteNat(Command, tag="nat.delete"):
    id: Uuid


class NatCreated(EventMeta, tag="NatCreated"):
    """A NAT service was created on a router with its port forwards."""

    name: str
    insertion: InsertionState
    port_forwards: list[PortForward]


class PortForwardAdded(EventMeta, tag="PortForwardAdded"):
    """A port forward was added."""

    forward: PortForward


class PortForwardRemoved(EventMeta, tag="PortForwardRemoved"):
    """The port forward was removed."""

    forward_id: str


class NatDeleted(EventMeta, tag="NatDeleted"):
    """The NAT service was deleted."""


# -- taps -------------------------------------------------------------------------------------


class CreateTap(Command, tag="tap.create"):
    """Mirror a port's traffic to a monitor port."""

    name: Name
    port_id: Uuid
    monitor_port_id: Uuid
    direction: Literal["ingress", "egress", "both"] = "both"
    router_id: Uuid | None = None
    service_type_id: Uuid | None = None


class DeleteTap(Command, tag="tap.delete"):
    id: Uuid


class TapCreated(EventMeta, tag="TapCreated"):
    """A tap was created: the port's traffic mirrored to the monitor port."""

    name: str
    port_id: str
    monitor_port_id: str
    direction: str
    insertion: InsertionState


class TapDeleted(EventMeta, tag="TapDeleted"):
    """The tap was deleted."""


class PortTapAttached(EventMeta, tag="PortTapAttached"):
    """On a port: a standalone tap (its public id) mirrors this port or mirrors to it. While
    any does, the port keeps its host (`port.update` refuses another) and is not deleted."""

    tap_id: str


class PortTapDetached(EventMeta, tag="PortTapDetached"):
    """On a port: that tap is gone."""

    tap_id: str


# -- placement and chains, common to every advanced service ---------------------------------


class ServiceScheduled(EventMeta, tag="ServiceScheduled"):
    """The scheduler placed a floating firewall or tap, or a router, on a host ("": none)."""

    host: str
    previous_host: str | None = None
    # With host "": the provider no live host offers, that the service waits for (absent on
    # older events, and None once it is placed).
    waiting_for: str | None = None


class ServiceChainAttached(EventMeta, tag="ServiceChainAttached"):
    """The service is a hop of that chain (it cannot be deleted while it is)."""

    chain_id: str


class ServiceChainDetached(EventMeta, tag="ServiceChainDetached"):
    """The service is no longer a hop of that chain."""

    chain_id: str


HopInsertion = Literal["l3", "l2", "bump_in_the_wire", "tap"]


class Classifier(Struct, kw_only=True):
    """The flows a chain applies to (n-tuple); unset fields match anything."""

    protocol: Protocol = "any"
    source_cidr: Cidr | None = None
    destination_cidr: Cidr | None = None
    source_port: PortRange | None = None
    destination_port: PortRange | None = None
    logical_source_port: Uuid | None = None


class HopIn(Struct, kw_only=True):
    service_id: Uuid
    kind: ServiceKind
    insertion: HopInsertion


class Hop(Struct, kw_only=True):
    service_id: str
    kind: str
    insertion: str


ChainPriority = Annotated[int, Meta(ge=0, le=65535, description="Higher wins where classifiers overlap.")]
Hops = Annotated[list[HopIn], Meta(min_length=1, max_length=16)]


class CreateServiceChain(Command, tag="chain.create"):
    """A chain steered in `router_id`'s namespace; `symmetric`: return traffic crosses the hops
    in reverse. Two chains on one router whose classifiers overlap need different priorities."""

    name: Name
    classifier: Classifier
    hops: Hops
    router_id: Uuid
    priority: ChainPriority = 0
    symmetric: bool = False


class UpdateServiceChain(Command, tag="chain.update"):
    """Replace what is given; the rest stays."""

    id: Uuid
    name: Name | None = None
    classifier: Classifier | None = None
    hops: Hops | None = None
    priority: ChainPriority | None = None
    symmetric: bool | None = None


class DeleteServiceChain(Command, tag="chain.delete"):
    id: Uuid


class ServiceChainCreated(EventMeta, tag="ServiceChainCreated"):
    """A service chain was created: its classifier and ordered hops."""

    name: str
    classifier: Classifier
    hops: list[Hop]
    router_id: str | None = None  # None: stored before chains named their router
    priority: int = 0
    symmetric: bool = False


class ServiceChainUpdated(EventMeta, tag="ServiceChainUpdated"):
    """The chain's complete new values."""

    name: str
    classifier: Classifier
    hops: list[Hop]
    priority: int
    symmetric: bool


class ServiceChainDeleted(EventMeta, tag="ServiceChainDeleted"):
    """The service chain was deleted."""
