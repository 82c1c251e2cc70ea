"""Time from the ``loadbalancer.create`` command to the first HTTP response through its VIP,
against a bash script that builds the same namespace, veth, address, route and haproxy by hand.

``splice_s`` covers the whole path: the command over NATS, the command service, the event in
JetStream (fsync always), the agent consuming it, converging, and haproxy answering.
``splice_converge_s`` times the agent's converge alone (from the desired state in memory).

Both run in the same process on the same fabric (a bridge, a client namespace and one member
namespace running a tiny HTTP server, all named ``splb-``, inside 10.77.0.0/16 — only in
namespaces and on a bridge this benchmark makes), and both are timed the same way: from the
start of the work until a request from the client namespace through the VIP succeeds.
The script's haproxy config is the one Splice renders for the same spec (with the script's
paths), and it is checked with ``haproxy -c`` too, so both do the same work. Everything is
removed at the end, also on failure. Human-readable figures first; the last line is JSON:
``{"splice_s": .., "script_s": .., "ratio": ..}``.

    .venv/bin/python bench/time_to_serve.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nats
from pyroute2 import IPRoute, netns

from splice.agents import netns as agent_netns
from splice.agents.drivers.haproxy.driver import HaproxyDriver
from splice.agents.drivers.haproxy.render import LbPaths, render
from splice.agents.drivers.reports import ACTIVE
from splice.agents.model import LoadBalancerSpec, NetworkSpec
from splice.agents.runtime import Agent
from splice.events.lbaas import Listener, Member, Pool
from splice.natsserver import NatsServer
from splice.services.service import CommandService

PREFIX = "splb-"
NET = "10.77"
MEMBER = f"{NET}.0.20"
MEMBER_SERVER = (
    "import http.server as h\n"
    "class H(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length','2'); self.end_headers()\n"
    "        self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "h.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
)


class BenchFabric:
    """Bridge + client namespace + one member namespace; torn down by :meth:`close`."""

    def __init__(self) -> None:
        self.network = NetworkSpec(str(uuid.uuid4()), f"{NET}.0.0/16", f"{NET}.0.1")
        self.bridge = self.network.bridge_name(PREFIX)
        self.client_ns = f"{PREFIX}bench-client"
        self.member_ns = f"{PREFIX}bench-member"
        self.veths = [f"{PREFIX}tclient", f"{PREFIX}tmember"]
        self.member: subprocess.Popen[bytes] | None = None
        self.client: ThreadPoolExecutor | None = None

    def build(self) -> None:
        agent_netns.ensure_bridge(self.bridge)
        self._plug(self.client_ns, self.veths[0], f"{NET}.0.2")
        self._plug(self.member_ns, self.veths[1], MEMBER)
        self.member = subprocess.Popen(
            ["ip", "netns", "exec", self.member_ns, sys.executable, "-c", MEMBER_SERVER])
        self.client = ThreadPoolExecutor(
            max_workers=32, initializer=netns.setns, initargs=(self.client_ns, 0, None, False))
        self.wait_serving(MEMBER, 8080, 15)

    def _plug(self, namespace: str, host_if: str, address: str) -> None:
        netns.create(namespace)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth",
                     peer={"ifname": "eth0", "net_ns_fd": namespace})
            ipr.link("set", index=ipr.link_lookup(ifname=host_if)[0],
                     master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        with IPRoute(netns=namespace, flags=0) as ns:
            eth = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth, address=address, prefixlen=16)
            ns.link("set", index=eth, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

    def close(self) -> None:
        if self.member is not None:
            self.member.kill()
            self.member.wait()
        if self.client is not None:
            self.client.shutdown(wait=False, cancel_futures=True)
        sweep()
        for ns in (self.client_ns, self.member_ns):
            with contextlib.suppress(Exception):
                agent_netns.kill_namespace_processes(ns)
                agent_netns.delete_namespace(ns)
        for link in [*self.veths, self.bridge]:
            with contextlib.suppress(Exception):
                agent_netns.delete_link(link)

    def wait_serving(self, host: str, port: int, deadline_s: float) -> float:
        """Poll from the client namespace until a GET succeeds; return the monotonic time."""
        assert self.client is not None
        return self.client.submit(_wait_http, host, port, deadline_s).result()


def _wait_http(host: str, port: int, deadline_s: float) -> float:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        conn = http.client.HTTPConnection(host, port, timeout=0.5)
        try:
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return time.monotonic()
        except OSError:
            time.sleep(0.002)
        finally:
            conn.close()
    raise TimeoutError(f"{host}:{port} did not serve within {deadline_s}s")


def sweep() -> None:
    """Remove every ``splb-`` LB namespace (ours and the script's), VIP veth and process."""
    for ns in agent_netns.list_namespaces(f"{PREFIX}lb-") | agent_netns.list_namespaces(
            f"{PREFIX}sc-"):
        agent_netns.kill_namespace_processes(ns)
        agent_netns.delete_namespace(ns)
    for veth in agent_netns.observe_host(PREFIX).veth_master:
        if veth.startswith((f"{PREFIX}v", f"{PREFIX}s")):
            agent_netns.delete_link(veth)


def lb_spec(fab: BenchFabric, index: int) -> LoadBalancerSpec:
    """One HTTP listener on :80, one pool with the member (index picks the VIP)."""
    pool = str(uuid.uuid4())
    return LoadBalancerSpec.build(
        str(uuid.uuid4()), fab.network, vip(1, index),
        listeners=[Listener(id=str(uuid.uuid4()), name="http", protocol="HTTP", protocol_port=80,
                            default_pool_id=pool)],
        pools=[Pool(id=pool, name="web", protocol="HTTP",
                    members=[Member(id=str(uuid.uuid4()), address=MEMBER, protocol_port=8080)])],
    )


def vip(block: int, index: int) -> str:
    return f"{NET}.{block + index // 250}.{index % 250 + 2}"


def script_for(fab: BenchFabric, specs: list[LoadBalancerSpec], state_dir: str) -> str:
    """The bash a careful operator would write: same objects, same config, same check."""
    lines = ["#!/bin/bash", "set -euo pipefail"]
    for i, spec in enumerate(specs):
        ns, veth = f"{PREFIX}sc-{i}", f"{PREFIX}s{i}"
        d = f"{state_dir}/s{i}"
        config = render(spec, LbPaths(d))
        lines += [
            f"ip netns add {ns}",
            f"ip link add {veth} type veth peer name eth0 netns {ns}",
            f"ip link set {veth} master {fab.bridge} up",
            f"ip -n {ns} link set lo up",
            f"ip -n {ns} addr add {spec.vip_address}/16 dev eth0",
            f"ip -n {ns} link set eth0 up",
            f"ip -n {ns} route add default via {fab.network.gateway}",
            f"mkdir -p {d}",
            f"cat > {d}/haproxy.cfg <<'EOF'\n{config}EOF",
            f"haproxy -c -q -f {d}/haproxy.cfg",
            f"ip netns exec {ns} haproxy -f {d}/haproxy.cfg -S {d}/master.sock",
        ]
    return "\n".join(lines) + "\n"


def run_script(text: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(text)
    try:
        subprocess.run(["bash", f.name], check=True, capture_output=True)
    finally:
        Path(f.name).unlink()


async def splice_once(fab: BenchFabric, state_dir: str, index: int) -> float:
    rec = HaproxyDriver("bench", state_dir, prefix=PREFIX)
    spec = lb_spec(fab, index)
    try:
        start = time.monotonic()
        result = (await rec.converge({spec.id: spec}))[spec.id]
        if result.provisioning_status != ACTIVE:
            raise RuntimeError(result.reason)
        served = await asyncio.to_thread(fab.wait_serving, spec.vip_address, 80, 10)
        return served - start
    finally:
        await rec.converge({})
        rec.close()


def script_once(fab: BenchFabric, state_dir: str, index: int) -> float:
    """A fresh VIP each run: the script sends no gratuitous ARP, so a reused VIP would meet the
    client's stale neighbour entry and measure the ARP timeout instead of the script."""
    spec = lb_spec(fab, index)
    text = script_for(fab, [spec], state_dir)
    try:
        start = time.monotonic()
        run_script(text)
        return fab.wait_serving(spec.vip_address, 80, 10) - start
    finally:
        sweep()


class CommandPath:
    """A nats-server, the command service and an agent (prefix ``splb-``) for the bench."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.server = NatsServer(store_dir=Path(state_dir) / "nats")

    async def start(self) -> str:
        """Start everything; returns the id of the network the bench's fabric must use."""
        await asyncio.to_thread(self.server.start)
        self.service = CommandService(self.server.url, env={"SPLICE_MONITORS": "off"})
        await self.service.start()
        self.nc = await nats.connect(self.server.url)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        st = await self.cmd("_admin.servicetype.create",
                            {"name": "bench", "providers": {"loadbalancer": "haproxy"}})
        net = await self.cmd("bench.network.create", {"name": "bench", "cidr": f"{NET}.0.0/16",
                                                      "gateway": f"{NET}.0.1"})
        self.service_type = st["id"]
        return str(net["id"])

    def start_agent(self) -> None:
        """After the fabric is plugged in: the agent removes empty bridges of its prefix."""
        self.agent = Agent(self.server.url, "bench", f"{self.state_dir}/agent",
                           providers=["haproxy"], prefix=PREFIX, resync_s=60)
        self.task = asyncio.create_task(self.agent.run(self.stop))

    async def cmd(self, subject: str, body: dict[str, object]) -> dict[str, object]:
        msg = await self.nc.request(f"splice.cmd.{subject}", json.dumps(body).encode(), timeout=15)
        reply = json.loads(msg.data)
        if not reply["ok"]:
            raise RuntimeError(f"{subject}: {reply}")
        return dict(reply)

    async def once(self, fab: BenchFabric, net_id: str, index: int) -> float:
        body = {"name": f"lb{index}", "vip_network_id": net_id, "vip_address": vip(1, index),
                "service_type_id": self.service_type,
                "pools": [{"name": "p", "protocol": "HTTP",
                           "members": [{"address": MEMBER, "protocol_port": 8080}]}],
                "listeners": [{"name": "l", "protocol": "HTTP", "protocol_port": 80,
                               "default_pool": "p"}]}
        start = time.monotonic()
        lb = await self.cmd("bench.loadbalancer.create", body)
        served = await asyncio.to_thread(fab.wait_serving, vip(1, index), 80, 15)
        await self.cmd("bench.loadbalancer.delete", {"id": lb["id"]})
        deadline = time.monotonic() + 15
        while agent_netns.list_namespaces(f"{PREFIX}lb-") and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the agent removes it: poll the kernel
        return served - start

    async def close(self) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 20)
        with contextlib.suppress(Exception):
            await self.nc.close()
        with contextlib.suppress(Exception):
            await self.service.stop()
        await asyncio.to_thread(self.server.stop)


async def run_all(runs: int, state_dir: str) -> tuple[list[float], list[float], list[float]]:
    path = CommandPath(f"{state_dir}/path")
    fab = BenchFabric()
    try:
        net_id = await path.start()
        fab.network = NetworkSpec(net_id, f"{NET}.0.0/16", f"{NET}.0.1")
        fab.bridge = fab.network.bridge_name(PREFIX)
        await asyncio.to_thread(fab.build)
        path.start_agent()
        via_command, converge_only, script_s = [], [], []
        for run in range(runs):
            via_command.append(await path.once(fab, net_id, 3 * run))
        await path.close()  # one owner of the prefix at a time: the agent stops first
        for run in range(runs):
            converge_only.append(await splice_once(fab, f"{state_dir}/splice", 3 * run + 1))
            script_s.append(await asyncio.to_thread(script_once, fab, f"{state_dir}/script",
                                                    3 * run + 2))
        return via_command, converge_only, script_s
    finally:
        await path.close()
        await asyncio.to_thread(fab.close)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    state_dir = tempfile.mkdtemp(prefix="splb", dir="/tmp")
    try:
        splice_s, converge_s, script_s = asyncio.run(run_all(args.runs, state_dir))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    med_splice, med_script = statistics.median(splice_s), statistics.median(script_s)
    med_converge = statistics.median(converge_s)

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x * 1000:.0f}" for x in xs)

    print(f"splice  create command→first response: median {med_splice * 1000:.1f} ms "
          f"(runs: {runs(splice_s)})")
    print(f"splice  converge→first response:       median {med_converge * 1000:.1f} ms "
          f"(runs: {runs(converge_s)})")
    print(f"script  bash→first response:           median {med_script * 1000:.1f} ms "
          f"(runs: {runs(script_s)})")
    print(json.dumps({"splice_converge_s": round(med_converge, 4),
                      "splice_s": round(med_splice, 4), "script_s": round(med_script, 4),
                      "ratio": round(med_splice / med_script, 3)}))


if __name__ == "__main__":
    main()
