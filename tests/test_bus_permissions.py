"""The bus itself keeps tenants, hosts and strangers apart (issue 11, item 1).

A real nats-server with Splice's accounts (`splice.auth`), the real command service and
projector, and clients holding real credentials: each attack either fails on the bus or is
refused by the service, and the stream is left as it was.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig

from splice.events import subjects
from splice.events.follow import Follower
from splice.events.natsio import settled
from splice.natsserver import NatsServer
from splice.projections.runner import run_projector
from splice.services import senders
from splice.services.service import CommandService
from tests.helpers import request, wait_for

pytestmark = pytest.mark.trust

STREAM = subjects.STREAM


async def connect(url: str) -> Any:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False)
    nc.errors = errors  # type: ignore[attr-defined]
    return nc


class Bus:
    """The server, the services, and a connection as each principal."""

    def __init__(self, server: NatsServer, svc: Any) -> None:
        self.server, self.svc = server, svc
        self.conns: list[Any] = []

    async def as_(self, kind: str, name: str) -> Any:
        creds = self.server.issue(kind, name)  # type: ignore[arg-type]
        nc = await connect(self.server.url_of(creds))
        self.conns.append(nc)
        return nc

    async def stream_last(self) -> int:
        info = await self.svc.jetstream().stream_info(STREAM)
        return int(info.state.last_seq)

    async def stream_last_of(self, subject: str) -> int:
        msg = await self.svc.jetstream().get_last_msg(STREAM, subject, direct=True)
        return int(msg.seq)

    async def events(self) -> list[str]:
        """Every event subject in the stream, read with the services' own credentials."""
        js = self.svc.jetstream()
        last = await self.stream_last()
        found = []
        for seq in range(1, last + 1):
            msg = await js.get_msg(STREAM, seq, direct=True)
            if msg.subject.startswith("splice.evt."):
                found.append(msg.subject)
        return found


@pytest.fixture
async def bus(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[Bus]:
    service = CommandService(fresh_nats.url)
    await service.start()
    stop = asyncio.Event()
    projector = asyncio.create_task(
        run_projector(fresh_nats.url, str(tmp_path / "views.sqlite"), stop)
    )
    svc = await nats.connect(fresh_nats.url)
    b = Bus(fresh_nats, svc)
    try:
        yield b
    finally:
        for nc in b.conns:
            await nc.close()
        stop.set()
        await asyncio.wait_for(projector, 10)
        await service.stop()
        await svc.close()


def body(**fields: Any) -> bytes:
    return json.dumps({"command_id": str(uuid.uuid4()), "actor": "t", **fields}).encode()


async def ok(nc: Any, subject: str, **fields: Any) -> dict[str, Any]:
    reply = await request(nc, subject, body(**fields))
    assert reply["ok"], reply
    return reply


async def js_refused(nc: Any, subject: str, data: bytes = b"{}") -> bool:
    """A JetStream API request from an account without JetStream: the server answers 503
    (10039), or nothing at all."""
    try:
        reply = await nc.request(subject, data, timeout=1)
    except (NoRespondersError, nats.errors.TimeoutError):
        return True
    error = json.loads(reply.data).get("error", {})
    return bool(error.get("code") == 503 and error.get("err_code") == 10039)


def collect(into: list[str]) -> Any:
    async def cb(msg: Any) -> None:
        into.append(msg.subject)

    return cb


async def refused_by_bus(nc: Any, subject: str, data: bytes = b"{}") -> None:
    """The request reaches nobody: the bus routes it nowhere for this principal."""
    with pytest.raises((NoRespondersError, asyncio.TimeoutError, nats.errors.TimeoutError)):
        await nc.request(subject, data, timeout=1)


async def test_an_anonymous_connection_is_refused(fresh_nats: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(fresh_nats.public_url, allow_reconnect=False, max_reconnect_attempts=0)
    wrong = fresh_nats.public_url.replace("nats://", "nats://acme:guess@")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(wrong, allow_reconnect=False, max_reconnect_attempts=0)


async def test_a_tenant_cannot_touch_the_stream(bus: Bus) -> None:
    await ok(bus.svc, "splice.cmd._admin.servicetype.create", name="gold",
             providers={"loadbalancer": "haproxy"})
    acme = await bus.as_("tenant", "acme")
    await ok(acme, "splice.cmd.acme.network.create", name="n", cidr="10.1.0.0/24")
    before = await bus.stream_last()
    assert before > 0
    for api in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE", "STREAM.INFO", "STREAM.NAMES"):
        assert await js_refused(acme, f"$JS.API.{api}.{STREAM}"), api
    assert await js_refused(acme, f"$JS.API.STREAM.MSG.DELETE.{STREAM}", b'{"seq": 1}')
    assert await bus.stream_last() == before
    # raw publishes of events, claims and tracking records land in the tenant's own account
    await acme.publish("splice.evt.acme.network.x.NetworkCreated", b'{"forged": true}')
    await acme.publish("splice.idem.acme.x", b"{}")
    await acme.publish("splice.trk.x", b"{}")
    # the reply-subject trick: the service's answer must not be stored as an event
    await acme.publish("splice.cmd.acme.network.create",
                       body(name="m", cidr="10.2.0.0/24"), reply="splice.evt.acme.network.y.Forged")
    await acme.flush()

    async def both_networks() -> bool:
        return sum(".network." in s for s in await bus.events()) >= 2

    await wait_for(both_networks, timeout=10)  # the trick's command itself was served
    subjects_now = await bus.events()
    assert not [s for s in subjects_now if s.endswith("Forged") or ".x." in s], subjects_now
    info = await bus.svc.jetstream().stream_info(STREAM)
    assert info.state.first_seq == 1 and info.state.last_seq >= before


async def test_a_tenant_sends_and_reads_only_its_own(bus: Bus) -> None:
    acme, evil = await bus.as_("tenant", "acme"), await bus.as_("tenant", "evil")
    await ok(acme, "splice.cmd.acme.network.create", name="a", cidr="10.1.0.0/24")
    await ok(evil, "splice.cmd.evil.network.create", name="e", cidr="10.1.0.0/24")
    # another tenant's commands and the admin scope are not reachable
    await refused_by_bus(evil, "splice.cmd.acme.network.create", body(name="x", cidr="10.3.0.0/24"))
    await refused_by_bus(evil, "splice.cmd._admin.quota.set", body(tenant="evil", limits={}))
    await refused_by_bus(evil, "splice.cmd._host.host.register", body(host="rogue", providers=[]))
    await refused_by_bus(evil, "splice.qry.acme.networks")
    await refused_by_bus(evil, "splice.qry._admin.audit")
    # nor are another tenant's command bodies: a wildcard subscription sees nothing of acme's
    seen: list[str] = []
    sub = await evil.subscribe(">", cb=collect(seen))
    await settled(evil)  # the server knows the subscription before acme sends
    await ok(acme, "splice.cmd.acme.network.create", name="b", cidr="10.4.0.0/24")
    await evil.publish("evil.own", b"")  # the subscription works: it sees evil's own traffic
    await wait_for(lambda: "evil.own" in seen, timeout=5)
    await sub.unsubscribe()
    assert not [s for s in seen if ".acme." in s], seen

    # its own views, queried as itself
    await wait_for(lambda: _count(acme, "acme"), timeout=10)

    # its own events only: the consumer's filter is pinned by the bus
    js = acme.jetstream(prefix=subjects.JS_API_PREFIX)
    cfg = ConsumerConfig(name=f"r{uuid.uuid4().hex[:8]}", ack_policy=AckPolicy.NONE,
                         filter_subject="splice.evt.acme.>", mem_storage=True)
    info = await js.add_consumer(STREAM, config=cfg)
    assert info.num_pending >= 2
    for stolen in ("splice.evt.evil.>", "splice.evt.>", "splice.idem.>"):
        cfg = ConsumerConfig(name=f"r{uuid.uuid4().hex[:8]}", ack_policy=AckPolicy.NONE,
                             filter_subject=stolen, mem_storage=True)
        with pytest.raises((NoRespondersError, nats.errors.TimeoutError, nats.js.errors.Error)):
            await js.add_consumer(STREAM, config=cfg)
    last = await js.get_last_msg(STREAM, "splice.evt.acme.>", direct=True)
    assert last.subject.startswith("splice.evt.acme.")
    with pytest.raises((NoRespondersError, nats.errors.TimeoutError)):
        await js.get_last_msg(STREAM, "splice.evt.evil.>", direct=True)
    with pytest.raises((NoRespondersError, nats.errors.TimeoutError)):
        await js.get_msg(STREAM, 1, direct=True)  # by sequence: any tenant's, so not for it


async def _count(nc: Any, tenant: str) -> bool:
    try:
        reply = await request(nc, f"splice.qry.{tenant}.networks", {"min_seq": 1, "wait": 5})
    except NoRespondersError:  # the projector has not subscribed yet
        return False
    return bool(reply.get("ok")) and len(reply["items"]) >= 1


async def test_a_host_reports_only_about_itself(bus: Bus) -> None:
    await ok(bus.svc, "splice.cmd._admin.servicetype.create", name="gold",
             providers={"loadbalancer": "haproxy"})
    h1, h2 = await bus.as_("host", "h1"), await bus.as_("host", "h2")
    await ok(h1, "splice.cmd._host.host.register", host="h1", providers=["haproxy"])
    # a host cannot register (or report) as another one
    reply = await request(h1, "splice.cmd._host.host.register",
                          body(host="h2", providers=["haproxy"]))
    assert reply["error"]["code"] == "forbidden" and reply["error"]["field"] == "$.host", reply
    acme = await bus.as_("tenant", "acme")
    net = await ok(acme, "splice.cmd.acme.network.create", name="n", cidr="10.1.0.0/24")
    lb = await ok(acme, "splice.cmd.acme.loadbalancer.create", name="lb",
                  vip_network_id=net["id"])
    # the load balancer is placed on h1 (the only host): h2 may not report about it
    await ok(h2, "splice.cmd._host.host.register", host="h2", providers=["haproxy"])
    report = {"tenant": "acme", "loadbalancer_id": lb["id"], "generation": 1, "status": "ACTIVE"}
    refused = await request(h2, "splice.cmd._host.loadbalancer.report", body(host="h2", **report))
    assert refused["error"]["code"] == "invalid" and "placed on h1" in refused["error"]["message"]
    spoofed = await request(h2, "splice.cmd._host.loadbalancer.report", body(host="h1", **report))
    assert spoofed["error"]["code"] == "forbidden", spoofed
    status = await request(h2, "splice.cmd._host.loadbalancer.report_status",
                           body(host="h2", tenant="acme", loadbalancer_id=lb["id"],
                                loadbalancer="ONLINE"))
    assert status["error"]["code"] == "invalid", status
    await ok(h1, "splice.cmd._host.loadbalancer.report", host="h1", **report)
    # a host's heartbeats: only its own subject reaches the services
    beats: list[str] = []
    sub = await bus.svc.subscribe("splice.hb.>", cb=collect(beats))
    await settled(bus.svc)  # a flush alone may reach the server before the SUB does
    await h2.publish("splice.hb.h1", b"")
    await h2.publish("splice.hb.h2", b"")
    await h2.flush()
    await wait_for(lambda: "splice.hb.h2" in beats, timeout=5)
    await sub.unsubscribe()
    assert beats == ["splice.hb.h2"]
    # hosts send no tenant's commands
    await refused_by_bus(h1, "splice.cmd.acme.loadbalancer.delete", body(id=lb["id"]))
    # and read every tenant's load balancers and networks, as an agent follows them
    seen: list[str] = []

    async def take(d: Any) -> None:
        seen.append(d.subject)

    follower = Follower(h1.jetstream(prefix=subjects.JS_API_PREFIX),
                        [subjects.events_of("loadbalancer"), subjects.events_of("network")],
                        take, name="h1-test")
    await asyncio.wait_for(follower.run(until=await bus.stream_last_of("splice.evt.acme.>")), 10)
    assert {s.split(".")[3] for s in seen} == {"loadbalancer", "network"}, seen


async def test_the_operator_acts_for_tenants_but_not_as_a_host(bus: Bus) -> None:
    admin = await bus.as_("admin", "admin")
    await ok(admin, "splice.cmd._admin.servicetype.create", name="gold",
             providers={"loadbalancer": "haproxy"})
    await ok(admin, "splice.cmd.acme.network.create", name="n", cidr="10.1.0.0/24")
    reply = await request(admin, "splice.cmd._host.host.register",
                          body(host="h9", providers=["haproxy"]))
    assert reply["error"]["code"] == "forbidden", reply
    js = admin.jetstream(prefix=subjects.JS_API_PREFIX)
    last = await js.get_last_msg(STREAM, "splice.evt.>", direct=True)
    assert last.subject.startswith("splice.evt.acme.network.")
    assert await js_refused(admin, f"$JS.API.STREAM.DELETE.{STREAM}")
    assert (await bus.svc.jetstream().stream_info(STREAM)).state.messages > 0


def test_the_command_side_checks_the_sender_whatever_the_subject() -> None:
    """The same rule the accounts enforce, applied again by the service (pure)."""
    from splice.events.contracts import RegisterHost

    cmd = RegisterHost(host="h1", providers=["haproxy"])
    host = subjects.Sender("H_h1", "h1")
    assert senders.refusal("_host", cmd, host) is None
    assert senders.refusal("_host", cmd, subjects.Sender("H_h2", "h2")) is not None
    assert senders.refusal("acme", cmd, host) is not None
    assert senders.refusal("acme", cmd, subjects.Sender("T_acme", "acme")) is None
    assert senders.refusal("evil", cmd, subjects.Sender("T_acme", "acme")) is not None
    assert senders.refusal("_admin", cmd, subjects.Sender("T_acme", "acme")) is not None
    assert senders.refusal("_host", cmd, subjects.Sender("ADMIN", "admin-admin")) is not None
    assert senders.refusal("acme", cmd, subjects.Sender("ADMIN", "admin-admin")) is None
    assert senders.refusal("acme", cmd, subjects.Sender("?", None)) is not None
    assert subjects.sender_of({"Nats-Request-Info": "not json"}).account == "?"
    assert subjects.sender_of(None) == subjects.SERVICES


async def test_tls_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With TLS on, a client must trust Splice's authority; SSL_CERT_FILE is enough for ours."""
    import ssl

    from splice.tls import self_signed

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    files = self_signed(tmp_path / "tls")
    server = NatsServer(store_dir=tmp_path / "nats", tls=files).start()
    try:
        with pytest.raises((ssl.SSLError, nats.errors.Error, OSError)):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0,
                               connect_timeout=2)
        trusted = ssl.create_default_context(cafile=str(files.ca))
        nc = await nats.connect(server.url, tls=trusted)
        got: list[str] = []
        await nc.subscribe("splice.hb.x", cb=collect(got))
        await nc.publish("splice.hb.x", b"")
        await wait_for(lambda: got == ["splice.hb.x"], timeout=5)
        await nc.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))
        nc = await nats.connect(server.url)  # nats-py's default context honours SSL_CERT_FILE
        assert nc.is_connected
        await nc.close()
    finally:
        server.stop()
