"""Configuration changes under load: 100 member changes on one load balancer while a client keeps
requests flowing through its VIP. Goal: no failed request, and a short command-to-served delay.

One run, on the fabric of ``time_to_serve.py`` (``splb-`` names, 10.77.0.0/16, only in namespaces
and on a bridge this benchmark makes; everything is removed at the end, also on failure):

1. a nats-server, the command service and an agent (haproxy provider) in this process; a member
   namespace serving HTTP on ports 8080-8089, a client namespace;
2. ``loadbalancer.create`` with one HTTP listener and a pool of two members, until it serves;
3. ``--clients`` client threads in the client namespace send GET / through the VIP, each on a new
   TCP connection (what a reload's socket hand-over could drop), paced to ``--rate`` requests a
   second in all, until the changes are done — bounded by ``--max-requests`` and ``--max-s``;
4. ``--changes`` commands, one after the other, cycling member add (a free port), member weight
   update and member delete (never the last member). Each is timed from the command sent to the
   change observable in the running haproxy (``show servers state`` over its stats socket shows
   exactly the expected servers and weights: the agent wrote, checked and reloaded);
5. the baseline, in the same run and under the same load: ``--baseline`` hitless reloads of the
   same haproxy by hand (save the server state, SIGUSR2 the master, wait for the new worker —
   what a careful script does), timed the same way.

A failed request is any that did not get a 200 (refused, reset, timed out, 5xx), counted by kind
and by phase. Human-readable figures first; the last line is JSON with ``failed_requests``,
``reload_p50_ms``, ``reload_p99_ms``, the baseline's, and ``ratio`` (p50 of the changes through
Splice / p50 of the bare reloads).

    .venv/bin/python bench/reloads.py --changes 100
    .venv/bin/python bench/reloads.py --changes 6 --baseline 3   # CI size
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from time_to_serve import MEMBER, NET, BenchFabric, CommandPath, vip

from splice.agents.drivers.haproxy import process as haproxy
from splice.agents.drivers.haproxy.render import LbPaths
from splice.agents.model import NetworkSpec

PORTS = range(8080, 8090)  # the member namespace serves all of them
EXTRA_MEMBERS = (
    "import http.server as h, sys, threading\n"
    "class H(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = str(self.server.server_address[1]).encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "servers = [h.ThreadingHTTPServer(('0.0.0.0', int(p)), H) for p in sys.argv[1:]]\n"
    "for s in servers[1:]: threading.Thread(target=s.serve_forever, daemon=True).start()\n"
    "servers[0].serve_forever()\n"
)
OBSERVE_DEADLINE_S = 30.0


# -- the client load ------------------------------------------------------------------------


@dataclass
class Load:
    """Counts of the client threads' requests, by phase ("changes", "baseline", ...)."""

    phase: str = "setup"
    ok: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def count(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok[self.phase] += 1
            else:
                self.failed[self.phase] += 1
                self.kinds[error] += 1

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + sum(self.failed.values())


def one_request(host: str) -> str | None:
    """GET / on a new connection; None when answered 200, else what went wrong."""
    conn = http.client.HTTPConnection(host, 80, timeout=3)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return None if resp.status == 200 else f"HTTP {resp.status}"
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        conn.close()


def client_loop(load: Load, host: str, interval_s: float, max_requests: int, end: float) -> None:
    """Requests paced every `interval_s` until told to stop or a bound is reached."""
    due = time.monotonic()
    while not load.stop.is_set() and load.total < max_requests and time.monotonic() < end:
        load.count(one_request(host))
        due += interval_s
        pause = due - time.monotonic()
        if pause > 0:
            load.stop.wait(pause)
        else:
            due = time.monotonic()  # behind: no burst to catch up


# -- observing haproxy ----------------------------------------------------------------------


def servers_state(paths: LbPaths) -> set[tuple[str, int, int]] | None:
    """(address, port, weight) of every server haproxy runs now, or None when it is silent."""
    try:
        text = haproxy.command(paths.stats_socket, "show servers state")
    except OSError:
        return None
    lines = text.splitlines()
    header = next((ln for ln in lines if ln.startswith("# ")), None)
    if header is None:
        return None
    names = header[2:].split()
    out = set()
    for ln in lines:
        if not ln or ln.startswith("#") or ln == "1":
            continue
        row = dict(zip(names, ln.split(), strict=False))
        if "srv_addr" in row:
            out.add((row["srv_addr"], int(row["srv_port"]), int(row["srv_uweight"])))
    return out


def wait_for_state(paths: LbPaths, want: set[tuple[str, int, int]], start: float) -> float:
    """Poll until haproxy runs exactly `want`; the seconds since `start`."""
    end = time.monotonic() + OBSERVE_DEADLINE_S
    while time.monotonic() < end:
        if servers_state(paths) == want:
            return time.monotonic() - start
        time.sleep(0.002)
    raise TimeoutError(f"haproxy did not show {sorted(want)} within {OBSERVE_DEADLINE_S}s "
                       f"(it shows {sorted(servers_state(paths) or ())})")


def find_lb_dir(state_dir: Path) -> LbPaths:
    found = sorted(state_dir.glob("agent/lb/*/haproxy.cfg"))
    if len(found) != 1:
        raise RuntimeError(f"expected one haproxy configuration under {state_dir}, found {found}")
    return LbPaths(str(found[0].parent))


# -- the changes ----------------------------------------------------------------------------


@dataclass
class Members:
    """What the pool holds, as the bench changed it: member id -> (port, weight)."""

    lb_id: str
    pool_id: str
    held: dict[str, tuple[int, int]]

    def expected(self) -> set[tuple[str, int, int]]:
        return {(MEMBER, port, weight) for port, weight in self.held.values()}

    def next_change(self, i: int, rnd: random.Random) -> tuple[str, dict[str, Any]]:
        """The i-th change: add, weight, delete in turn (a weight when the turn cannot be)."""
        base = {"loadbalancer_id": self.lb_id, "pool_id": self.pool_id}
        free = [p for p in PORTS if p not in {port for port, _ in self.held.values()}]
        kind = ("add", "weight", "delete")[i % 3]
        if kind == "add" and free:
            port = rnd.choice(free)
            return "member.create", {**base, "member": {"address": MEMBER, "protocol_port": port,
                                                         "weight": rnd.randint(1, 50)}}
        if kind == "delete" and len(self.held) > 1:
            return "member.delete", {**base, "id": rnd.choice(sorted(self.held))}
        member = rnd.choice(sorted(self.held))
        weight = rnd.choice([w for w in range(1, 51) if w != self.held[member][1]])
        return "member.update", {**base, "id": member, "weight": weight}

    def apply(self, verb: str, body: dict[str, Any], reply: dict[str, Any]) -> None:
        if verb == "member.create":
            m = body["member"]
            self.held[str(reply["id"])] = (m["protocol_port"], m["weight"])
        elif verb == "member.delete":
            del self.held[body["id"]]
        else:
            self.held[body["id"]] = (self.held[body["id"]][0], body["weight"])


async def changes(path: CommandPath, members: Members, paths: LbPaths, n: int,
                  seed: int) -> tuple[list[float], list[float], Counter[str]]:
    """`n` changes one after the other: (to-observable latencies, reply latencies, verbs)."""
    rnd = random.Random(seed)
    observed: list[float] = []
    replies: list[float] = []
    verbs: Counter[str] = Counter()
    for i in range(n):
        verb, body = members.next_change(i, rnd)
        start = time.monotonic()
        reply = await path.cmd(f"bench.{verb}", body)
        replies.append(time.monotonic() - start)
        members.apply(verb, body, reply)
        observed.append(await asyncio.to_thread(wait_for_state, paths, members.expected(), start))
        verbs[verb] += 1
    return observed, replies, verbs


def bare_reloads(paths: LbPaths, n: int) -> list[float]:
    """The baseline: hitless reloads by hand of the same haproxy, timed to the new worker."""
    out = []
    for _ in range(n):
        start = time.monotonic()
        haproxy.reload(paths)
        out.append(time.monotonic() - start)
    return out


def start_members(namespace: str) -> subprocess.Popen[bytes]:
    """HTTP on the member ports `BenchFabric`'s own member server leaves free."""
    return subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c",
                             EXTRA_MEMBERS, *map(str, PORTS[1:])])


# -- the run --------------------------------------------------------------------------------


def ms(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    ys = sorted(xs)
    return round(ys[min(len(ys) - 1, int(p / 100 * len(ys)))] * 1000, 1)


async def run(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    path = CommandPath(str(state_dir / "path"))
    fab = BenchFabric()
    extra: subprocess.Popen[bytes] | None = None
    load = Load()
    clients: list[Future[None]] = []
    try:
        net_id = await path.start()
        fab.network = NetworkSpec(net_id, f"{NET}.0.0/16", f"{NET}.0.1")
        fab.bridge = fab.network.bridge_name("splb-")
        await asyncio.to_thread(fab.build)
        extra = await asyncio.to_thread(start_members, fab.member_ns)
        for port in PORTS[1:]:
            await asyncio.to_thread(fab.wait_serving, MEMBER, port, 15)
        path.start_agent()
        address = vip(1, 0)
        lb: dict[str, Any] = await path.cmd("bench.loadbalancer.create", {
            "name": "reloads", "vip_network_id": net_id, "vip_address": address,
            "service_type_id": path.service_type,
            "pools": [{"name": "p", "protocol": "HTTP", "members": [
                {"address": MEMBER, "protocol_port": p, "weight": 10} for p in PORTS[:2]]}],
            "listeners": [{"name": "l", "protocol": "HTTP", "protocol_port": 80,
                           "default_pool": "p"}]})
        await asyncio.to_thread(fab.wait_serving, address, 80, 30)
        pool = lb["pools"][0]
        members = Members(str(lb["id"]), str(pool["id"]),
                          {str(m["id"]): (int(m["protocol_port"]), 10) for m in pool["members"]})
        paths = find_lb_dir(state_dir / "path")
        await asyncio.to_thread(wait_for_state, paths, members.expected(), time.monotonic())
        assert fab.client is not None
        end = time.monotonic() + args.max_s
        interval = args.clients / args.rate
        load.phase = "warm-up"
        clients = [fab.client.submit(client_loop, load, address, interval, args.max_requests, end)
                   for _ in range(args.clients)]
        await asyncio.sleep(1.0)  # the load runs before the first change (paced, not a wait)
        load.phase = "changes"
        t0 = time.monotonic()
        observed, replies, verbs = await changes(path, members, paths, args.changes, args.seed)
        changes_s = time.monotonic() - t0
        load.phase = "baseline"
        baseline = await asyncio.to_thread(bare_reloads, paths, args.baseline)
        load.phase = "after"
        await asyncio.sleep(0.5)
        load.stop.set()
        for c in clients:
            await asyncio.wrap_future(c)
        if time.monotonic() > end or load.total >= args.max_requests:
            raise RuntimeError("the client load hit its bound before the changes were done: "
                               "raise --max-s or --max-requests")
        await path.cmd("bench.loadbalancer.delete", {"id": lb["id"]})
        return {"observed": observed, "replies": replies, "verbs": verbs, "baseline": baseline,
                "changes_s": changes_s, "load": load}
    finally:
        load.stop.set()
        for c in clients:
            c.cancel()
        await path.close()
        if extra is not None:
            extra.kill()
            extra.wait()
        await asyncio.to_thread(fab.close)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--changes", type=int, default=100)
    p.add_argument("--baseline", type=int, default=20, help="bare hitless reloads by hand")
    p.add_argument("--clients", type=int, default=4, help="client threads")
    p.add_argument("--rate", type=float, default=400.0, help="requests per second in all")
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--max-s", type=float, default=600.0, help="bound on the client load's time")
    p.add_argument("--seed", type=int, default=16)
    args = p.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    state_dir = Path(tempfile.mkdtemp(prefix="splr", dir="/tmp"))
    try:
        r = asyncio.run(run(args, state_dir))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    load: Load = r["load"]
    obs, base = r["observed"], r["baseline"]
    failed = sum(load.failed.values())
    print(f"{len(obs)} changes ({', '.join(f'{n} {v}' for v, n in sorted(r['verbs'].items()))}) "
          f"in {r['changes_s']:.1f} s")
    print(f"  command sent → haproxy runs the change: p50 {ms(obs, 50)} ms, p99 {ms(obs, 99)} ms, "
          f"max {ms(obs, 100)} ms (reply p50 {ms(r['replies'], 50)} ms)")
    print(f"  bare hitless reload by hand: p50 {ms(base, 50)} ms, p99 {ms(base, 99)} ms "
          f"({len(base)} reloads)")
    print(f"requests through the VIP: {load.total} ({args.clients} clients, "
          f"{args.rate:.0f}/s paced), failed {failed}")
    for phase in ("warm-up", "changes", "baseline", "after"):
        print(f"  {phase}: {load.ok[phase]} ok, {load.failed[phase]} failed")
    for kind, n in load.kinds.most_common():
        print(f"  failure {kind}: {n}")
    print(json.dumps({
        "changes": len(obs), "requests": load.total, "failed_requests": failed,
        "failed_during_changes": load.failed["changes"],
        "failed_during_baseline": load.failed["baseline"],
        "reload_p50_ms": ms(obs, 50), "reload_p99_ms": ms(obs, 99), "reload_max_ms": ms(obs, 100),
        "reply_p50_ms": ms(r["replies"], 50),
        "bare_reload_p50_ms": ms(base, 50), "bare_reload_p99_ms": ms(base, 99),
        "ratio": round(statistics.median(obs) / statistics.median(base), 3) if base else None,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
