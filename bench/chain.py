"""Time from ``chain.create`` to the first steered TCP connection through a three-hop chain,
against a bash script that builds the same by hand; and bulk TCP throughput through the chain
against the direct path.

The chain: an ``l3`` firewall (default allow), a ``bump_in_the_wire`` firewall (default deny,
allow TCP client/32 → server/32, replies as established), a ``tap``; classifier TCP to the
server's /32, ``symmetric``. The router (networks a and b), the client (a) and server (b)
namespaces, the firewalls, the tap, its two ports (bound to the agent's host) and the monitor
namespace they are plugged into (``tap<11 chars of the port id>`` veths) exist before any clock
starts, and the direct path works. Evidence that a connection crossed the chain: its SYN,
copied by the tap (the last hop), captured on the monitor port (raw socket, monitor's eth0).

``splice_s``: from sending ``chain.create`` (command service, JetStream, the agent folding and
the chain driver converging) until a new connection client → server:80 succeeds and its SYN
was captured (the client tries every attempt 0.25 s, then waits up to 10 ms for the copy).
``script_s``: the same from the start of a bash script (`script_for`) doing what the chain
driver does (`host.ensure_hop`, `set_redirect`, `plan`'s rules, routes and neighbours): the
hop namespaces and veths, the /30s (the bump's /32s and ``br0``, learning off), the sysctls,
the firewall tables and the classifier table (both rendered with the project's functions off
the clock, loaded by the script with ``nft -j -f``), the tc mirred copy and redirect, the
``ip rule``s. Its names carry ``spcb-s`` and its marks and tables sit above the agent's ranges
(an agent resync leaves them alone). Each run's chain is deleted off the clock and the next
waits until its hop namespaces and veths are gone; runs interleave, the order alternating;
medians over ``--runs``.

``chain_mbps``/``direct_mbps``: a Python sender in the client and receiver in the server
(``ip netns exec``) for 2 s, MB/s at the receiver (first byte to EOF), in every
run off the clock: through the Splice run's chain once it steered (the capture paused; the
monitor's received bytes must rise by half the bytes moved at least), then through the same
router once the chain is deleted (they must not rise); medians. Everything is named ``spcb-`` in
10.79.0.0/16 and removed at the end, also on failure or SIGINT/SIGTERM. The last line is JSON:
``{"splice_s", "script_s", "create_ratio", "chain_mbps", "direct_mbps", "throughput_ratio",
"runs"}`` (``create_ratio`` = splice_s / script_s, ``throughput_ratio`` = chain / direct).

    flock /tmp/splice-dataplane.lock .venv/bin/python bench/chain.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import nats
from pyroute2 import netns

from splice import logs
from splice.agents import netns as agent_netns
from splice.agents.drivers.chain.model import REVERSE, ChainLayout, HopSpec, chain_specs, owns_mark
from splice.agents.drivers.chain.plan import hop_sysctls
from splice.agents.drivers.chain.render import render_chains
from splice.agents.drivers.nftables.render import chain_table
from splice.agents.drivers.router.model import RouterLayout
from splice.agents.drivers.tap.model import port_interface
from splice.agents.runtime import Agent
from splice.events.advanced import Classifier, Hop
from splice.events.chain_fold import ChainState
from splice.events.router_fold import ROUTER_PROVIDER
from splice.natsserver import NatsServer
from splice.services.service import CommandService

PREFIX, SCRIPT_PREFIX = "spcb-", "spcb-s"
ROUTERS, CHAINS, SCRIPT = RouterLayout(PREFIX), ChainLayout(PREFIX), ChainLayout(SCRIPT_PREFIX)
T, HOST = "bench", "bench-chain"
NETS = {"a": ("10.79.1.0/24", "10.79.1.1"), "b": ("10.79.2.0/24", "10.79.2.1")}
CLIENT, SERVER, PORT, BULK_PORT = "10.79.1.2", "10.79.2.2", 80, 5201
CLIENT_NS, SERVER_NS, MON_NS = f"{PREFIX}b-client", f"{PREFIX}b-server", f"{PREFIX}b-mon"
SHIFT = 2 * REVERSE  # the script's marks and tables: above the agent's ranges
SCRIPT_CHAIN = "00000000-0000-4000-8000-00000000cb01"
DEADLINE_S, BULK_BYTES, BULK_S = 20.0, 20_000_000_000, 2.0  # bulk: 2 s (or 20 GB)

RECV = """import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); buf = bytearray(1 << 20); n = 0; first = None
while k := c.recv_into(buf):
    first = first or time.monotonic(); n += k
print(n, time.monotonic() - (first or time.monotonic()), flush=True)"""
SEND = """import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
buf, end, left = b"\\0" * (1 << 20), time.monotonic() + float(sys.argv[3]), int(sys.argv[4])
while left > 0 and time.monotonic() < end:
    c.sendall(buf); left -= len(buf)
c.close()"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def in_ns(name: str) -> ThreadPoolExecutor:
    """One worker thread living in namespace `name` (setns: sockets it opens are there)."""
    return ThreadPoolExecutor(max_workers=1, initializer=netns.setns,
                              initargs=(name, 0, None, False))


class Capture:
    """SYNs client → server arriving on the monitor port (the tap's copies), by source port."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.syns: set[int] = set()
        self.running = threading.Event()

    def run(self, ready: threading.Event) -> None:
        client, server = socket.inet_aton(CLIENT), socket.inet_aton(SERVER)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as s:
            s.bind(("eth0", 0))
            s.settimeout(0.1)
            ready.set()
            while self.running.is_set():
                try:
                    frame = s.recv(128)
                except TimeoutError:
                    continue
                ip = frame[14:]
                if frame[12:14] != b"\x08\x00" or ip[9] != 6 or ip[12:20] != client + server:
                    continue
                tcp = ip[(ip[0] & 0xF) * 4:]
                if tcp[13] & 0x12 == 0x02:  # SYN, not SYN-ACK
                    with self.cond:
                        self.syns.add(int.from_bytes(tcp[0:2], "big"))
                        self.cond.notify_all()

    def seen(self, sport: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: sport in self.syns, timeout)


def steered(capture: Capture, stopping: threading.Event) -> float:
    """In the client: connect to the server until one succeeds and its SYN was copied by the
    tap; the monotonic time of that."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end and not stopping.is_set():
        try:
            with socket.create_connection((SERVER, PORT), timeout=0.25) as s:
                sport = s.getsockname()[1]
        except TimeoutError:
            continue
        except OSError:  # refused or unreachable
            time.sleep(0.002)
            continue
        if capture.seen(sport, 0.01):
            return time.monotonic()
    raise TimeoutError(f"no steered connection within {DEADLINE_S}s")


def serve(stopping: threading.Event) -> None:
    """In the server: accept and close, until the bench stops."""
    with socket.create_server((SERVER, PORT), backlog=128) as listener:
        listener.settimeout(0.1)
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                listener.accept()[0].close()


def connects() -> bool:
    with contextlib.suppress(OSError), socket.create_connection((SERVER, PORT), timeout=0.25):
        return True
    return False


def plug(ns: str, host_if: str, bridge: str, address: str, gateway: str) -> None:
    agent_netns.ensure_namespace(ns)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", host_if, "master", bridge, "up")
    sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", gateway)


def plug_monitor(links: list[str]) -> None:
    """The tap's tapped port (eth1) and monitor port (eth0), veths into the monitor namespace."""
    agent_netns.ensure_namespace(MON_NS)
    for dev, peer in zip(links, ("eth1", "eth0"), strict=True):
        sh("ip", "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", MON_NS)
        sh("ip", "link", "set", dev, "up")
    sh("ip", "-n", MON_NS, "link", "set", "eth0", "up")


def monitor_rx() -> int:
    link = json.loads(sh("ip", "-n", MON_NS, "-j", "-s", "link", "show", "eth0"))[0]
    return int(link["stats64"]["rx"]["bytes"])


def bulk() -> tuple[int, float]:
    """Bytes moved client → server and MB/s, measured at the receiver."""
    recv = subprocess.Popen(["ip", "netns", "exec", SERVER_NS, sys.executable, "-c", RECV,
                             str(BULK_PORT)], stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "ready":
            raise RuntimeError("the receiver did not start")
        sh("ip", "netns", "exec", CLIENT_NS, sys.executable, "-c", SEND, SERVER,
           str(BULK_PORT), str(BULK_S), str(BULK_BYTES))
        n, secs = recv.stdout.readline().split()
        return int(n), int(n) / float(secs) / 1e6
    finally:
        recv.kill()
        recv.wait()


def _shift(obj: Any) -> Any:
    """The script's marks: the agent's, moved above its range."""
    if isinstance(obj, dict):
        return {k: _shift(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shift(v) for v in obj]
    return obj + SHIFT if type(obj) is int and owns_mark(obj) else obj


def script_for(router_ns: str, rid: str, state: ChainState, firewalls: dict[str, Any],
               monitors: dict[str, str], files: Path) -> tuple[str, list[HopSpec], str]:
    """The bash doing what the chain driver does; (text, hops, classifier table). Its nft
    JSON (the firewalls' tables and the classifier) is rendered here and written to `files`,
    the script loads it."""
    specs, refused = chain_specs({SCRIPT_CHAIN: state}, firewalls, SCRIPT_PREFIX,
                                 monitors=monitors)
    if refused:
        raise RuntimeError(f"the script's chain: {refused}")
    spec = specs[SCRIPT_CHAIN]
    table = chain_table(SCRIPT_PREFIX, rid)
    (files / "classifier.json").write_text(json.dumps(_shift(
        render_chains(table, [spec]).batch())))
    R = router_ns
    lines = ["#!/bin/bash", "set -euo pipefail"]
    hops = [replace(h, mark=h.mark + SHIFT, table=h.table + SHIFT) for h in spec.hops]
    for hop in hops:
        H = hop.namespace
        lines += [f"ip netns add {H}", f"ip -n {H} link set lo up"]
        legs = [(hop.router_if, "hop0", hop.router_mac)]
        if hop.bridged:
            legs.append((hop.out_if, "hop1", hop.out_mac))
        for rif, hif, mac in legs:
            lines += [f"ip -n {R} link add {rif} {f'address {mac} ' if mac else ''}type veth "
                      f"peer name {hif} netns {H}",
                      f"ip netns exec {R} sysctl -qw net.ipv4.conf.{rif}.rp_filter=0 "
                      f"net.ipv4.conf.{rif}.send_redirects=0 net.ipv6.conf.{rif}.disable_ipv6=1",
                      f"ip netns exec {H} sysctl -qw net.ipv6.conf.{hif}.disable_ipv6=1"]
        lines.append(f"ip netns exec {H} sysctl -qw " + " ".join(
            f"{p.replace('/', '.')}={v}" for p, v in hop_sysctls(hop)))
        if hop.bridged:
            lines += [f"ip -n {H} link add br0 type bridge stp_state 0",
                      f"ip netns exec {H} sysctl -qw net.ipv6.conf.br0.disable_ipv6=1"]
            for hif in ("hop0", "hop1"):
                lines += [f"ip -n {H} link set {hif} master br0",
                          f"ip -n {H} link set {hif} type bridge_slave learning off",
                          f"ip -n {H} link set {hif} up"]
            lines += [f"ip -n {H} link set br0 up", f"ip -n {H} route replace default dev br0"]
        addrs = [(R, hop.router_if, hop.router_address), (R, hop.out_if, hop.out_address)
                 if hop.bridged else (H, "hop0", hop.hop_address)]
        for ns, dev, addr in addrs:
            lines += [f"ip -n {ns} addr add {addr} dev {dev}", f"ip -n {ns} link set {dev} up"]
        if not hop.bridged:
            lines.append(f"ip -n {H} route replace default via {hop.router_address.split('/')[0]} dev hop0")
        if hop.insertion == "tap":
            m = hop.mirror_if
            lines += [f"ip link add {m} type veth peer name mon0 netns {H}",
                      f"sysctl -qw net.ipv6.conf.{m}.disable_ipv6=1",
                      f"ip netns exec {H} sysctl -qw net.ipv6.conf.mon0.disable_ipv6=1",
                      f"ip link set {m} up", f"ip -n {H} link set mon0 up",
                      f"tc -n {H} qdisc replace dev hop0 clsact",
                      f"tc -n {H} filter add dev hop0 ingress pref 10 protocol all u32 match "
                      "u32 0 0 action mirred egress mirror dev mon0",
                      f"tc qdisc replace dev {m} clsact",
                      f"tc filter add dev {m} ingress pref 10 protocol all u32 match u32 0 0 "
                      f"action mirred egress redirect dev {hop.monitor_if}"]
        if hop.firewall is not None:
            path = files / f"fw{hop.index}.json"
            path.write_text(json.dumps(hop.firewall.batch()))
            lines.append(f"ip netns exec {H} nft -j -f {path}")
        for dev, addr, mac in sorted(hop.neighbours):
            lines.append(f"ip -n {R} neigh replace {addr} lladdr {mac} dev {dev} nud permanent")
        for t, (via, dev) in sorted(hop.routes.items()):
            lines.append(f"ip -n {R} route replace default via {via} dev {dev} onlink table {t}")
        for mark, t in sorted({(hop.mark, hop.table), (hop.reverse_mark, hop.reverse_table)}):
            lines.append(f"ip -n {R} rule add pref 20000 fwmark {hex(mark)} lookup {t}")
    lines.append(f"ip netns exec {R} nft -j -f {files / 'classifier.json'}")
    return "\n".join(lines) + "\n", hops, table


def unscript(router_ns: str, hops: list[HopSpec], table: str) -> None:
    """What the script made, off the clock (its veths go with the hop namespaces)."""
    argvs = [["ip", "netns", "exec", router_ns, "nft", "delete", "table", "ip", table]]
    for hop in hops:
        for mark, t in {(hop.mark, hop.table), (hop.reverse_mark, hop.reverse_table)}:
            argvs += [["ip", "-n", router_ns, "rule", "del", "pref", "20000", "fwmark", hex(mark),
                       "lookup", str(t)], ["ip", "-n", router_ns, "route", "flush", "table", str(t)]]
    for argv in argvs:
        subprocess.run(argv, check=False, capture_output=True)
    for hop in hops:
        agent_netns.delete_namespace(hop.namespace)


def wait_gone(router_ns: str, stopping: threading.Event) -> None:
    """Until no hop namespace, mirror veth or router-side hop veth (the agent's or the
    script's) is left: a deleted namespace's veths die asynchronously."""
    end = time.monotonic() + DEADLINE_S
    while not stopping.is_set():
        left = sorted(agent_netns.list_namespaces(CHAINS.namespace_prefix)
                      | agent_netns.list_namespaces(SCRIPT.namespace_prefix))
        for ns, prefixes in ((None, (CHAINS.mirror_prefix, SCRIPT.mirror_prefix)),
                             (router_ns, (f"{PREFIX}c", f"{SCRIPT_PREFIX}c"))):
            links = json.loads(sh("ip", *(["-n", ns] if ns else []), "-j", "link", "show"))
            left += [x["ifname"] for x in links if x["ifname"].startswith(prefixes)]
        if not left:
            return
        if time.monotonic() > end:
            raise TimeoutError(f"left after {DEADLINE_S}s: {left}")
        time.sleep(0.02)


def sweep(extra_links: tuple[str, ...] = ()) -> None:
    """Every namespace and root link of the prefix (and the monitor's tap links)."""
    for ns in agent_netns.list_namespaces(PREFIX):
        agent_netns.kill_namespace_processes(ns)
        agent_netns.delete_namespace(ns)
    for link in json.loads(sh("ip", "-j", "link", "show")):
        if link["ifname"].startswith(PREFIX) or link["ifname"] in extra_links:
            with contextlib.suppress(Exception):
                agent_netns.delete_link(link["ifname"])


class Bench:
    def __init__(self, state_dir: str) -> None:
        self.state_dir, self.server = state_dir, NatsServer(store_dir=Path(state_dir) / "nats")
        self.stop, self.stopping = asyncio.Event(), threading.Event()
        self.capture = Capture()
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.workers: dict[str, ThreadPoolExecutor] = {}
        self.task: asyncio.Task[None] | None = None
        self.service: CommandService | None = None
        self.nc: Any = None
        self.monitor_links: tuple[str, ...] = ()

    async def blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def cmd(self, subject: str, body: dict[str, Any], scope: str = T) -> dict[str, Any]:
        body = {"command_id": str(uuid.uuid4()), "actor": "bench", **body}
        msg = await self.nc.request(f"splice.cmd.{scope}.{subject}", json.dumps(body).encode(),
                                    timeout=15)
        reply = json.loads(msg.data)
        if not reply["ok"]:
            raise RuntimeError(f"{subject}: {reply}")
        return dict(reply)

    async def until(self, check: Any, what: str) -> None:
        end = time.monotonic() + DEADLINE_S
        while not await self.blocking(check):
            if time.monotonic() > end:
                raise TimeoutError(what)
            await asyncio.sleep(0.02)

    async def setup(self) -> None:
        """Everything but the chain, off the clock."""
        self.server.start()
        self.service = CommandService(self.server.url, env={"SPLICE_MONITORS": "off"})
        await self.service.start()
        self.nc = await nats.connect(self.server.url)
        await self.cmd("servicetype.create", {"name": "bench-chain", "default": True, "providers": {
            "firewall": "nftables", "nat": "nftables", "tap": "tc-mirror"}}, "_admin")
        nets = {k: (await self.cmd("network.create", {"name": k, "cidr": c, "gateway": g}))["id"]
                for k, (c, g) in NETS.items()}
        self.agent = Agent(self.server.url, HOST, f"{self.state_dir}/agent", prefix=PREFIX,
                           providers=[ROUTER_PROVIDER, "tc-mirror"], resync_s=60)
        self.task = asyncio.create_task(self.agent.run(self.stop))
        await asyncio.wait_for(self.agent.ready.wait(), DEADLINE_S)
        self.rid = (await self.cmd("router.create", {"name": "edge"}))["id"]
        await self.until(lambda: (s := self.agent.routers.get(f"{T}.router.{self.rid}"))
                         is not None and s.host == HOST, "the router placed here")
        for k in NETS:
            await self.cmd("router.add_interface", {"id": self.rid, "network_id": nets[k]})
        self.router_ns = ROUTERS.namespace(self.rid)
        for k, ns, addr, veth in (("a", CLIENT_NS, CLIENT, f"{PREFIX}tcli"),
                                  ("b", SERVER_NS, SERVER, f"{PREFIX}tsrv")):
            await self.blocking(agent_netns.ensure_bridge, ROUTERS.bridge(nets[k]))
            await self.blocking(plug, ns, veth, ROUTERS.bridge(nets[k]), addr, NETS[k][1])
        fw = [(await self.cmd("firewall.create", {
            "name": name, "network_id": nets["a"], "default_action": default, "rules": rules}))["id"]
            for name, default, rules in (("l3", "allow", []), ("bump", "deny", [{
                "action": "allow", "protocol": "tcp", "source_cidr": f"{CLIENT}/32",
                "destination_cidr": f"{SERVER}/32"}]))]
        ports = [(await self.cmd("port.create", {"network_id": nets["a"], "host": HOST,
                                                 "name": n}))["id"] for n in ("tapped", "monitor")]
        self.monitor_links = tuple(port_interface(p) for p in ports)
        await self.blocking(plug_monitor, list(self.monitor_links))
        tap = (await self.cmd("tap.create", {"name": "copy", "port_id": ports[0],
                                             "monitor_port_id": ports[1]}))["id"]
        self.hops = [Hop(service_id=fw[0], kind="firewall", insertion="l3"),
                     Hop(service_id=fw[1], kind="firewall", insertion="bump_in_the_wire"),
                     Hop(service_id=tap, kind="tap", insertion="tap")]
        self.monitors = {tap: port_interface(ports[1])}
        for name in (CLIENT_NS, SERVER_NS, MON_NS):
            self.workers[name] = in_ns(name)
        self.workers[SERVER_NS].submit(serve, self.stopping)
        await self.blocking(self.start_capture)
        await self.until(lambda: self.agent.firewalls.get(f"{T}.firewall.{fw[1]}") is not None
                         and f"{T}.tap.{tap}" in self.agent.taps, "the firewalls and the tap folded")
        self.firewalls = {f: self.agent.firewalls[f"{T}.firewall.{f}"] for f in fw}
        # the router converged: the clock must not run while its namespace and legs are made
        await self.until(lambda: self.workers[CLIENT_NS].submit(connects).result(),
                         "client → server through the router, direct")

    def wait_steered(self) -> float:
        with self.capture.cond:
            self.capture.syns.clear()
        return self.workers[CLIENT_NS].submit(steered, self.capture, self.stopping).result()

    async def splice_once(self, index: int,
                          then: Callable[[], Awaitable[None]] | None = None) -> float:
        """One chain from ``chain.create`` to a steered connection; `then` runs off the clock
        while it is still there; it is deleted and gone before this returns."""
        chain = None
        try:
            start = time.monotonic()
            chain = (await self.cmd("chain.create", {
                "name": f"c{index}", "router_id": self.rid, "priority": 1, "symmetric": True,
                "classifier": {"protocol": "tcp", "destination_cidr": f"{SERVER}/32"},
                "hops": [msgspec.to_builtins(h) for h in self.hops]}))["id"]
            took = await self.blocking(self.wait_steered) - start
            if then is not None:
                await then()
            return float(took)
        finally:
            if chain is not None:
                await self.cmd("chain.delete", {"id": chain})
            await self.blocking(wait_gone, self.router_ns, self.stopping)

    def script_once(self) -> float:
        state = ChainState(name="script", router_id=self.rid, symmetric=True, priority=1,
                           classifier=Classifier(protocol="tcp", destination_cidr=f"{SERVER}/32"),
                           hops=list(self.hops))
        with tempfile.TemporaryDirectory(prefix="spcb") as d:
            text, hops, table = script_for(self.router_ns, self.rid, state, self.firewalls,
                                           self.monitors, Path(d))
            (Path(d) / "chain.sh").write_text(text)
            try:
                start = time.monotonic()
                done = subprocess.run(["bash", str(Path(d) / "chain.sh")], capture_output=True,
                                      text=True, check=False)
                if done.returncode:
                    raise RuntimeError(f"the script failed: {done.stderr.strip()}")
                return self.wait_steered() - start
            finally:
                unscript(self.router_ns, hops, table)
                wait_gone(self.router_ns, self.stopping)

    def start_capture(self) -> None:
        self.capture.running.set()
        ready = threading.Event()
        self.capturing = self.workers[MON_NS].submit(self.capture.run, ready)
        if not ready.wait(5):
            raise TimeoutError("the capture did not start")

    def bulk_chain(self) -> float:
        """Through the chain: the capture stops meanwhile (the copies still reach the
        monitor's eth0 and are counted there: at least half the bytes moved)."""
        self.capture.running.clear()
        self.capturing.result(5)
        before = monitor_rx()
        n, mbps = bulk()
        copied = monitor_rx() - before
        if copied < n // 2:
            raise RuntimeError(f"the tap copied {copied} of {n} bytes: not through the chain")
        self.start_capture()
        return mbps

    def bulk_direct(self) -> float:
        before = monitor_rx()
        n, mbps = bulk()
        if monitor_rx() - before > n // 100:
            raise RuntimeError("the direct path was copied: a chain is left")
        return mbps

    async def close(self) -> None:
        self.stopping.set()
        self.capture.running.clear()
        self.stop.set()
        try:  # also while being cancelled (Ctrl-C, SIGTERM): go on regardless
            for part in (self.task and asyncio.wait_for(self.task, 30),
                         self.nc and self.nc.close(), self.service and self.service.stop()):
                if part is not None:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await part
        finally:
            self.server.stop()
            self.pool.shutdown(wait=True, cancel_futures=True)
            for w in self.workers.values():
                w.shutdown(wait=True, cancel_futures=True)
            with ThreadPoolExecutor(max_workers=1) as once:  # never on the loop's thread
                once.submit(sweep, self.monitor_links).result()


async def run_all(runs: int, state_dir: str) -> dict[str, list[float]]:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    bench = Bench(state_dir)
    out: dict[str, list[float]] = {"splice": [], "script": [], "chain": [], "direct": []}

    async def chain_bulk() -> None:
        out["chain"].append(await bench.blocking(bench.bulk_chain))

    try:
        await bench.blocking(sweep)  # what a killed run left
        await bench.setup()
        await bench.blocking(wait_gone, bench.router_ns, bench.stopping)
        for run in range(runs):  # the order alternates
            if run % 2:
                out["script"].append(await bench.blocking(bench.script_once))
            out["splice"].append(await bench.splice_once(run, chain_bulk))
            out["direct"].append(await bench.blocking(bench.bulk_direct))
            if not run % 2:
                out["script"].append(await bench.blocking(bench.script_once))
        return out
    finally:
        await bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    logs.configure(level="WARNING")
    state_dir = tempfile.mkdtemp(prefix="spcb", dir="/tmp")
    try:
        out = asyncio.run(run_all(args.runs, state_dir))
    except (asyncio.CancelledError, KeyboardInterrupt) as e:  # run_all cleaned up
        print("stopped; everything the bench made is removed", file=sys.stderr)
        raise SystemExit(130 if isinstance(e, KeyboardInterrupt) else 128 + signal.SIGTERM) from None
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in out.items()}

    def runs(key: str, scale: float = 1000) -> str:
        return ", ".join(f"{x * scale:.0f}" for x in out[key])

    print(f"splice  chain.create→steered connection seen by the tap: median "
          f"{med['splice'] * 1000:.1f} ms (runs: {runs('splice')})")
    print(f"script  bash→steered connection seen by the tap:         median "
          f"{med['script'] * 1000:.1f} ms (runs: {runs('script')})")
    print(f"bulk TCP client→server: through the chain median {med['chain']:.0f} MB/s "
          f"(runs: {runs('chain', 1)}), direct {med['direct']:.0f} MB/s (runs: {runs('direct', 1)})")
    print(json.dumps({"splice_s": round(med["splice"], 4), "script_s": round(med["script"], 4),
                      "create_ratio": round(med["splice"] / med["script"], 3),
                      "chain_mbps": round(med["chain"], 1), "direct_mbps": round(med["direct"], 1),
                      "throughput_ratio": round(med["chain"] / med["direct"], 3),
                      "runs": args.runs}))

if __name__ == "__main__":
    main()
