"""What one host serves, as the drivers see it: the fold's state with where it lives, and names.

There is no model of its own here. A load balancer is `splice.events.lbaas_fold`'s
`LoadBalancerState`, which the command side built from validated inputs and checked with the
rules of `splice.events.lbaas_rules` when it decided: the agent trusts it and only transforms
it into what it renders. `LoadBalancerSpec` just adds the two things the state does not hold
(the resource's id and the network the VIP lives on) and a few derived views.

`HostLayout` names everything the agent creates on a host (prefix, state directory), so that it
deletes only what it owns.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from splice.events.lbaas import L7Policy, Listener, Pool
from splice.events.lbaas_fold import LoadBalancerState

DEFAULT_PREFIX = "spl-"
_PREFIX = re.compile(r"[a-z][a-z0-9]{1,4}-")


def check_prefix(value: str) -> str:
    """The ownership prefix ends up in interface names (15 bytes max), so it must stay short."""
    if not _PREFIX.fullmatch(value):
        raise ValueError(f"prefix must match {_PREFIX.pattern}, got {value!r}")
    return value


def fit_ifname(head: str, ident: str) -> str:
    """Append as much of a UUID's hex as fits in an interface name (IFNAMSIZ - 1 = 15)."""
    return head + ident.replace("-", "")[: 15 - len(head)]


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """The tenant network a VIP lives on (from its NetworkCreated event): one bridge per host."""

    id: str
    cidr: str
    gateway: str

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen

    def bridge_name(self, prefix: str = DEFAULT_PREFIX) -> str:
        """``<prefix>br-<short id>``, cut to the 15-byte limit of Linux interface names."""
        return fit_ifname(f"{prefix}br-", self.id)


@dataclass(frozen=True, slots=True)
class LoadBalancerSpec:
    """One load balancer this host serves: its id, its network, and the fold's state.

    `hosted_in`: a routed load balancer runs in its router's namespace (named here), whose
    router driver holds the VIP on the router's leg; a floating one (None) gets a namespace
    and a VIP leg of its own, with the MAC of its VIP port (`vip_mac`, as Neutron's VIP port
    has one): the other hosts' forwarding entries name it, and it stays when the load
    balancer moves to another host."""

    id: str
    network: NetworkSpec
    state: LoadBalancerState
    hosted_in: str | None = None
    vip_mac: str | None = None  # the VIP port's MAC, held by the VIP leg (None: the kernel's)

    @property
    def generation(self) -> int:
        return self.state.generation

    @property
    def vip_address(self) -> str:
        return self.state.vip_address

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def admin_state_up(self) -> bool:
        return self.state.admin_state_up

    @property
    def listeners(self) -> list[Listener]:
        return list(self.state.listeners.values())

    @property
    def pools(self) -> list[Pool]:
        return list(self.state.pools.values())

    @property
    def listeners_by_pool(self) -> dict[str, list[Listener]]:
        """Which listeners send traffic to each pool (for backend timeouts and mode)."""
        out: dict[str, list[Listener]] = {p: [] for p in self.state.pools}
        for lst in self.state.listeners.values():
            ids = {lst.default_pool_id} | {p.redirect_pool_id for p in lst.l7policies}
            for pool_id in sorted(i for i in ids if i is not None and i in out):
                out[pool_id].append(lst)
        return out

    @classmethod
    def build(cls, id: str, network: NetworkSpec, vip_address: str, *,
              listeners: list[Listener], pools: list[Pool], generation: int = 1,
              name: str = "", admin_state_up: bool = True) -> LoadBalancerSpec:
        """From wire parts (tests, benchmarks): what the fold would hold after their events."""
        state = LoadBalancerState(
            name=name, vip_network_id=network.id, vip_address=vip_address,
            admin_state_up=admin_state_up, generation=generation,
            listeners={li.id: li for li in listeners}, pools={p.id: p for p in pools})
        return cls(id, network, state)

    def with_vip(self, address: str) -> LoadBalancerSpec:
        return LoadBalancerSpec(self.id, self.network,
                                msgspec.structs.replace(self.state, vip_address=address),
                                self.hosted_in, self.vip_mac)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadBalancerSpec:
        """From JSON-like data in the wire's shape: ``id``, ``network``, and the state's fields
        with ``listeners`` and ``pools`` as lists (tests, benchmarks)."""
        fields = dict(data)
        lb_id, network = fields.pop("id"), msgspec.convert(fields.pop("network"), NetworkSpec)
        fields["listeners"] = {li["id"]: li for li in fields.get("listeners", [])}
        fields["pools"] = {p["id"]: p for p in fields.get("pools", [])}
        fields.setdefault("vip_network_id", network.id)
        return cls(lb_id, network, msgspec.convert(fields, LoadBalancerState))


def ordered_policies(listener: Listener) -> list[L7Policy]:
    """Octavia's order: by position; ids break ties so the order is always the same."""
    return sorted(listener.l7policies, key=lambda p: (p.position, p.id))


@dataclass(frozen=True, slots=True)
class HostLayout:
    """Where a host's objects live and what they are called: the ownership prefix and state dir.

    Everything the agent creates is named from this, and everything it deletes must match
    it, so two agents (or a test run next to a real agent) with different prefixes never touch
    each other's objects.
    """

    state_dir: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @property
    def lb_namespace_prefix(self) -> str:
        return f"{self.prefix}lb-"

    @property
    def veth_prefix(self) -> str:
        return f"{self.prefix}v"

    def short_id(self, lb_id: str) -> str:
        """Eight hex digits of the LB id: short enough for interface names, unique in practice
        (``plan`` refuses two desired LBs that share one)."""
        return lb_id.replace("-", "")[:8]

    def namespace(self, lb_id: str) -> str:
        return f"{self.lb_namespace_prefix}{self.short_id(lb_id)}"

    def host_veth(self, lb_id: str) -> str:
        return f"{self.veth_prefix}{self.short_id(lb_id)}"

    def bridge(self, network: NetworkSpec) -> str:
        return network.bridge_name(self.prefix)

    @property
    def ns_vip_ifname(self) -> str:
        """The VIP interface inside an LB namespace (alone there, so one name fits all)."""
        return f"{self.prefix}vip"

    def lb_dir(self, short: str) -> str:
        return f"{self.state_dir}/{short}"
