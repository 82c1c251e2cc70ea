"""Time from the ``router.create`` command to the first answer through a new router with a
firewall and a port forward, against a bash script that builds the same with ``ip`` and ``nft``.

``splice_s`` covers the whole path of five commands sent one after the other, each waiting for
its answer (``router.create``, ``router.add_interface`` on the internal network,
``router.set_gateway`` on the external one with SNAT, ``firewall.create`` routed on the router:
default deny, allow TCP 80, ``nat.create``: router:8080 → server:80), through the command
service, JetStream (fsync always), the agent folding the events and converging the router's
namespace, legs, sysctls, default route and nftables tables, until a client on the external
network gets an HTTP answer from the server through the forwarded port.
``splice_commands_s`` is the part of it until the last command was answered.

``script_s`` times a bash script a careful operator would write (`script_for`): a router
namespace, a leg per network with the same addresses, the same sysctls (``ip_forward``,
``rp_filter`` 2, no redirects), the default route, and in one ``nft -f`` the NAT table
(DNAT of the forward, masquerade on the external leg) and the firewall table (forward chain,
policy drop, established/related accept, invalid drop, DNAT'd flows accepted, TCP 80 allowed)
— the rules Splice renders — then the same request from the same client.

Both run in the same process, interleaved run by run (which goes first alternates), on the
same fabric: the two networks' bridges, a client namespace on the external network and a
server namespace (``tests/dataplane/member_server.py``) on the internal one, all named
``sprt-`` inside 10.78.0.0/16 — only in namespaces and on bridges this benchmark makes. The
networks (the external one flagged external by the admin, ``network.set_external``), the
service type (firewall and NAT by nftables, the default) and the agent exist before any clock
starts, as the fabric does. The client learns the router's external address, which Splice
allocates, from the agent's fold of the gateway event (the script uses the same address).
Each run's router is deleted off the clock, and the next run waits until its namespace and
legs are gone. Both are timed the same way: from the start of the work until a request from
the client through the router's external address:8080 succeeds. Before each run (off the
clock) the client and the server forget their neighbours, since every run's router legs have
new MACs; the client re-sends ARP every 10 ms instead of every second, so that neither side is
measured in ARP retries. Everything is removed at the
end, also on failure or SIGINT/SIGTERM. Human-readable figures first; the last line is JSON:
``{"splice_s": .., "splice_commands_s": .., "script_s": .., "ratio": .., "runs": ..}``
(medians over the runs; ``ratio`` = ``splice_s / script_s``).

    flock /tmp/splice-dataplane.lock .venv/bin/python bench/routed.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
from pyroute2 import IPRoute, netns

from splice import logs
from splice.agents import netns as agent_netns
from splice.agents.drivers.router.model import RouterLayout
from splice.agents.runtime import Agent
from splice.events.router_fold import ROUTER_PROVIDER
from splice.natsserver import NatsServer
from splice.services.service import CommandService

PREFIX = "sprt-"
LAYOUT = RouterLayout(PREFIX)
TENANT = "bench"
HOST = "bench-routed"
INTERNAL_CIDR, INTERNAL_GW = "10.78.1.0/24", "10.78.1.1"
EXTERNAL_CIDR, EXTERNAL_GW = "10.78.2.0/24", "10.78.2.1"
SERVER, CLIENT = "10.78.1.100", "10.78.2.100"
# The router's external address in the script: the one Splice's IPAM picks for the gateway
# port (the first free host address of the external network); Splice's runs print theirs.
SCRIPT_EXTERNAL = "10.78.2.2"
SERVER_PORT, FORWARD_PORT = 80, 8080
SERVER_NAME = "routed-server"  # the member server answers its name: the answer is the server's
MEMBER_SERVER = Path(__file__).resolve().parents[1] / "tests" / "dataplane" / "member_server.py"
CLIENT_NS, SERVER_NS = f"{PREFIX}bench-client", f"{PREFIX}bench-server"
FABRIC_VETHS = (f"{PREFIX}tcli", f"{PREFIX}tsrv")  # host ends of the client's and server's
SCRIPT_NS = f"{PREFIX}sc-router"
SCRIPT_LEGS = (f"{PREFIX}si", f"{PREFIX}sx")  # host ends of the script's legs
DEADLINE_S = 20.0
T = TypeVar("T")


@dataclass
class Fabric:
    """Two bridges (the networks'), a client namespace on the external one and a server
    namespace on the internal one; torn down by :meth:`close`."""

    internal_bridge: str
    external_bridge: str
    client_ns: str = CLIENT_NS
    server_ns: str = SERVER_NS
    veths: tuple[str, str] = FABRIC_VETHS
    server: subprocess.Popen[bytes] | None = None
    client: ThreadPoolExecutor | None = None
    timeouts: list[int] = field(default_factory=list)  # probe attempts cut off, per wait
    stopping: threading.Event = field(default_factory=threading.Event)  # probes give up

    def build(self) -> None:
        for bridge in (self.internal_bridge, self.external_bridge):
            agent_netns.ensure_bridge(bridge)
        self._plug(self.client_ns, self.veths[0], self.external_bridge, CLIENT)
        self._plug(self.server_ns, self.veths[1], self.internal_bridge, SERVER)
        _run("ip", "-n", self.server_ns, "route", "add", "default", "via", INTERNAL_GW)
        # re-ARP every 10 ms while a neighbour is unresolved (default 1 s): see the docstring
        _run("ip", "netns", "exec", self.client_ns, "sysctl", "-qw",
             "net.ipv4.neigh.eth0.retrans_time_ms=10")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, sys.executable, str(MEMBER_SERVER),
             SERVER_NAME, str(SERVER_PORT)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._wait_ready(self.server, 15)
        self.client = ThreadPoolExecutor(
            max_workers=1, initializer=netns.setns, initargs=(self.client_ns, 0, None, False))

    def _plug(self, namespace: str, host_if: str, bridge: str, address: str) -> None:
        agent_netns.ensure_namespace(namespace)  # `ip netns add`, lo up
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth",
                     peer={"ifname": "eth0", "net_ns_fd": namespace})
            ipr.link("set", index=ipr.link_lookup(ifname=host_if)[0],
                     master=ipr.link_lookup(ifname=bridge)[0], state="up")

        def configure() -> None:  # in the namespace (setns: no fork, unlike IPRoute(netns=))
            with IPRoute() as ns:
                eth = ns.link_lookup(ifname="eth0")[0]
                ns.addr("add", index=eth, address=address, prefixlen=24)
                ns.link("set", index=eth, state="up")

        agent_netns.in_netns(namespace, configure)

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes], deadline_s: float) -> None:
        """member_server.py prints ``ready`` once it listens."""
        assert proc.stdout is not None
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            readable, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
            if readable:
                line = proc.stdout.readline()
                if line.strip() == b"ready":
                    return
                if not line:
                    break
        raise TimeoutError(f"the server did not start within {deadline_s}s (rc {proc.poll()})")

    def forget_neighbours(self) -> None:
        """Off the clock: each run's router legs have new MACs."""
        for ns in (self.client_ns, self.server_ns):
            _run("ip", "-n", ns, "neigh", "flush", "all")

    def wait_answer(self, address: str, deadline_s: float) -> float:
        """Poll from the client until the server answers through ``address``:8080; return
        the monotonic time of the answer."""
        assert self.client is not None
        served, timeouts = self.client.submit(_wait_http, address, FORWARD_PORT, deadline_s,
                                              self.stopping).result()
        self.timeouts.append(timeouts)
        return served

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        if self.client is not None:
            self.client.shutdown(wait=False, cancel_futures=True)
        for ns in (self.client_ns, self.server_ns):
            with contextlib.suppress(Exception):
                agent_netns.kill_namespace_processes(ns)
                agent_netns.delete_namespace(ns)
        for link in [*self.veths, self.internal_bridge, self.external_bridge]:
            with contextlib.suppress(Exception):
                agent_netns.delete_link(link)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _wait_http(host: str, port: int, deadline_s: float,
               stopping: threading.Event) -> tuple[float, int]:
    """GET / until the server's own answer comes back; (its monotonic time, attempts cut off
    by the 0.25 s timeout — each one may have delayed the answer by up to that much)."""
    end = time.monotonic() + deadline_s
    timeouts = 0
    while time.monotonic() < end and not stopping.is_set():
        conn = http.client.HTTPConnection(host, port, timeout=0.25)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            if response.status == 200 and response.read() == SERVER_NAME.encode():
                return time.monotonic(), timeouts
        except TimeoutError:
            timeouts += 1
        except OSError:
            time.sleep(0.002)  # refused or unreachable: the router is not there yet
        finally:
            conn.close()
    raise TimeoutError(f"{host}:{port} did not answer within {deadline_s}s")


def wait_gone(stopping: threading.Event, deadline_s: float = DEADLINE_S) -> None:
    """Until no router namespace, leg or script leg of the prefix is left: a deleted
    namespace's veths die with it, asynchronously, and a dying leg may still answer ARP.
    Returns at once when the bench is stopping (its final sweep removes them)."""
    end = time.monotonic() + deadline_s
    while not stopping.is_set():
        spaces = (agent_netns.list_namespaces(LAYOUT.namespace_prefix)
                  | agent_netns.list_namespaces(SCRIPT_NS))
        legs = [v for v in agent_netns.observe_host(PREFIX).veth_master
                if v.startswith(LAYOUT.leg_prefix) or v in SCRIPT_LEGS]
        if not spaces and not legs:
            return
        if time.monotonic() > end:
            raise TimeoutError(f"left after {deadline_s}s: {sorted(spaces)} {legs}")
        time.sleep(0.02)


def sweep(fabric: bool = False) -> None:
    """Remove every router namespace and leg of the prefix (the agent's and the script's);
    with ``fabric``, also the fabric's namespaces, veths and every bridge of the prefix."""
    spaces = (agent_netns.list_namespaces(LAYOUT.namespace_prefix)
              | agent_netns.list_namespaces(SCRIPT_NS))
    if fabric:
        spaces |= {ns for ns in (CLIENT_NS, SERVER_NS) if agent_netns.namespace_inode(ns)}
    for ns in spaces:
        agent_netns.kill_namespace_processes(ns)
        agent_netns.delete_namespace(ns)
    links = agent_netns.observe_host(PREFIX)
    for veth in links.veth_master:
        if (veth.startswith(LAYOUT.leg_prefix) or veth in SCRIPT_LEGS
                or (fabric and veth in FABRIC_VETHS)):
            agent_netns.delete_link(veth)
    if fabric:
        for bridge in links.bridges:
            agent_netns.delete_link(bridge)


def off_loop_now(fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn`` in a thread of its own and wait, blocking the event loop on purpose: for the
    final cleanup, which a second cancel must not cut short (pyroute2 may not run on the
    loop's thread: it runs an event loop of its own)."""
    with ThreadPoolExecutor(max_workers=1) as once:
        once.submit(fn, *args).result()


def script_for(fab: Fabric) -> str:
    """The bash a careful operator would write: the same objects, addresses and rules.
    Text syntax for nft is fine here: the script holds no tenant data."""
    ns, (leg_int, leg_ext) = SCRIPT_NS, SCRIPT_LEGS
    plen_int, plen_ext = INTERNAL_CIDR.split("/")[1], EXTERNAL_CIDR.split("/")[1]
    return f"""#!/bin/bash
set -euo pipefail
ip netns add {ns}
ip -n {ns} link set lo up
ip netns exec {ns} sysctl -qw net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2 \\
    net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 \\
    net.ipv4.ip_forward=1
ip link add {leg_int} type veth peer name qr-int netns {ns}
ip link set {leg_int} master {fab.internal_bridge} up
ip -n {ns} addr add {INTERNAL_GW}/{plen_int} dev qr-int
ip -n {ns} link set qr-int up
ip link add {leg_ext} type veth peer name qg-ext netns {ns}
ip link set {leg_ext} master {fab.external_bridge} up
ip -n {ns} addr add {SCRIPT_EXTERNAL}/{plen_ext} dev qg-ext
ip -n {ns} link set qg-ext up
ip -n {ns} route add default via {EXTERNAL_GW} dev qg-ext
ip netns exec {ns} nft -f - <<'EOF'
table ip {PREFIX}nat {{
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        ip daddr {SCRIPT_EXTERNAL} tcp dport {FORWARD_PORT} dnat to {SERVER}:{SERVER_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "qg-ext" masquerade
    }}
}}
table inet {PREFIX}fw {{
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        ct state invalid drop
        ct status dnat accept
        tcp dport {SERVER_PORT} accept
    }}
}}
EOF
"""


def run_script(text: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(text)
    try:
        done = subprocess.run(["bash", f.name], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the script failed ({done.returncode}): {done.stderr.strip()}")
    finally:
        Path(f.name).unlink()


def script_once(fab: Fabric) -> float:
    text = script_for(fab)
    fab.forget_neighbours()
    try:
        start = time.monotonic()
        run_script(text)
        return fab.wait_answer(SCRIPT_EXTERNAL, DEADLINE_S) - start
    finally:
        sweep()
        wait_gone(fab.stopping)


class CommandPath:
    """A nats-server, the command service and an agent routing (prefix ``sprt-``)."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.server = NatsServer(store_dir=Path(state_dir) / "nats")
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.service: CommandService | None = None
        self.nc: Any = None
        self.addresses: list[str] = []  # the router's external address, per run
        # the bench's blocking work, one item at a time: cleanup waits for the running one, so
        # that nothing is still being built while it sweeps
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench")

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def start(self) -> tuple[str, str]:
        """Start the server and the service; the service type (the default) and the two
        networks. Returns the ids of the internal and the external network."""
        self.server.start()  # blocking: nothing else runs yet, and `close` then always sees it
        self.service = CommandService(self.server.url, env={"SPLICE_MONITORS": "off"})
        await self.service.start()
        self.nc = await nats.connect(self.server.url)
        await self.cmd("_admin.servicetype.create", {
            "name": "bench-routed", "providers": {"firewall": "nftables", "nat": "nftables"},
            "default": True})
        internal = await self.cmd(f"{TENANT}.network.create", {
            "name": "internal", "cidr": INTERNAL_CIDR, "gateway": INTERNAL_GW})
        external = await self.cmd(f"{TENANT}.network.create", {
            "name": "external", "cidr": EXTERNAL_CIDR, "gateway": EXTERNAL_GW})
        # a router's gateway must be on a network an admin flagged external
        await self.cmd("_admin.network.set_external", {"tenant": TENANT, "id": external["id"]})
        return str(internal["id"]), str(external["id"])

    async def start_agent(self) -> None:
        """After the fabric is plugged in; returns once the agent has caught up."""
        self.agent = Agent(self.server.url, HOST, f"{self.state_dir}/agent",
                           providers=[ROUTER_PROVIDER], prefix=PREFIX, resync_s=60)
        self.task = asyncio.create_task(self.agent.run(self.stop))
        ready = asyncio.create_task(self.agent.ready.wait())
        done, _ = await asyncio.wait({ready, self.task}, timeout=DEADLINE_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if self.task in done:
                self.task.result()  # raises what stopped the agent
            raise TimeoutError(f"the agent did not catch up within {DEADLINE_S}s")

    async def cmd(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"command_id": str(uuid.uuid4()), "actor": "bench", **body}
        msg = await self.nc.request(f"splice.cmd.{subject}", json.dumps(body).encode(),
                                    timeout=15)
        reply = json.loads(msg.data)
        if not reply["ok"]:
            raise CommandRefused(f"{subject}: {reply}")
        return dict(reply)

    async def gateway_address(self, router_id: str) -> str:
        """The router's external address, as Splice allocated it (the agent's fold of the
        gateway event; the client needs it to knock)."""
        end = time.monotonic() + DEADLINE_S
        while True:
            state = self.agent.routers.get(f"{TENANT}.router.{router_id}")
            if state is not None and state.gateway is not None:
                return state.gateway.ip_address
            if time.monotonic() > end:
                raise TimeoutError(f"router {router_id}'s gateway not folded in {DEADLINE_S}s")
            await asyncio.sleep(0.002)

    async def once(self, fab: Fabric, internal: str, external: str,
                   index: int) -> tuple[float, float]:
        """One router from nothing to the first answer; (whole, until the last command's
        answer). Its resources are deleted again and the host left clean, off the clock."""
        await self.blocking(fab.forget_neighbours)
        made: dict[str, str] = {}
        try:
            start = time.monotonic()
            rid = made["router"] = (await self.cmd(f"{TENANT}.router.create",
                                                   {"name": f"edge{index}"}))["id"]
            await self.cmd(f"{TENANT}.router.add_interface", {"id": rid, "network_id": internal})
            await self.cmd(f"{TENANT}.router.set_gateway",
                           {"id": rid, "network_id": external, "enable_snat": True})
            made["firewall"] = (await self.cmd(f"{TENANT}.firewall.create", {
                "name": f"edge{index}-fw", "router_id": rid, "default_action": "deny",
                "rules": [{"action": "allow", "protocol": "tcp",
                           "destination_port": str(SERVER_PORT)}]}))["id"]
            made["nat"] = (await self.cmd(f"{TENANT}.nat.create", {
                "name": f"edge{index}-pf", "router_id": rid, "port_forwards": [
                    {"protocol": "tcp", "external_port": FORWARD_PORT,
                     "internal_address": SERVER, "internal_port": SERVER_PORT}]}))["id"]
            commanded = time.monotonic()
            address = await self.gateway_address(rid)
            served = await self.blocking(fab.wait_answer, address, DEADLINE_S)
            self.addresses.append(address)
            return served - start, commanded - start
        finally:
            await self.delete(made, internal, fab.stopping)

    async def delete(self, made: dict[str, str], internal: str,
                     stopping: threading.Event) -> None:
        """What `once` made, in the order the commands allow; then until the agent removed the
        namespace and its legs."""
        if "nat" in made:
            await self.cmd(f"{TENANT}.nat.delete", {"id": made["nat"]})
        if "firewall" in made:
            await self.cmd(f"{TENANT}.firewall.delete", {"id": made["firewall"]})
        if "router" in made:
            with contextlib.suppress(CommandRefused):  # the interface may not have been added
                await self.cmd(f"{TENANT}.router.remove_interface",
                               {"id": made["router"], "network_id": internal})
            await self.cmd(f"{TENANT}.router.delete", {"id": made["router"]})
        await self.blocking(wait_gone, stopping)

    async def close(self) -> None:
        """Stop the agent, the service and the server; also while being cancelled (Ctrl-C,
        SIGTERM), when the awaited parts may raise CancelledError: go on regardless."""
        if self.stop.is_set():
            return
        self.stop.set()
        try:
            if self.task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(self.task, 30)
            if self.nc is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await self.nc.close()
            if self.service is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await self.service.stop()
        finally:
            self.server.stop()  # blocking on purpose: never left running by a second cancel


class CommandRefused(RuntimeError):
    """A command answered ``ok: false``."""


@dataclass
class Figures:
    splice_s: list[float] = field(default_factory=list)
    commands_s: list[float] = field(default_factory=list)
    script_s: list[float] = field(default_factory=list)
    timeouts: list[int] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)


async def run_all(runs: int, state_dir: str) -> Figures:
    # SIGTERM as Ctrl-C in asyncio.run: the main task is cancelled, its cleanup runs
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    path = CommandPath(f"{state_dir}/path")
    fab: Fabric | None = None
    figures = Figures()
    try:
        await path.blocking(sweep, True)  # what a run killed before its cleanup left
        internal, external = await path.start()
        fab = Fabric(LAYOUT.bridge(internal), LAYOUT.bridge(external))
        await path.blocking(fab.build)
        await path.start_agent()
        for run in range(runs):
            # the order alternates, so that a drift of the machine weighs on both sides
            if run % 2:
                figures.script_s.append(await path.blocking(script_once, fab))
            whole, commands = await path.once(fab, internal, external, run)
            figures.splice_s.append(whole)
            figures.commands_s.append(commands)
            if not run % 2:
                figures.script_s.append(await path.blocking(script_once, fab))
        figures.timeouts, figures.addresses = fab.timeouts, path.addresses
        return figures
    finally:
        if fab is not None:
            fab.stopping.set()
        try:
            await path.close()
        finally:
            # blocking on purpose (a cancelled task may be cancelled again): the running item
            # ends within its deadlines, then nothing of the prefix is left
            path.pool.shutdown(wait=True, cancel_futures=True)
            if fab is not None:
                off_loop_now(fab.close)
            off_loop_now(sweep, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    logs.configure(level="WARNING")  # the services' per-command lines would drown the figures
    state_dir = tempfile.mkdtemp(prefix="sprt", dir="/tmp")
    try:
        figures = asyncio.run(run_all(args.runs, state_dir))
    except asyncio.CancelledError:  # SIGTERM (run_all cleaned up)
        print("stopped by SIGTERM; everything the bench made is removed", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    med_splice = statistics.median(figures.splice_s)
    med_commands = statistics.median(figures.commands_s)
    med_script = statistics.median(figures.script_s)

    def ms(xs: list[float]) -> str:
        return ", ".join(f"{x * 1000:.0f}" for x in xs)

    print(f"splice  router.create→first answer via the forward: median {med_splice * 1000:.1f} ms "
          f"(runs: {ms(figures.splice_s)})")
    print(f"splice  of which the five commands answered:       median {med_commands * 1000:.1f} ms "
          f"(runs: {ms(figures.commands_s)})")
    print(f"script  bash→first answer via the forward:         median {med_script * 1000:.1f} ms "
          f"(runs: {ms(figures.script_s)})")
    print(f"router external address (splice runs): {', '.join(sorted(set(figures.addresses)))}; "
          f"probe attempts cut off by the 0.25 s timeout: {sum(figures.timeouts)}")
    print(json.dumps({"splice_s": round(med_splice, 4),
                      "splice_commands_s": round(med_commands, 4),
                      "script_s": round(med_script, 4),
                      "ratio": round(med_splice / med_script, 3), "runs": args.runs}))


if __name__ == "__main__":
    main()
