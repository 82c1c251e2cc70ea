"""Stats requests on the bus: a tenant reads its own load balancers' counters, from an agent in
a host's account (two service imports: the tenant's from SPLICE, SPLICE's from the host) or
in the services' account, and never another tenant's.

A real nats-server with Splice's accounts and clients holding real credentials; the agent's
responder (`stats.serve`) answers from a book holding one reading (made from haproxy's
``show stat`` text: the dataplane e2e test reads a real haproxy).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError

from splice.agents import stats
from splice.agents.drivers.haproxy.process import parse_stat
from splice.agents.drivers.haproxy.stats import lb_stats
from splice.natsserver import NatsServer
from tests.test_lb_stats import LB, LI, SHOW_STAT, spec

pytestmark = pytest.mark.trust
SPLICE = str(Path(sys.executable).parent / "splice")


def book_for(host: str, tenant: str) -> stats.Book:
    book = stats.Book(host)
    reading = lb_stats(spec("HTTP"), parse_stat(SHOW_STAT), at=1.0)
    reading.tenant, reading.host = tenant, host
    book.latest[LB] = reading
    return book


@pytest.fixture
async def agents(fresh_nats: NatsServer) -> AsyncIterator[dict[str, Any]]:
    """Host h1's agent in its own account, and host `local`'s in the services' account, each
    serving acme's load balancer LB."""
    conns: list[Any] = []

    async def as_(kind: str, name: str) -> Any:
        creds = fresh_nats.issue(kind, name)  # type: ignore[arg-type]
        nc = await nats.connect(fresh_nats.url_of(creds), allow_reconnect=False)
        conns.append(nc)
        return nc

    host = await as_("host", "h1")
    services = await nats.connect(fresh_nats.url)
    conns.append(services)
    stop = asyncio.Event()
    serving = [asyncio.create_task(stats.serve(nc, book_for(h, "acme"), lambda t, i: False, stop))
               for nc, h in ((host, "h1"), (services, "local"))]
    try:
        await asyncio.sleep(0)
        for nc in (host, services):
            await nc.flush()
        yield {"as": as_, "services": services}
    finally:
        stop.set()
        await asyncio.gather(*serving)
        for nc in conns:
            await nc.close()


async def ask(nc: Any, subject: str) -> dict[str, Any]:
    return dict(json.loads((await nc.request(subject, b"{}", timeout=5)).data))


@pytest.mark.parametrize("host", ["h1", "local"])
async def test_a_tenant_reads_its_own_stats_from_the_agent_of_the_host(
        agents: dict[str, Any], host: str) -> None:
    acme = await agents["as"]("tenant", "acme")
    reply = await ask(acme, stats.subject("acme", host, LB))
    assert reply["ok"], reply
    assert reply["stats"]["listeners"][LI]["bytes_in"] == 5120
    assert reply["stats"]["host"] == host
    admin = await agents["as"]("admin", "admin")
    assert (await ask(admin, stats.subject("acme", host, LB)))["ok"]


@pytest.mark.parametrize("host", ["h1", "local"])
async def test_another_tenant_reads_nothing_of_them(agents: dict[str, Any], host: str) -> None:
    evil = await agents["as"]("tenant", "evil")
    with pytest.raises(NoRespondersError):  # the bus: evil imports only splice.stats.evil.>
        await evil.request(stats.subject("acme", host, LB), b"{}", timeout=5)
    reply = await ask(evil, stats.subject("evil", host, LB))  # its own subject, acme's id
    assert reply["error"]["code"] == "not_found" and "stats" not in reply
    # a host is no reader of stats either: its account imports none
    other_host = await agents["as"]("host", "h2")
    with pytest.raises(NoRespondersError):
        await other_host.request(stats.subject("acme", host, LB), b"{}", timeout=5)


async def test_a_forged_sender_header_from_a_tenant_account_is_refused_by_the_agent(
        agents: dict[str, Any]) -> None:
    """Within the services' account the header is whatever a client set: the agent still
    refuses a tenant account asking for another tenant's."""
    header = {"Nats-Request-Info": json.dumps({"acc": "T_evil", "user": "evil"})}
    msg = await agents["services"].request(stats.subject("acme", "local", LB), b"{}",
                                           timeout=5, headers=header)
    assert json.loads(msg.data)["error"]["code"] == "forbidden"


async def test_a_splice_agent_in_its_hosts_account_answers_a_tenants_request(
        fresh_nats: NatsServer, tmp_path: Path) -> None:
    """The real process: `splice agent` with a host's credentials subscribes for its host, and
    a tenant's request reaches it through both imports (it serves nothing: not_found)."""
    creds = fresh_nats.issue("host", "h9")
    env = dict(os.environ, SPLICE_LOG_LEVEL="WARNING", SPLICE_STATE_DIR=str(tmp_path / "st"))
    agent = await asyncio.create_subprocess_exec(
        SPLICE, "agent", "--host", "h9", "--prefix", "splh-", "--provider", "haproxy",
        "--state-dir", str(tmp_path / "agent"), "--nats-url", fresh_nats.url_of(creds),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    acme_creds = fresh_nats.issue("tenant", "acme")
    acme = await nats.connect(fresh_nats.url_of(acme_creds), allow_reconnect=False)
    try:
        async def answered() -> dict[str, Any] | None:
            try:
                return await ask(acme, stats.subject("acme", "h9", LB))
            except (NoRespondersError, nats.errors.TimeoutError):
                return None

        reply = None
        end = time.monotonic() + 30
        while reply is None:
            assert agent.returncode is None, "the agent exited"
            assert time.monotonic() < end, "the agent never answered"
            reply = await answered()
            if reply is None:
                await asyncio.sleep(0.2)
        assert reply["error"]["code"] == "not_found" and "h9" in reply["error"]["message"]
    finally:
        await acme.close()
        agent.terminate()
        await asyncio.wait_for(agent.wait(), 20)
