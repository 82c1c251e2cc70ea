"""The monitors' pure state: which load balancers are pending and since when, which hosts are
registered and when each was last heard of, and the deterministic id of a `host.lost` command.
No I/O: `services.monitors` feeds these from the stream and the heartbeats, and the tests drive
them directly."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from splice.events import subjects

Clock = Callable[[], float]
_MAX_TOKEN = 64  # the longest command_id the contracts accept


class _Payload(msgspec.Struct):
    """The two fields of an event payload the monitors read (the rest is ignored)."""

    generation: int | None = None
    timestamp: datetime | None = None
    host: str | None = None


_payload = msgspec.json.Decoder(_Payload)
_GENERATION_ENDS = frozenset(
    {"LoadBalancerProvisioned", "LoadBalancerProvisioningFailed", "LoadBalancerProvisioningTimedOut"}
)


@dataclass
class PendingLb:
    tenant: str
    generation: int
    since: float  # epoch seconds: timestamp of the event that started this generation
    deleting: bool = False
    expired: int = 0  # the generation an expire command was accepted for


class PendingTracker:
    """The load balancers whose current generation is pending (only those are kept)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.pending: dict[str, PendingLb] = {}  # lb uuid -> state
        self.clock = clock  # for an event without a timestamp only

    def apply(self, subject: str, topic: str, data: bytes) -> None:
        parts = subjects.parse_event(subject)
        if parts is None or parts.aggregate != "loadbalancer":
            return
        tenant, lb = parts.tenant, parts.ident
        if topic == "LoadBalancerDeleted":
            self.pending.pop(lb, None)
            return
        ev = _payload.decode(data) if data else _Payload()
        if ev.generation is None:
            return  # scheduling, operating status, chains: no generation involved
        current = self.pending.get(lb)
        if topic in _GENERATION_ENDS:
            if current is not None and ev.generation == current.generation:
                if topic != "LoadBalancerProvisioned" or not current.deleting:
                    del self.pending[lb]
            return
        if topic == "LoadBalancerCreated" or current is None or ev.generation > current.generation:
            since = ev.timestamp.timestamp() if ev.timestamp is not None else self.clock()
            self.pending[lb] = PendingLb(
                tenant, ev.generation, since, deleting=topic == "LoadBalancerDeleteRequested"
            )

    def overdue(self, now: float, timeout: float) -> list[tuple[str, PendingLb]]:
        """Pending longer than `timeout` and not yet expired, oldest first."""
        due = [
            (lb, st)
            for lb, st in self.pending.items()
            if now - st.since >= timeout and st.expired != st.generation
        ]
        return sorted(due, key=lambda x: x[1].since)


@dataclass
class HostState:
    seq: int  # stream sequence of its last HostRegistered event
    alive: bool = True
    declared: int = 0  # the registration (seq) a lost command was accepted for
    retry_at: float = 0.0  # after a refused lost command: not before then (monotonic)
    retries: int = 0


class HostTracker:
    """Registered hosts (from events) and when each was last heard of (monotonic clock)."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostState] = {}
        self.heard: dict[str, float] = {}

    def apply(self, topic: str, seq: int, data: bytes, now: float) -> None:
        ev = _payload.decode(data) if data else _Payload()
        if not ev.host:
            return
        if topic == "HostRegistered":
            self.hosts[ev.host] = HostState(seq=seq)
            self.heard[ev.host] = max(self.heard.get(ev.host, now), now)  # grace
        elif topic == "HostLost" and ev.host in self.hosts:
            self.hosts[ev.host].alive = False

    def heartbeat(self, host: str, now: float) -> None:
        self.heard[host] = now

    def overdue(self, now: float, timeout: float) -> list[tuple[str, int]]:
        """(host, seq of its registration) of live hosts not heard of for `timeout`."""
        return sorted(
            (name, h.seq)
            for name, h in self.hosts.items()
            if h.alive and h.declared != h.seq and now >= h.retry_at
            and now - self.heard.get(name, now) > timeout
        )

    def prune(self, now: float, keep: float) -> None:
        """Forget heartbeats of hosts that are not registered and silent for `keep` seconds."""
        for name in [n for n, t in self.heard.items() if n not in self.hosts and now - t > keep]:
            del self.heard[name]


def lost_command_id(host: str, seq: int) -> str:
    cid = f"lost-{host}-{seq}"
    if len(cid) <= _MAX_TOKEN:
        return cid
    digest = hashlib.sha256(host.encode()).hexdigest()[:24]  # long names: still deterministic
    return f"lost-{digest}-{seq}"
