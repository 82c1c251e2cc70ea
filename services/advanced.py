"""Firewalls, NAT (port forwarding), taps and service chains.

A firewall's and a NAT's state is `splice.events.advanced_fold`'s (`FirewallState`,
`NatState`), changed only by that module's appliers, as the host agent changes its own copy;
the aggregates decide and read it through read-only properties.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from splice.events.advanced_fold import (
    FIREWALL_EVENT_TAGS,
    NAT_EVENT_TAGS,
    TAP_EVENT_TAGS,
    FirewallState,
    NatState,
    TapState,
    apply,
)
from splice.events.contracts import (
    EventMeta,
    FirewallCreated,
    FirewallDeleted,
    FirewallRule,
    FirewallRuleIn,
    FirewallRuleInserted,
    FirewallRuleMoved,
    FirewallRuleRemoved,
    FirewallUpdated,
    InsertionState,
    NatCreated,
    NatDeleted,
    PortForward,
    PortForwardAdded,
    PortForwardIn,
    PortForwardRemoved,
    PortTapAttached,
    PortTapDetached,
    ServiceScheduled,
    TapCreated,
    TapDeleted,
)

from .domain import InvalidError, NotFoundError, SpliceAggregate, public_id, stamp
from .lbaas import ServiceMixin
from .network import Port


def new_id() -> str:
    return str(uuid.uuid4())


def check_range(value: str | None, field: str) -> None:
    if value is None:
        return
    low, _, high = value.partition("-")
    lo, hi = int(low), int(high or low)
    if not (1 <= lo <= hi <= 65535):
        raise InvalidError(f"{value} is not a port range within 1-65535", field)


def check_cidr(value: str | None, field: str) -> None:
    if value is None:
        return
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        raise InvalidError(f"{value}: {e}", field) from e


def build_rule(r: FirewallRuleIn, where: str) -> FirewallRule:
    check_cidr(r.source_cidr, f"{where}.source_cidr")
    check_cidr(r.destination_cidr, f"{where}.destination_cidr")
    check_range(r.source_port, f"{where}.source_port")
    check_range(r.destination_port, f"{where}.destination_port")
    if r.protocol in ("icmp", "any") and (r.source_port or r.destination_port):
        raise InvalidError(f"ports need protocol tcp or udp, not {r.protocol}", f"{where}.protocol")
    return FirewallRule(id=new_id(), **{f: getattr(r, f) for f in FirewallRuleIn.__struct_fields__})


class PlacedMixin:
    """A floating service placed on a host by the scheduler."""

    if TYPE_CHECKING:
        host: str | None
        waiting_for: str | None

    def schedule(self, host: str | None, waiting_for: str | None = None) -> None:
        """The scheduler's choice; with no host, `waiting_for` is the provider no live host
        offers (said once when it starts waiting, cleared when it is placed)."""
        waiting = None if host else waiting_for
        if host != self.host or waiting != self.waiting_for:
            self.emit(stamp(ServiceScheduled, host=host or "", previous_host=self.host,  # type: ignore[attr-defined]
                            waiting_for=waiting))

    def when_ServiceScheduled(self, e: ServiceScheduled) -> None:
        self.host = e.host or None


class FoldedMixin:
    """An aggregate whose state is a fold's (`splice.events.advanced_fold`), kept in ``state``
    and changed only by that fold's appliers; its fields are read through read-only
    properties (set on the class by `_read_through`), as `LoadBalancer` reads `lbaas_fold`."""

    STATE: ClassVar[type[FirewallState] | type[NatState] | type[TapState]]
    APPLIED_TAGS: ClassVar[frozenset[str]]  # applied by the fold, not by when_* methods

    if TYPE_CHECKING:
        state: Any

    def when(self, payload: EventMeta) -> None:
        state = self.__dict__.get("state")
        if state is None:
            state = self.__dict__["state"] = self.STATE()
        apply(state, payload)


def _read_only(field: str) -> property:
    return property(lambda self: getattr(self.state, field))


def _read_through(cls: type[FoldedMixin]) -> None:
    for field in cls.STATE.__struct_fields__:
        setattr(cls, field, _read_only(field))


class Firewall(FoldedMixin, PlacedMixin, ServiceMixin, SpliceAggregate):
    AGGREGATE = "firewall"
    KIND: ClassVar[str] = "firewall"
    STATE = FirewallState
    APPLIED_TAGS = FIREWALL_EVENT_TAGS

    if TYPE_CHECKING:  # the state's fields, read-only (set on the class by _read_through)
        state: FirewallState
        name: str
        rules: list[FirewallRule]
        default_action: str
        insertion: InsertionState
        network_id: str | None
        port_ids: list[str]
        host: str | None
        chains: list[str]  # type: ignore[assignment]  # the fold keeps a list

    @classmethod
    def create(
        cls,
        agg_id: str,
        name: str,
        rules: list[FirewallRuleIn],
        default_action: str,
        insertion: InsertionState,
        network_id: str | None,
        port_ids: list[str],
    ) -> Firewall:
        built = [build_rule(r, f"$.rules[{i}]") for i, r in enumerate(rules)]
        return cls.start(
            agg_id,
            stamp(
                FirewallCreated,
                name=name,
                rules=built,
                default_action=default_action,
                insertion=insertion,
                network_id=network_id,
                port_ids=port_ids,
            ),
        )

    @property
    def port_count(self) -> int:
        return len(self.port_ids)

    def _index(self, rule_id: str, field: str) -> int:
        for i, r in enumerate(self.rules):
            if r.id == rule_id:
                return i
        raise NotFoundError(f"rule {rule_id} not found", field)

    def _position(self, before: str | None, after: str | None, ignore: str | None = None) -> int:
        """Where a rule goes, counted in the list without `ignore` (the rule being moved)."""
        if before and after:
            raise InvalidError("give before or after, not both", "$.before")
        rest = [r for r in self.rules if r.id != ignore]
        ids = [r.id for r in rest]
        if before:
            if before not in ids:
                raise NotFoundError(f"rule {before} not found", "$.before")
            return ids.index(before)
        if after:
            if after not in ids:
                raise NotFoundError(f"rule {after} not found", "$.after")
            return ids.index(after) + 1
        return len(rest)

    def update(self, name: str | None, default_action: str | None) -> None:
        new = (self.name if name is None else name,
               self.default_action if default_action is None else default_action)
        if new != (self.name, self.default_action):
            self.emit(stamp(FirewallUpdated, name=new[0], default_action=new[1]))

    def insert_rule(self, rule: FirewallRuleIn, before: str | None, after: str | None) -> str:
        if len(self.rules) >= 500:
            raise InvalidError("a firewall holds at most 500 rules", "$.rule")
        built = build_rule(rule, "$.rule")
        self.emit(stamp(FirewallRuleInserted, rule=built, index=self._position(before, after)))
        return built.id

    def move_rule(self, rule_id: str, before: str | None, after: str | None) -> None:
        self._index(rule_id, "$.rule_id")
        if rule_id in (before, after):
            raise InvalidError("a rule cannot move relative to itself", "$.rule_id")
        self.emit(stamp(FirewallRuleMoved, rule_id=rule_id, index=self._position(before, after, rule_id)))

    def remove_rule(self, rule_id: str) -> None:
        self._index(rule_id, "$.rule_id")
        self.emit(stamp(FirewallRuleRemoved, rule_id=rule_id))

    def delete(self) -> None:
        self.check_not_in_chain()
        self.emit(stamp(FirewallDeleted))


class Nat(FoldedMixin, ServiceMixin, SpliceAggregate):
    """Port forwarding (DNAT) on a router's external address."""

    AGGREGATE = "nat"
    KIND: ClassVar[str] = "nat"
    STATE = NatState
    APPLIED_TAGS = NAT_EVENT_TAGS
    port_count = 0

    if TYPE_CHECKING:  # the state's fields, read-only (set on the class by _read_through)
        state: NatState
        name: str
        insertion: InsertionState
        forwards: list[PortForward]
        chains: list[str]  # type: ignore[assignment]  # the fold keeps a list

    @classmethod
    def create(
        cls, agg_id: str, name: str, insertion: InsertionState, forwards: list[PortForwardIn],
        internal_networks: list[str],
    ) -> Nat:
        built: list[PortForward] = []
        for i, f in enumerate(forwards):
            built.append(cls._build(f, built, internal_networks, f"$.port_forwards[{i}]"))
        return cls.start(agg_id, stamp(NatCreated, name=name, insertion=insertion, port_forwards=built))

    @staticmethod
    def _build(
        f: PortForwardIn, existing: list[PortForward], networks: list[str], where: str
    ) -> PortForward:
        if any(x.protocol == f.protocol and x.external_port == f.external_port for x in existing):
            raise InvalidError(f"{f.protocol}/{f.external_port} is forwarded already", f"{where}.external_port")
        addr = ipaddress.IPv4Address(f.internal_address)
        if not any(addr in ipaddress.IPv4Network(n) for n in networks):
            raise InvalidError(
                f"{f.internal_address} is not on a network the router is attached to",
                f"{where}.internal_address",
            )
        return PortForward(id=new_id(), **{k: getattr(f, k) for k in PortForwardIn.__struct_fields__})

    def add_forward(self, f: PortForwardIn, internal_networks: list[str]) -> str:
        built = self._build(f, self.forwards, internal_networks, "$.forward")
        self.emit(stamp(PortForwardAdded, forward=built))
        return built.id

    def remove_forward(self, forward_id: str) -> None:
        if all(f.id != forward_id for f in self.forwards):
            raise NotFoundError(f"port forward {forward_id} not found", "$.forward_id")
        self.emit(stamp(PortForwardRemoved, forward_id=forward_id))

    def delete(self) -> None:
        self.check_not_in_chain()
        self.emit(stamp(NatDeleted))




class Tap(FoldedMixin, PlacedMixin, ServiceMixin, SpliceAggregate):
    """A copy of a port's traffic delivered to a monitor port.

    A standalone tap (no router) is realised where the port's traffic is: on the host both
    ports are bound to (`check_standalone`), by a driver of its provider there (``tc-mirror``:
    tc mirred from the port's host-side interface to the monitor's). It is scheduled on that
    host, never by the registry's least-loaded choice, and stays there: while it exists its
    ports keep their host (`PortTapAttached` on each; `Port.update` refuses a new one)."""

    AGGREGATE = "tap"
    KIND: ClassVar[str] = "tap"
    STATE = TapState
    APPLIED_TAGS = TAP_EVENT_TAGS
    port_count = 1

    if TYPE_CHECKING:  # the state's fields, read-only (set on the class by _read_through)
        state: TapState
        name: str
        port_id: str
        monitor_port_id: str
        direction: str
        insertion: InsertionState
        host: str | None
        chains: list[str]  # type: ignore[assignment]  # the fold keeps a list

    @classmethod
    def create(
        cls, agg_id: str, name: str, port_id: str, monitor_port_id: str, direction: str,
        insertion: InsertionState,
    ) -> Tap:
        if port_id == monitor_port_id:
            raise InvalidError("a port cannot monitor itself", "$.monitor_port_id")
        return cls.start(
            agg_id,
            stamp(TapCreated, name=name, port_id=port_id, monitor_port_id=monitor_port_id,
                  direction=direction, insertion=insertion),
        )

    def delete(self) -> None:
        self.check_not_in_chain()
        self.emit(stamp(TapDeleted))


def check_standalone(port: Port, monitor: Port) -> str:
    """The host a standalone tap of `port` to `monitor` runs on: both ports bound to it."""
    if port.id == monitor.id:
        raise InvalidError("a port cannot monitor itself", "$.monitor_port_id")
    if not port.host:
        raise InvalidError("a standalone tap needs a port bound to a host (port.create or "
                           "port.update with --host): its traffic is on that host", "$.port_id")
    if not monitor.host:
        raise InvalidError("the monitor port is bound to no host (port.create or port.update "
                           "with --host)", "$.monitor_port_id")
    if monitor.host != port.host:
        raise InvalidError(f"the monitor port is on host {monitor.host}, the tapped port on "
                           f"{port.host}: tc mirrors within one host", "$.monitor_port_id")
    return port.host


def check_host_offers(host: str, hosts: dict[str, dict[str, object]], provider: str) -> None:
    """A registered host must offer the tap's provider; an unregistered one may still come."""
    known = hosts.get(host)
    if known is not None and provider not in known["providers"]:  # type: ignore[operator]
        raise InvalidError(f"host {host} (where the ports are) offers no {provider}: choose a "
                           "service type whose tap provider it offers", "$.service_type_id")


def tap_port(port: Port, tap_id: str) -> None:
    if public_id(tap_id) not in port_taps(port):
        port.emit(stamp(PortTapAttached, tap_id=public_id(tap_id)))


def untap_port(port: Port, tap_id: str) -> None:
    if public_id(tap_id) in port_taps(port):
        port.emit(stamp(PortTapDetached, tap_id=public_id(tap_id)))


def port_taps(port: Port) -> list[str]:
    """The public ids of the standalone taps that use this port."""
    return list(port.taps)


_read_through(Firewall)
_read_through(Nat)
_read_through(Tap)


__all__ = ["Firewall", "Nat", "Tap", "msgspec"]
