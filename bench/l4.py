"""Connections per second, and the latency of one connection, through an ``nftables-l4`` VIP
and through a haproxy TCP VIP to the same three members, with the same client, in one run.

Both load balancers are made the way a tenant makes them: ``loadbalancer.create`` commands
(listener TCP :80, pool TCP ROUND_ROBIN over the same three members :8080, no health monitor)
through the command service, JetStream and an in-process agent offering ``haproxy`` and
``nftables-l4``; one service type per provider chooses the driver. The bench waits (with
deadlines) until the agent reports both ACTIVE and both VIPs answer from all three members.

The fabric is the bench's own: a bridge for the network, three member namespaces and one client
namespace, all named ``spb4-`` inside 10.79.0.0/24 (addresses only inside namespaces the bench
makes). A member is one Python process with a blocking accept loop that sends one short line
(its name) and closes: the cheapest server Python offers, and the same for both sides.
The client is ``--clients`` worker processes in the client namespace; each connection is
connect, read the line, read to EOF (the server closes first, so the client keeps no
TIME_WAIT), close.

Figures, per round, interleaved (direct, then the two load balancers in an order that alternates
from round to round), medians over ``--rounds``:

* ``direct_cps``, ``l4_cps``, ``haproxy_cps``: completed connections per second, summed over the
  client workers, each running a tight loop for ``--seconds``; ``direct`` goes straight to the
  members (each worker cycles through them, as round robin would), the baseline telling
  whether the client and members, not the load balancer, bound the figures; ``ratio`` is
  ``l4_cps / haproxy_cps`` (from the same round, then the median);
* ``*_p50_ms``, ``*_p99_ms``: one worker, serial, ``--latency-n`` connections, from before
  ``connect()`` until the line arrived (percentiles per round, then the median over rounds);
* ``*_cpu_busy``: the fraction of all the machine's CPUs busy during that side's cps window
  (/proc/stat: the machine is shared, so others' work counts too); near 1.0 means the figures
  compare CPU cost per connection of the whole path (client, members, kernel, haproxy) rather
  than a load balancer's capacity alone; ``haproxy_process_cores``: CPU used by the haproxy
  processes during the haproxy side's window, in cores (its config runs one thread: near 1.0
  means haproxy itself is the bound);
* ``*_errors``: failed connections (refused, reset, timed out after ``--timeout``, no line),
  summed over all rounds.

Everything is removed at the end — also on failure, Ctrl-C or SIGTERM (interrupt once: the
clean-up ignores further signals) — and the bench then checks that no namespace, link or nft
table named ``spb4-`` is left. A run killed with SIGKILL leaves them (its nats-server ends with
it): the next run sweeps them first. Human-readable figures first; the last line is JSON (medians; errors are totals):
``{"l4_cps": .., "haproxy_cps": .., "direct_cps": .., "ratio": .., "l4_p50_ms": .., ...}``.
Namespaces are machine-wide, so run it under the machine's dataplane lock:

    flock /tmp/splice-dataplane.lock .venv/bin/python bench/l4.py --rounds 3 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import nats
from pyroute2 import IPRoute, netns

from splice.agents import netns as agent_netns
from splice.agents.model import NetworkSpec
from splice.agents.runtime import Agent
from splice.logs import configure as configure_logs
from splice.natsserver import NatsServer
from splice.services.service import CommandService

PREFIX = "spb4-"
TENANT = "l4bench"
SUBNET = "10.79.0"
CIDR, GATEWAY = f"{SUBNET}.0/24", f"{SUBNET}.1"
CLIENT = ("c0", f"{SUBNET}.2")
MEMBERS = {f"m{i}": f"{SUBNET}.{21 + i}" for i in range(3)}
VIPS = {"nftables-l4": f"{SUBNET}.100", "haproxy": f"{SUBNET}.101"}
PORT = 8080
SIDES = ("direct", "l4", "haproxy")  # figure names; l4 is provider nftables-l4
NEAR_DIRECT = 0.85  # an LB figure this close to the direct one is bound by client or members
T = TypeVar("T")

# A member: accept, send its name and a newline, close. One process, no threads, no handler.
MEMBER_SERVER = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(4096)
line = sys.argv[1].encode() + b"\\n"
while True:
    c, _ = s.accept()
    try:
        c.send(line)
    except OSError:
        pass
    c.close()
"""

# A client worker in the client namespace: says "ready", then answers one JSON line per JSON
# command line on stdin (modes cps, lat, probe) until stdin closes.
CLIENT_WORKER = """\
import json, socket, sys, time
from collections import Counter

def one(addr, timeout):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        t0 = time.perf_counter()
        s.connect(addr)
        line = s.recv(64)
        took = time.perf_counter() - t0
        while s.recv(64):
            pass
    finally:
        s.close()
    return took, line

def attempt(addr, timeout, errors):
    try:
        took, line = one(addr, timeout)
    except OSError as e:
        errors[type(e).__name__] += 1
        return None, None
    if not line.endswith(b"\\n"):
        errors["no line"] += 1
        return None, None
    return took, line

def cps(targets, seconds, timeout, offset):
    ok, errors, answers, i, n = 0, Counter(), Counter(), offset, len(targets)
    start = now = time.perf_counter()
    end = start + seconds
    while now < end:
        took, line = attempt(targets[i % n], timeout, errors)
        i += 1
        if line is not None:
            ok += 1
            answers[line] += 1
        now = time.perf_counter()
    return {"ok": ok, "elapsed": now - start, "errors": errors,
            "answers": {k.decode().strip(): v for k, v in answers.items()}}

def lat(targets, count, timeout):
    errors, samples, answers = Counter(), [], Counter()
    for i in range(count):
        took, line = attempt(targets[i % len(targets)], timeout, errors)
        if line is not None:
            samples.append(took)
            answers[line] += 1
    return {"samples": samples, "errors": errors,
            "answers": {k.decode().strip(): v for k, v in answers.items()}}

def probe(target, want, deadline):
    seen, errors, end = set(), Counter(), time.monotonic() + deadline
    while time.monotonic() < end:
        took, line = attempt(target, 0.5, errors)
        if line is not None:
            seen.add(line.decode().strip())
            if seen >= set(want):
                return {"ok": True, "seen": sorted(seen)}
        else:
            time.sleep(0.01)
    return {"ok": False, "seen": sorted(seen), "errors": errors}

print("ready", flush=True)
for raw in sys.stdin:
    cmd = json.loads(raw)
    targets = [tuple(t) for t in cmd.get("targets", ())]
    if cmd["mode"] == "cps":
        out = cps(targets, cmd["seconds"], cmd["timeout"], cmd["offset"])
    elif cmd["mode"] == "lat":
        out = lat(targets, cmd["count"], cmd["timeout"])
    else:
        out = probe(targets[0], cmd["want"], cmd["deadline"])
    print(json.dumps(out), flush=True)
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


class Blocking:
    """Runs blocking work (netlink, processes) in threads, and remembers it: a cancelled await
    does not stop the thread, so the clean-up first waits for whatever is still running."""

    def __init__(self) -> None:
        self.running: set[asyncio.Future[Any]] = set()

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self.running.add(fut)
        fut.add_done_callback(self.running.discard)
        return await asyncio.shield(fut)

    async def settle(self, deadline_s: float) -> None:
        if self.running:
            await asyncio.wait(list(self.running), timeout=deadline_s)


class Fabric:
    """The network's bridge, the member namespaces (serving) and the client namespace."""

    def __init__(self, bridge: str) -> None:
        self.bridge = bridge
        self.members: dict[str, subprocess.Popen[bytes]] = {}

    def build(self) -> None:
        agent_netns.ensure_bridge(self.bridge)
        for key, address in [CLIENT, *MEMBERS.items()]:
            self._plug(key, address)
        for key in MEMBERS:
            self.members[key] = subprocess.Popen(
                ["ip", "netns", "exec", f"{PREFIX}{key}", sys.executable, "-c", MEMBER_SERVER,
                 key, str(PORT)], start_new_session=True)

    def _plug(self, key: str, address: str) -> None:
        """A namespace ``<prefix><key>`` with ``eth0`` on the bridge (host end ``<prefix><key>``)."""
        ns = host_if = f"{PREFIX}{key}"
        netns.create(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            ipr.link("set", index=ipr.link_lookup(ifname=host_if)[0],
                     master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        with IPRoute(netns=ns, flags=0) as inside:
            eth = inside.link_lookup(ifname="eth0")[0]
            inside.addr("add", index=eth, address=address, prefixlen=24)
            inside.link("set", index=eth, state="up")
            inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")

    def close(self) -> None:
        for proc in self.members.values():
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)


def leftovers() -> dict[str, list[str]]:
    """Everything on the host named with the bench's prefix."""
    links = agent_netns.observe_host(PREFIX)
    tables = [t for t in sh("nft", "list", "tables").split() if t.startswith(PREFIX)]
    return {k: v for k, v in {
        "namespaces": sorted(agent_netns.list_namespaces(PREFIX)),
        "links": sorted({*links.veth_master, *links.bridges}),
        "nft tables": tables}.items() if v}


def sweep() -> None:
    """Remove everything named ``spb4-``: processes in its namespaces, namespaces (their veths
    and nft tables go with them), links; root nft tables (none is expected)."""
    for ns in agent_netns.list_namespaces(PREFIX):
        agent_netns.kill_namespace_processes(ns)
        agent_netns.delete_namespace(ns)
    links = agent_netns.observe_host(PREFIX)
    for name in [*links.veth_master, *links.bridges]:
        agent_netns.delete_link(name)
    for family, table in _root_tables():
        subprocess.run(["nft", "delete", "table", family, table], check=False, capture_output=True)


def _root_tables() -> list[tuple[str, str]]:
    words = [line.split() for line in sh("nft", "list", "tables").splitlines()]
    return [(w[1], w[2]) for w in words if len(w) == 3 and w[2].startswith(PREFIX)]


def sweep_until_clean(deadline_s: float = 20.0) -> dict[str, list[str]]:
    """Sweep until nothing is left (work cut off by an interrupt may still be finishing)."""
    end = time.monotonic() + deadline_s
    while True:
        sweep()
        left = leftovers()
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.2)


class Clients:
    """``n`` worker processes in the client namespace, talking JSON lines over pipes."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, n: int) -> None:
        for _ in range(n):
            self.procs.append(await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", f"{PREFIX}{CLIENT[0]}", sys.executable, "-c",
                CLIENT_WORKER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                start_new_session=True))
        for proc in self.procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            if line.strip() != b"ready":
                raise RuntimeError(f"client worker did not start: {line!r}")

    async def ask(self, commands: list[dict[str, Any]], deadline_s: float) -> list[dict[str, Any]]:
        """Send command i to worker i (all at once); their answers, within the deadline."""
        for proc, command in zip(self.procs, commands, strict=False):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(command).encode() + b"\n")
        for proc in self.procs[:len(commands)]:
            assert proc.stdin is not None
            await proc.stdin.drain()

        async def answer(proc: asyncio.subprocess.Process) -> dict[str, Any]:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"client worker exited ({await proc.wait()})")
            return dict(json.loads(line))

        tasks = [asyncio.create_task(answer(p)) for p in self.procs[:len(commands)]]
        try:
            _, pending = await asyncio.wait(tasks, timeout=deadline_s)
            if pending:
                raise TimeoutError(f"{len(pending)} client worker(s) did not answer "
                                   f"within {deadline_s}s")
            return [t.result() for t in tasks]
        finally:
            for t in tasks:
                t.cancel()

    async def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)


class ControlPlane:
    """A nats-server, the command service and an agent offering haproxy and nftables-l4."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.server = NatsServer(store_dir=state_dir / "nats", die_with_parent=True)
        self.service: CommandService | None = None
        self.nc: Any = None
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.agent: Agent | None = None
        self.types: dict[str, str] = {}

    async def start(self) -> str:
        """Start the server and the service, make a service type per provider and the network;
        the network's id."""
        # from the loop's (main) thread, not a worker's: die_with_parent ends the server when
        # the thread that started it ends, so a SIGKILLed bench leaves no nats-server behind
        self.server.start()
        self.service = CommandService(self.server.url, env={"SPLICE_MONITORS": "off"})
        await self.service.start()
        self.nc = await nats.connect(self.server.url)
        for provider in VIPS:
            reply = await self.cmd("_admin.servicetype.create", {
                "name": f"bench-{provider}", "providers": {"loadbalancer": provider}})
            self.types[provider] = str(reply["id"])
        net = await self.cmd(f"{TENANT}.network.create",
                             {"name": "bench", "cidr": CIDR, "gateway": GATEWAY})
        return str(net["id"])

    def start_agent(self) -> None:
        """After the fabric is plugged in (the agent removes empty bridges of its prefix)."""
        self.agent = Agent(self.server.url, "bench-l4", self.state_dir / "agent",
                           providers=["haproxy", "nftables-l4"], prefix=PREFIX, resync_s=3600)
        self.task = asyncio.create_task(self.agent.run(self.stop))

    async def cmd(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"command_id": str(uuid.uuid4()), "actor": "bench", **body}
        msg = await self.nc.request(f"splice.cmd.{subject}", json.dumps(body).encode(), timeout=15)
        reply = json.loads(msg.data)
        if not reply["ok"]:
            raise RuntimeError(f"{subject}: {reply}")
        return dict(reply)

    async def create_lb(self, provider: str, net_id: str, deadline_s: float = 30) -> str:
        """One TCP load balancer over the three members; returns once the agent reports it
        ACTIVE."""
        body = {
            "name": f"bench-{provider}", "vip_network_id": net_id, "vip_address": VIPS[provider],
            "service_type_id": self.types[provider],
            "pools": [{"name": "p", "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN",
                       "members": [{"address": a, "protocol_port": PORT}
                                   for a in MEMBERS.values()]}],
            "listeners": [{"name": "l", "protocol": "TCP", "protocol_port": 80,
                           "default_pool": "p"}],
        }
        lb = str((await self.cmd(f"{TENANT}.loadbalancer.create", body))["id"])
        agg = f"{TENANT}.loadbalancer.{lb}"
        assert self.agent is not None
        end = time.monotonic() + deadline_s
        while True:
            state = self.agent.lbs.get(agg)
            status = state.provisioning_status if state is not None else None
            if status == "ACTIVE":
                return lb
            if status == "ERROR":
                raise RuntimeError(f"the agent reports the {provider} load balancer ERROR")
            if time.monotonic() > end:
                raise TimeoutError(f"{provider} load balancer not ACTIVE within {deadline_s}s "
                                   f"(last: {status})")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.task, 20)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.service is not None:
            with contextlib.suppress(Exception):
                await self.service.stop()
        await asyncio.to_thread(self.server.stop)


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)  # idle and iowait are not busy


def process_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far (those that still exist)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def haproxy_pids() -> list[int]:
    """The processes in the haproxy driver's namespace (master and worker)."""
    return [pid for ns in agent_netns.list_namespaces(f"{PREFIX}lb-")
            for pid in agent_netns.pids_in_namespace(ns)]


def targets(side: str) -> list[tuple[str, int]]:
    if side == "direct":
        return [(a, PORT) for a in MEMBERS.values()]
    return [(VIPS["nftables-l4" if side == "l4" else "haproxy"], 80)]


async def measure(clients: Clients, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every round: connections per second, then serial latency, for each side in turn."""
    rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    ha = await asyncio.to_thread(haproxy_pids)
    for r in range(args.rounds):
        order = ["direct", "l4", "haproxy"] if r % 2 == 0 else ["direct", "haproxy", "l4"]
        figures: dict[str, dict[str, Any]] = {s: {"errors": Counter()} for s in SIDES}
        for side in order:
            busy0, total0, ha0, t0 = *machine_cpu(), process_cpu_s(ha), time.monotonic()
            answers = await clients.ask(
                [{"mode": "cps", "targets": targets(side), "seconds": args.seconds,
                  "timeout": args.timeout, "offset": i} for i in range(args.clients)],
                args.seconds + args.timeout + 15)
            busy1, total1 = machine_cpu()
            fig = figures[side]
            fig["cps"] = sum(a["ok"] / a["elapsed"] for a in answers)
            fig["busy"] = (busy1 - busy0) / max(total1 - total0, 1)
            fig["haproxy_cores"] = (process_cpu_s(ha) - ha0) / (time.monotonic() - t0)
            fig["spread"] = sum((Counter(a["answers"]) for a in answers), Counter())
            for a in answers:
                fig["errors"].update(a["errors"])
            print(f"  round {r + 1} {side:8} {fig['cps']:8.0f} conn/s   machine CPU "
                  f"{fig['busy']:4.0%} busy{_haproxy_cores(side, fig['haproxy_cores'])}"
                  f"{'  errors: ' + _errors(fig['errors']) if fig['errors'] else ''}",
                  flush=True)
        for side in order:
            (answer,) = await clients.ask(
                [{"mode": "lat", "targets": targets(side), "count": args.latency_n,
                  "timeout": args.timeout}],
                args.latency_n * args.timeout + 15)
            fig = figures[side]
            fig["errors"].update(answer["errors"])
            samples = answer["samples"]
            fig["p50_ms"], fig["p99_ms"] = (percentile(samples, 50) * 1000,
                                            percentile(samples, 99) * 1000)
            print(f"  round {r + 1} {side:8} latency p50 {fig['p50_ms']:.3f} ms, "
                  f"p99 {fig['p99_ms']:.3f} ms ({len(samples)} connections)", flush=True)
        for side in SIDES:
            rounds[side].append(figures[side])
    return rounds


def percentile(samples: list[float], p: int) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def _json_number(x: float) -> float | None:
    """3 decimals; null (not NaN, which is not JSON) when there was nothing to measure."""
    return None if math.isnan(x) else round(x, 3)


def _haproxy_cores(side: str, cores: float) -> str:
    return f", haproxy itself {cores:.2f} core" if side == "haproxy" else ""


def _errors(errors: Counter[str]) -> str:
    return f"{sum(errors.values())} ({', '.join(f'{k} {v}' for k, v in errors.most_common())})"


class Interrupt:
    """SIGINT and SIGTERM cancel the run; once its clean-up has started they are ignored.

    Plain handlers, not asyncio's add_signal_handler, whose wake-up socket is inherited by the
    processes pyroute2 forks for work inside namespaces: pyroute2 stops them with SIGTERM, which
    then reached this loop and stopped the bench (seen here; `splice.root.on_stop_signals` says
    the same). In such a child the handler just ends it, as the default action would."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.cleaning = False

    def arm(self, task: asyncio.Task[Any]) -> None:
        loop, me = asyncio.get_running_loop(), os.getpid()

        def cancel() -> None:
            # Python 3.11 loses a cancel that lands as an inner wait_for completes (nats-py's
            # requests use one): cancel again until the clean-up has started.
            if not self.cleaning and not task.done():
                task.cancel()
                loop.call_later(0.1, cancel)

        def handler(signum: int, _frame: object) -> None:
            if os.getpid() != me:
                os._exit(0)
            if self.cleaning or self.signal is not None:
                return
            self.signal = signal.Signals(signum).name
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(cancel)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)


async def run(args: argparse.Namespace, state_dir: Path,
              interrupt: Interrupt) -> dict[str, list[dict[str, Any]]]:
    blocking = Blocking()
    plane = ControlPlane(state_dir)
    fabric: Fabric | None = None
    clients = Clients()
    task = asyncio.current_task()
    assert task is not None
    interrupt.arm(task)
    try:
        await blocking(sweep)  # what a killed earlier run may have left
        net_id = await plane.start()
        fabric = Fabric(NetworkSpec(net_id, CIDR, GATEWAY).bridge_name(PREFIX))
        await blocking(fabric.build)
        plane.start_agent()
        await clients.start(args.clients)
        for key, address in MEMBERS.items():
            await probe(clients, (address, PORT), [key], "member " + key)
        for provider in VIPS:
            started = time.monotonic()
            await plane.create_lb(provider, net_id)
            await probe(clients, (VIPS[provider], 80), list(MEMBERS), f"{provider} VIP")
            print(f"{provider:12} load balancer {VIPS[provider]}:80 ACTIVE and answering from "
                  f"every member after {time.monotonic() - started:.2f}s", flush=True)
        return await measure(clients, args)
    finally:
        interrupt.cleaning = True  # the clean-up runs to its end: signals are ignored now
        await clients.close()
        await plane.close()
        await blocking.settle(30)
        if fabric is not None:
            fabric.close()
        left = await asyncio.to_thread(sweep_until_clean)
        if left:
            print(f"LEFT BEHIND (remove by hand): {left}", file=sys.stderr, flush=True)


async def probe(clients: Clients, target: tuple[str, int], want: list[str], what: str,
                deadline_s: float = 20) -> None:
    (answer,) = await clients.ask(
        [{"mode": "probe", "targets": [target], "want": want, "deadline": deadline_s}],
        deadline_s + 10)
    if not answer["ok"]:
        raise TimeoutError(f"{what} did not answer from {want} within {deadline_s}s: {answer}")


def report(rounds: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    med: dict[str, float] = {}
    errors: dict[str, Counter[str]] = {}
    for side in SIDES:
        for figure in ("cps", "p50_ms", "p99_ms", "busy", "haproxy_cores"):
            med[f"{side}_{figure}"] = statistics.median(f[figure] for f in rounds[side])
        errors[side] = sum((f["errors"] for f in rounds[side]), Counter())
    ratios = [a["cps"] / b["cps"] if b["cps"] else float("nan")
              for a, b in zip(rounds["l4"], rounds["haproxy"], strict=True)]
    ratio = statistics.median(ratios)
    print()
    print(f"{args.clients} client processes, {args.rounds} rounds of {args.seconds}s per side, "
          f"{args.latency_n} serial connections per side per round for latency; medians:")
    for side, label in (("direct", "direct to members"), ("l4", "nftables-l4 VIP"),
                        ("haproxy", "haproxy TCP VIP")):
        spread: Counter[str] = sum((f["spread"] for f in rounds[side]), Counter())
        print(f"  {label:18} {med[f'{side}_cps']:8.0f} conn/s   latency p50 "
              f"{med[f'{side}_p50_ms']:.3f} ms, p99 {med[f'{side}_p99_ms']:.3f} ms   "
              f"(answers {dict(sorted(spread.items()))})")
        print(f"  {'':18} machine CPU {med[f'{side}_busy']:.0%} busy of {os.cpu_count()} "
              f"CPUs{_haproxy_cores(side, med[f'{side}_haproxy_cores'])}")
    print(f"  l4/haproxy connections per second: {ratio:.2f} "
          f"(per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    direct = med["direct_cps"]
    near = [s for s in ("l4", "haproxy") if med[f"{s}_cps"] >= NEAR_DIRECT * direct]
    if len(near) == 2:
        print(f"  NOTE: both load balancers reach {NEAR_DIRECT:.0%}+ of the direct figure: the "
              "client and the members bound these figures, not the load balancers, and the ratio "
              "understates the difference.")
    elif near:
        print(f"  NOTE: {near[0]} reaches {NEAR_DIRECT:.0%}+ of the direct figure: it is bound "
              "by the client and the members, so the ratio is a bound, not the full difference.")
    failed = {s: e for s, e in errors.items() if e}
    if failed:
        print("  ERRORS (failed connections, all rounds): "
              + "; ".join(f"{s} {_errors(e)}" for s, e in failed.items()))
    else:
        print("  no failed connection on any side")
    figures: dict[str, Any] = {
        "l4_cps": round(med["l4_cps"]), "haproxy_cps": round(med["haproxy_cps"]),
        "direct_cps": round(direct), "ratio": _json_number(ratio)}
    for side in SIDES:
        figures[f"{side}_p50_ms"] = _json_number(med[f"{side}_p50_ms"])
        figures[f"{side}_p99_ms"] = _json_number(med[f"{side}_p99_ms"])
    for side in SIDES:
        figures[f"{side}_cpu_busy"] = round(med[f"{side}_busy"], 3)
    figures["haproxy_process_cores"] = round(med["haproxy_haproxy_cores"], 3)
    for side in SIDES:
        figures[f"{side}_errors"] = sum(errors[side].values())
    figures.update(rounds=args.rounds, seconds=args.seconds, clients=args.clients,
                   cpus=os.cpu_count())
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per cps measurement")
    parser.add_argument("--clients", type=int, default=4, help="client worker processes")
    parser.add_argument("--latency-n", type=int, default=400,
                        help="serial connections per side per round for p50/p99")
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="seconds before one connection counts as failed")
    args = parser.parse_args()
    if min(args.rounds, args.clients, args.latency_n) < 1 or min(args.seconds, args.timeout) <= 0:
        parser.error("--rounds, --clients, --latency-n, --seconds and --timeout must be positive")
    if os.geteuid() != 0:
        sys.exit("bench/l4.py needs root (namespaces, veths, nftables)")
    configure_logs("WARNING")
    state_dir = Path(tempfile.mkdtemp(prefix="spb4", dir="/tmp"))
    interrupt = Interrupt()
    try:
        rounds = asyncio.run(run(args, state_dir, interrupt))
    except (asyncio.CancelledError, KeyboardInterrupt):
        if interrupt.signal is None:
            raise
        sys.exit(f"stopped by {interrupt.signal}; cleaned up")
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    report(rounds, args)


if __name__ == "__main__":
    main()
