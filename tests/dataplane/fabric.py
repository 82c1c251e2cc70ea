"""Dataplane fixtures: a real bridge, gateway, client and member namespaces, real haproxy.

Everything lives in namespaces and on a bridge this fixture creates, named with the test
prefix ``splt-`` (not the agent's production ``spl-``, so a test run next to a real agent never
touches the agent's objects, and vice versa), inside 10.77.7.0/24. Teardown removes all of it
— processes first, then namespaces, links and files — even when a test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute, netns

from splice.agents import netns as agent_netns
from splice.agents.drivers.haproxy.driver import HaproxyDriver
from splice.agents.drivers.reports import Report
from splice.agents.model import (
    LoadBalancerSpec,
    NetworkSpec,
)
from splice.events import lbaas as wire
from splice.events.lbaas import HealthMonitor, Listener, Pool, SessionPersistence

PREFIX = "splt-"
SUBNET = "10.77.7"
MEMBER_PORT = 8080
MEMBER_SCRIPT = Path(__file__).with_name("member_server.py")
T = TypeVar("T")


def wait_until(probe: Callable[[], T], deadline_s: float, what: str, step_s: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(step_s)


@dataclass
class Response:
    status: int
    body: str
    headers: dict[str, str]


@dataclass
class Member:
    name: str
    namespace: str
    address: str
    proc: subprocess.Popen[bytes] | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


class Fabric:
    """One tenant network: bridge, gateway namespace, client namespace, member namespaces."""

    def __init__(self, tag: str, members: int) -> None:
        self.tag = tag
        self.network = NetworkSpec(str(uuid.uuid4()), f"{SUBNET}.0/24", f"{SUBNET}.1")
        self.bridge = self.network.bridge_name(PREFIX)
        self.gateway_ns = f"{PREFIX}t{tag}-gw"
        self.client_ns = f"{PREFIX}t{tag}-client"
        self.members = [
            Member(f"member{i}", f"{PREFIX}t{tag}-m{i}", f"{SUBNET}.{20 + i}")
            for i in range(members)
        ]
        self._veths: list[str] = []
        self._client: ThreadPoolExecutor | None = None

    # ---------------------------------------------------------------- build / teardown

    def build(self) -> None:
        agent_netns.ensure_bridge(self.bridge)
        self._plug(self.gateway_ns, "g", f"{SUBNET}.1")
        self._plug(self.client_ns, "c", f"{SUBNET}.2")
        for i, m in enumerate(self.members):
            self._plug(m.namespace, f"m{i}", m.address)
            self.start_member(m)
        self._client = ThreadPoolExecutor(
            max_workers=16, initializer=netns.setns, initargs=(self.client_ns, 0, None, False)
        )
        for m in self.members:
            self.wait_member(m)

    def _plug(self, namespace: str, suffix: str, address: str) -> None:
        """A namespace with one veth into the bridge; host ends are ``splt-t<tag><suffix>``
        (never ``splt-v...``, which is the agent's VIP-leg namespace of names)."""
        host_if = f"{PREFIX}t{self.tag}{suffix}"
        netns.create(namespace)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth",
                     peer={"ifname": "eth0", "net_ns_fd": namespace})
            idx = ipr.link_lookup(ifname=host_if)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        self._veths.append(host_if)
        with IPRoute(netns=namespace, flags=0) as ns:
            eth = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth, address=address, prefixlen=24)
            ns.link("set", index=eth, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

    def teardown(self) -> None:
        for m in self.members:
            self.stop_member(m)
        if self._client is not None:
            self._client.shutdown(wait=False, cancel_futures=True)
        for ns in [self.gateway_ns, self.client_ns, *(m.namespace for m in self.members)]:
            with contextlib.suppress(Exception):
                agent_netns.kill_namespace_processes(ns)
                agent_netns.delete_namespace(ns)
        for veth in self._veths:
            with contextlib.suppress(Exception):
                agent_netns.delete_link(veth)
        with contextlib.suppress(Exception):
            agent_netns.delete_link(self.bridge)

    # ---------------------------------------------------------------- members

    def start_member(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            return
        m.proc = subprocess.Popen(
            ["ip", "netns", "exec", m.namespace, sys.executable, str(MEMBER_SCRIPT), m.name,
             str(MEMBER_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop_member(self, m: Member) -> None:
        if m.proc is not None:
            m.proc.kill()
            m.proc.wait(timeout=10)
            m.proc = None

    def wait_member(self, m: Member) -> None:
        wait_until(lambda: self._answers(m.address, MEMBER_PORT), 15, f"{m.name} to listen")

    def _answers(self, host: str, port: int) -> bool:
        try:
            return self.get(host, port, "/healthz", timeout=0.5).status == 200
        except OSError:
            return False

    # ---------------------------------------------------------------- client

    def get(self, host: str, port: int, path: str = "/", headers: dict[str, str] | None = None,
            timeout: float = 3.0) -> Response:
        """One HTTP request from the client namespace, on a new connection."""
        assert self._client is not None
        return self._client.submit(_http_get, host, port, path, headers or {}, timeout).result()

    def submit(self, fn: Callable[..., T], *args: Any) -> Any:
        assert self._client is not None
        return self._client.submit(fn, *args)


def _http_get(host: str, port: int, path: str, headers: dict[str, str],
              timeout: float) -> Response:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", **headers})
        resp = conn.getresponse()
        body = resp.read().decode()
        return Response(resp.status, body, {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def sweep(prefix: str, state_dir: str | None = None) -> None:
    """Remove every LB namespace, VIP veth and state file of ``prefix`` (teardown safety net)."""
    for ns in agent_netns.list_namespaces(f"{prefix}lb-"):
        agent_netns.kill_namespace_processes(ns)
        agent_netns.delete_namespace(ns)
    links = agent_netns.observe_host(prefix)
    for veth in links.veth_master:
        if veth.startswith(f"{prefix}v"):
            agent_netns.delete_link(veth)
    if state_dir:
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def fabric() -> Iterator[Fabric]:
    if os.geteuid() != 0:
        raise RuntimeError("the dataplane suite needs root (namespaces, veths, haproxy)")
    fab = Fabric(tag=format(os.getpid() % 0xFFF, "x"), members=4)
    try:
        fab.build()
        yield fab
    finally:
        fab.teardown()
        sweep(PREFIX)


@pytest.fixture
def net(fabric: Fabric) -> Fabric:
    """The shared fabric, with every member running (a previous test may have stopped one)."""
    for m in fabric.members:
        fabric.start_member(m)
    for m in fabric.members:
        fabric.wait_member(m)
    return fabric


class Recorder:
    """Collects reports handed to ``on_report``."""

    def __init__(self) -> None:
        self.reports: list[Report] = []

    def __call__(self, report: Report) -> None:
        self.reports.append(report)

    def member_changes(self, member_id: str) -> list[tuple[str | None, str | None]]:
        return [(c.old, c.new) for r in self.reports for c in r.changes
                if c.kind == "member" and c.id == member_id]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def reconciler(recorder: Recorder) -> Iterator[HaproxyDriver]:
    state_dir = tempfile.mkdtemp(prefix="splt", dir="/tmp")
    rec = HaproxyDriver("test-host", state_dir, prefix=PREFIX, on_report=recorder)
    try:
        yield rec
    finally:
        rec.close()
        sweep(PREFIX, state_dir)


def lb_spec(
    fab: Fabric,
    members: list[Member] | None = None,
    *,
    lb_id: str | None = None,
    vip_host: int = 10,
    generation: int = 1,
    algorithm: str = "ROUND_ROBIN",
    persistence: SessionPersistence | None = None,
    monitor: HealthMonitor | None = None,
    protocol: str = "HTTP",
    **listener: Any,
) -> LoadBalancerSpec:
    """An LB with one listener on port 80 and one pool of ``members`` (default: all)."""
    pool_id = str(uuid.UUID(int=uuid.UUID(fab.network.id).int ^ vip_host))
    chosen = fab.members if members is None else members
    return LoadBalancerSpec.build(
        lb_id or str(uuid.uuid4()), fab.network, f"{SUBNET}.{vip_host}", generation=generation,
        listeners=[Listener(id=str(uuid.UUID(int=uuid.UUID(pool_id).int ^ 1)), name="http",
                            protocol=protocol, protocol_port=80, default_pool_id=pool_id,
                            **listener)],
        pools=[Pool(
            id=pool_id, name="pool", protocol=protocol, lb_algorithm=algorithm,
            session_persistence=persistence, healthmonitor=monitor,
            members=[wire.Member(id=m.id, address=m.address, protocol_port=MEMBER_PORT)
                     for m in chosen],
        )],
    )
