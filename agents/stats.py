"""Per-service counters: read at an interval, kept in memory, served as metrics and on request.

Not events: counters change all the time and say nothing the domain decides on. Every
``interval_s`` (5 s by default) the agent asks each load-balancer driver for the counters of
what it serves (`drivers.haproxy.stats` from haproxy's ``show stat``, `drivers.l4.stats` from
the table's named counters, conntrack and the agent's health checks) and keeps the latest
reading of each load balancer (`Book`). A reading that fails is logged and counted
(``splice_agent_stats_errors_total``); the driver's previous readings are dropped with it.

Two ways out:

* Prometheus: one collector for the process (`expose`) turns every book's latest readings into
  ``splice_lb_*`` families, labelled with ids only (tenant, loadbalancer, listener, pool,
  member, provider): nothing a tenant names becomes a label;
* NATS request/reply on ``splice.stats.<tenant>.<host>.<loadbalancer id>`` (`subject`): the
  agent of ``<host>`` answers ``{"ok": true, "stats": …}`` for a load balancer it serves for
  that tenant, else a structured error. The bus lets a tenant send only on its own
  ``splice.stats.<tenant>.>`` (README: permissions on the bus), and the agent answers only for
  the load balancers of the subject's tenant, so a tenant reads its own stats only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import msgspec
import structlog
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from splice.events import metrics
from splice.events.subjects import (
    HOST_NAME,
    PREFIX,
    SERVICE_ACCOUNT,
    SERVICES,
    TENANT_NAME,
    Sender,
    sender_of,
)

log = structlog.get_logger("splice.agent.stats")

DEFAULT_INTERVAL_S = 5.0
UP = frozenset({"ONLINE", "NO_MONITOR", "DRAINING"})  # a member that takes or keeps traffic
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --------------------------------------------------------------------------- the readings


class ListenerStats(msgspec.Struct, kw_only=True):
    port: int
    status: str  # operating status
    bytes_in: int = 0  # from the clients
    bytes_out: int = 0  # to the clients
    active: int = 0  # connections open now
    total: int = 0  # connections since haproxy's worker started, or the nft table was made


class MemberStats(msgspec.Struct, kw_only=True):
    pool_id: str
    address: str
    port: int
    status: str  # operating status
    check: str = ""  # the health check's last word (haproxy: L4OK, L4CON…; nftables: UP, DOWN)
    active: int | None = None
    total: int | None = None  # None: the provider does not count it
    bytes_in: int | None = None
    bytes_out: int | None = None


class PoolStats(msgspec.Struct, kw_only=True):
    status: str
    members: int = 0  # enabled members
    members_up: int = 0
    active: int | None = None
    total: int | None = None


class LbStats(msgspec.Struct, kw_only=True):
    """One load balancer's counters, as read at `at` (Unix time) on `host`."""

    loadbalancer_id: str
    provider: str
    status: str  # the load balancer's operating status
    at: float
    tenant: str = ""
    host: str = ""
    listeners: dict[str, ListenerStats] = msgspec.field(default_factory=dict)
    pools: dict[str, PoolStats] = msgspec.field(default_factory=dict)
    members: dict[str, MemberStats] = msgspec.field(default_factory=dict)


def pool_stats(status: str, members: Mapping[str, MemberStats], pool_id: str,
               enabled: int) -> PoolStats:
    mine = [m for m in members.values() if m.pool_id == pool_id]
    up = sum(1 for m in mine if m.status in UP)
    active = [m.active for m in mine if m.active is not None]
    total = [m.total for m in mine if m.total is not None]
    return PoolStats(status=status, members=enabled, members_up=up,
                     active=sum(active) if active else None, total=sum(total) if total else None)


def as_int(row: Mapping[str, str] | None, key: str) -> int:
    """A counter of a ``show stat`` row (empty or absent: 0)."""
    value = (row or {}).get(key, "")
    return int(value) if value.isdigit() else 0


# --------------------------------------------------------------------------- the book


class Source(Protocol):
    provider: str

    async def stats(self) -> dict[str, LbStats]: ...


class Book:
    """The latest reading of each load balancer an agent serves, by its public id."""

    def __init__(self, host: str, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.host = host
        self.interval_s = interval_s
        self.latest: dict[str, LbStats] = {}
        self.readings = 0  # completed refreshes

    async def refresh(self, sources: Mapping[str, Source], tenants: Mapping[str, str]) -> None:
        """Read every source; `tenants`: the tenant of each load balancer (by public id)."""
        fresh: dict[str, LbStats] = {}
        for provider, source in sources.items():
            try:
                found = await source.stats()
            except Exception as e:
                metrics.STATS_ERRORS.labels(provider=provider).inc()
                log.warning("reading counters failed", provider=provider, error=str(e))
                continue
            for lb_id, reading in found.items():
                tenant = tenants.get(lb_id)
                if tenant is None:  # gone from the agent's folds meanwhile
                    continue
                reading.tenant, reading.host = tenant, self.host
                fresh[lb_id] = reading
        self.latest = fresh
        self.readings += 1

    async def run(self, stop: asyncio.Event, sources: Mapping[str, Source],
                  tenants: Callable[[], Mapping[str, str]]) -> None:
        """Refresh every `interval_s` until `stop` (the first one at once)."""
        while not stop.is_set():
            await self.refresh(sources, tenants())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    def answer(self, subject: str, hosted: Callable[[str, str], bool],
               sender: Sender = SERVICES) -> dict[str, Any]:
        """The reply to a request on `subject` (see the module's docstring); `hosted(tenant,
        lb_id)`: the load balancer is the tenant's and placed on this host; `sender`: who
        asked, as the server says (the bus already keeps a tenant to its own subjects)."""
        parts = subject.split(".")
        if len(parts) != 5 or not (TENANT_NAME.fullmatch(parts[2])
                                   and _UUID.fullmatch(parts[4])):
            return _error("invalid", "expected splice.stats.<tenant>.<host>.<loadbalancer id>")
        tenant, lb_id = parts[2], parts[4]
        if not (sender.account == SERVICE_ACCOUNT or sender.may_query(tenant)):
            return _error("forbidden", f"{sender.account} may not read {tenant}'s stats")
        reading = self.latest.get(lb_id)
        if reading is not None and reading.tenant == tenant:
            return {"ok": True, "stats": msgspec.to_builtins(reading)}
        if hosted(tenant, lb_id):
            return _error("unavailable", f"host {self.host} has not read the counters of "
                          f"{lb_id} yet: ask again", retry_after_ms=int(self.interval_s * 1000))
        return _error("not_found", f"host {self.host} serves no load balancer {lb_id} "
                      f"of tenant {tenant}")


def _error(code: str, message: str, retry_after_ms: int | None = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "field": "subject",
                                   "retry_after_ms": retry_after_ms}}


# --------------------------------------------------------------------------- NATS


def subject(tenant: str, host: str, lb_id: str) -> str:
    """Where the agent of `host` answers for one load balancer's counters."""
    if not (TENANT_NAME.fullmatch(tenant) and HOST_NAME.fullmatch(host)
            and _UUID.fullmatch(lb_id)):
        raise ValueError(f"no stats subject for {tenant!r}, {host!r}, {lb_id!r}")
    return f"{PREFIX}.stats.{tenant}.{host}.{lb_id}"


async def serve(nc: Any, book: Book, hosted: Callable[[str, str], bool],
                stop: asyncio.Event) -> None:
    """Answer ``splice.stats.*.<host>.*`` from `book` until `stop`."""

    async def on_request(msg: Any) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):  # the asker may be gone
                reply = book.answer(msg.subject, hosted, sender_of(msg.headers))
                await msg.respond(msgspec.json.encode(reply))

    sub = await nc.subscribe(f"{PREFIX}.stats.*.{book.host}.*", cb=on_request)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def run_agent(agent: Any, stop: asyncio.Event) -> None:
    """An agent's readings (`agent.stats`, exposed as metrics meanwhile) and its answers on
    the bus (its connection), until `stop`."""
    book: Book = agent.stats

    def tenants() -> dict[str, str]:  # aggregate id: <tenant>.loadbalancer.<public id>
        return {a.rsplit(".", 1)[-1]: a.split(".", 1)[0] for a in agent.lbs}

    def hosted(tenant: str, lb_id: str) -> bool:
        state = agent.lbs.get(f"{tenant}.loadbalancer.{lb_id}")
        return state is not None and state.host == agent.host

    expose(book)
    try:
        await asyncio.gather(book.run(stop, agent.drivers, tenants),
                             serve(agent._nc, book, hosted, stop))
    finally:
        withdraw(book)


# --------------------------------------------------------------------------- Prometheus


class _Collector:
    """Every live book's latest readings as ``splice_lb_*`` families (one per process)."""

    def __init__(self) -> None:
        self.books: weakref.WeakSet[Book] = weakref.WeakSet()

    def describe(self) -> list[Metric]:
        return []  # families appear with the first reading

    def collect(self) -> Iterator[Metric]:
        lb = ["tenant", "loadbalancer", "provider"]
        fam: dict[str, Any] = {
            "l_in": CounterMetricFamily("splice_lb_listener_bytes_in",
                                        "Bytes from the clients, per listener.", labels=[*lb, "listener"]),
            "l_out": CounterMetricFamily("splice_lb_listener_bytes_out",
                                         "Bytes to the clients, per listener.", labels=[*lb, "listener"]),
            "l_total": CounterMetricFamily("splice_lb_listener_connections",
                                           "Connections accepted, per listener.", labels=[*lb, "listener"]),
            "l_active": GaugeMetricFamily("splice_lb_listener_active_connections",
                                          "Connections open now, per listener.", labels=[*lb, "listener"]),
            "p_up": GaugeMetricFamily("splice_lb_pool_members_up",
                                      "Members taking traffic, per pool.", labels=[*lb, "pool"]),
            "m_up": GaugeMetricFamily("splice_lb_member_up",
                                      "1 if the member takes traffic (ONLINE, NO_MONITOR, DRAINING).",
                                      labels=[*lb, "pool", "member"]),
            "m_status": GaugeMetricFamily("splice_lb_member_status",
                                          "1 for the member's operating status.",
                                          labels=[*lb, "pool", "member", "status"]),
            "m_active": GaugeMetricFamily("splice_lb_member_active_connections",
                                          "Connections open now, per member.",
                                          labels=[*lb, "pool", "member"]),
            "m_total": CounterMetricFamily("splice_lb_member_connections",
                                           "Connections sent to the member (haproxy).",
                                           labels=[*lb, "pool", "member"]),
        }
        for book in list(self.books):
            for r in book.latest.values():
                base = [r.tenant, r.loadbalancer_id, r.provider]
                for lid, li in r.listeners.items():
                    fam["l_in"].add_metric([*base, lid], li.bytes_in)
                    fam["l_out"].add_metric([*base, lid], li.bytes_out)
                    fam["l_total"].add_metric([*base, lid], li.total)
                    fam["l_active"].add_metric([*base, lid], li.active)
                for pid, pool in r.pools.items():
                    fam["p_up"].add_metric([*base, pid], pool.members_up)
                for mid, m in r.members.items():
                    labels = [*base, m.pool_id, mid]
                    fam["m_up"].add_metric(labels, 1.0 if m.status in UP else 0.0)
                    fam["m_status"].add_metric([*labels, m.status], 1.0)
                    if m.active is not None:
                        fam["m_active"].add_metric(labels, m.active)
                    if m.total is not None:
                        fam["m_total"].add_metric(labels, m.total)
        yield from fam.values()


_collector: list[_Collector] = []  # the process's one collector, registered on first use


def expose(book: Book) -> None:
    """Serve `book`'s readings in the process's registry (until the book is withdrawn)."""
    if not _collector:
        _collector.append(_Collector())
        REGISTRY.register(_collector[0])
    _collector[0].books.add(book)


def withdraw(book: Book) -> None:
    if _collector:
        _collector[0].books.discard(book)


def now() -> float:
    return time.time()
