"""The scheduler's registry of hosts: every host, its providers, underlay address and
liveness, and what is placed where (least loaded live host offering the provider, or waiting
for one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from splice.events.contracts import (
    HostLost,
    HostRegistered,
    HostRegistryCreated,
    ServicePlaced,
    ServiceUnplaced,
    ServiceWaiting,
)

from .domain import SpliceAggregate, stamp


class HostRegistry(SpliceAggregate):
    """Every host, its providers and liveness, and what is placed where (the scheduler's view).

    One aggregate, so placements are decided on a consistent view and serialised by the
    server's concurrency check; placements are rare next to other commands.
    """

    AGGREGATE = "hosts"

    if TYPE_CHECKING:
        # name -> {"providers": [...], "alive": bool, "underlay_ip": str | None}
        hosts: dict[str, dict[str, object]]
        placements: dict[str, tuple[str, str]]  # service id -> (host, provider)
        waiting: dict[str, str]  # service id -> provider

    @classmethod
    def create(cls, agg_id: str) -> HostRegistry:
        return cls.start(agg_id, stamp(HostRegistryCreated))

    def load(self, host: str) -> int:
        return sum(1 for h, _ in self.placements.values() if h == host)

    def pick(self, provider: str, exclude: str | None = None) -> str | None:
        """The least loaded live host that offers `provider` (ties: by name)."""
        candidates = [
            name
            for name, h in self.hosts.items()
            if h["alive"] and provider in h["providers"] and name != exclude  # type: ignore[operator]
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda n: (self.load(n), n))

    def place(self, service_id: str, provider: str) -> str | None:
        host = self.pick(provider)
        if host is None:
            self.emit(stamp(ServiceWaiting, service_id=service_id, provider=provider))
        else:
            self.emit(stamp(ServicePlaced, service_id=service_id, provider=provider, host=host))
        return host

    def unplace(self, service_id: str) -> None:
        if service_id in self.placements or service_id in self.waiting:
            host = self.placements.get(service_id, (None, ""))[0]
            self.emit(stamp(ServiceUnplaced, service_id=service_id, host=host))

    def register(
        self, host: str, providers: list[str], underlay_ip: str | None = None
    ) -> list[tuple[str, str]]:
        """Record the host (and its underlay address: where its VXLAN tunnels end); place the
        services waiting for what it offers. Returns them."""
        self.emit(stamp(HostRegistered, host=host, providers=sorted(set(providers)),
                        underlay_ip=underlay_ip))
        placed = []
        for service_id, provider in sorted(self.waiting.items()):
            if provider in providers:
                self.emit(
                    stamp(ServicePlaced, service_id=service_id, provider=provider, host=host)
                )
                placed.append((service_id, host))
        return placed

    def lose(self, host: str) -> list[tuple[str, str | None]]:
        """Declare the host lost; move its services to other live hosts. Returns the moves."""
        if host not in self.hosts or not self.hosts[host]["alive"]:
            return []
        self.emit(stamp(HostLost, host=host))
        moves: list[tuple[str, str | None]] = []
        for service_id, (h, provider) in sorted(self.placements.items()):
            if h == host:
                moves.append((service_id, self.place(service_id, provider)))
        return moves

    def when_HostRegistryCreated(self, e: HostRegistryCreated) -> None:
        self.hosts, self.placements, self.waiting = {}, {}, {}

    def when_HostRegistered(self, e: HostRegistered) -> None:
        self.hosts[e.host] = {"providers": list(e.providers), "alive": True,
                              "underlay_ip": e.underlay_ip}

    def when_HostLost(self, e: HostLost) -> None:
        self.hosts[e.host]["alive"] = False

    def when_ServicePlaced(self, e: ServicePlaced) -> None:
        self.placements[e.service_id] = (e.host, e.provider)
        self.waiting.pop(e.service_id, None)

    def when_ServiceWaiting(self, e: ServiceWaiting) -> None:
        self.placements.pop(e.service_id, None)
        self.waiting[e.service_id] = e.provider

    def when_ServiceUnplaced(self, e: ServiceUnplaced) -> None:
        self.placements.pop(e.service_id, None)
        self.waiting.pop(e.service_id, None)
