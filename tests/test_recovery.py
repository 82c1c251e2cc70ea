"""Recovery without collapse: a nats-server SIGKILLed and restarted under an eager client.

Seen before: after a restart, an eager client (40 workers that send again whenever a request
times out) collapsed the command service to about 2 commands/s with 40 to 100 s latency; one
command id was handled up to 34 times, and each duplicate re-read a 1,006-event network.

Here 40 eager workers run against the command service (`splice serve`, a process of its own, as
it runs in production) on a real nats-server:
half change their own port (one-event writes), half create ports on one shared network (atomic
batches with a claim; the network grows long). The server is killed with SIGKILL and started
again on the same store and port while they run. The test measures how long throughput takes
to come back to its earlier level, and checks that no acknowledged command was lost or applied
twice, and that every command's reply is its event's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from helpers import request, stream_messages

from splice.natsserver import NatsServer

pytestmark = pytest.mark.trust

T = "acme"
WORKERS = 40
REQUEST_TIMEOUT = 1.0  # the eager client's patience: then it sends the same command again
BASELINE_S = 3.0  # throughput measured over this long before the kill
WINDOW_S = 1.0  # throughput after the restart: over sliding windows this long
STEP_S = 0.25
RECOVERED = 0.8  # "back to its earlier level": at least this share of the earlier throughput
BOUND_S = 15.0  # the recovery must take less than this after the server is back
SPLICE = str(Path(sys.executable).parent / "splice")


class Load:
    """40 eager workers; each command is sent again (same command id) until it is answered ok."""

    def __init__(self, nc: Any, net: str, ports: list[str]) -> None:
        self.nc, self.net, self.ports = nc, net, ports
        self.ok_at: list[float] = []  # when each ok reply came (monotonic)
        self.replies: dict[str, tuple[str, dict[str, Any]]] = {}  # command id -> (verb, reply)
        self.sends: Counter[str] = Counter()  # command id -> times sent
        self.latencies: list[tuple[float, float]] = []  # (answered at, seconds since first send)
        self.outcomes: Counter[str] = Counter()
        self.stopping = asyncio.Event()

    def command(self, w: int, n: int) -> tuple[str, str, dict[str, Any]]:
        if w % 2 == 0:
            port = self.ports[w // 2]
            return "update", f"{T}.port.update", {"id": port, "name": f"w{w}-{n}"}
        return "create", f"{T}.port.create", {"network_id": self.net, "name": f"w{w}-{n}"}

    async def worker(self, w: int) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            verb, subject, body = self.command(w, n)
            cid = f"w{w}-{n}-{uuid.uuid4().hex[:8]}"
            data = json.dumps({"command_id": cid, "actor": "eager", **body}).encode()
            first_sent = time.monotonic()
            while True:  # until answered ok, whatever happens meanwhile
                self.sends[cid] += 1
                try:
                    msg = await self.nc.request(
                        f"splice.cmd.{subject}", data, timeout=REQUEST_TIMEOUT
                    )
                except (TimeoutError, nats.errors.TimeoutError):
                    self.outcomes["timeout"] += 1
                    continue  # eager: at once, the same command
                except nats.errors.Error as e:  # no responders yet, connection closed, ...
                    self.outcomes[type(e).__name__] += 1
                    await asyncio.sleep(0.01)
                    continue
                reply = json.loads(msg.data)
                if reply.get("ok"):
                    now = time.monotonic()
                    self.ok_at.append(now)
                    self.latencies.append((now, now - first_sent))
                    self.replies[cid] = (verb, reply)
                    self.outcomes["ok"] += 1
                    break
                self.outcomes[(reply.get("error") or {}).get("code", "?")] += 1
                await asyncio.sleep(0.02)  # refused for now (unavailable, busy): soon again

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.ok_at if start <= t < end) / (end - start)


def report(
    load: Load,
    baseline: float,
    t_kill: float,
    t_up: float,
    t_end: float,
    recovered_at: float | None,
) -> None:
    """The figures: the recovery time after a restart, throughput and latency around it."""
    per_second = [round(load.rate(t_up + i, t_up + i + 1)) for i in range(int(t_end - t_up))]
    slow = sorted(s for at, s in load.latencies if at >= t_up)
    p99 = slow[int(0.99 * (len(slow) - 1))] if slow else 0.0
    back = "never" if recovered_at is None else f"{recovered_at - t_up:.2f} s"
    since_kill = "-" if recovered_at is None else f"{recovered_at - t_kill:.2f} s"
    print(
        f"\nbaseline {baseline:.0f} commands/s ({WORKERS} eager workers, request timeout "
        f"{REQUEST_TIMEOUT:g} s); server down {t_up - t_kill:.2f} s (SIGKILL to listening)"
        f"\nrecovery: throughput back to >= {RECOVERED:.0%} of baseline in a {WINDOW_S:g} s "
        f"window starting {back} after the restart ({since_kill} after the kill); "
        f"last second {load.rate(t_end - 1.0, t_end):.0f}/s"
        f"\ncommands/s in each second after the restart: {per_second}"
        f"\nlatency after the restart (first send to ok): p99 {p99:.2f} s, max "
        f"{(slow[-1] if slow else 0):.2f} s; most sends of one command id: "
        f"{max(load.sends.values())}"
        f"\nclient outcomes: {dict(load.outcomes)}",
        flush=True,
    )


def start_service(url: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([SPLICE, "serve", "--nats-url", url], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


async def answering(nc: Any, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until the service answers a request (a refusal will do)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "splice serve exited"
        try:
            await nc.request("splice.cmd.acme.nothing.here", b"{}", timeout=1)
            return
        except nats.errors.Error:
            assert time.monotonic() < deadline, "splice serve does not answer"
            await asyncio.sleep(0.1)


async def test_throughput_recovers_within_seconds_after_a_nats_server_restart(
    fresh_nats: NatsServer, tmp_path: Path
) -> None:
    env = {**os.environ, "SPLICE_MONITORS": "off", "SPLICE_LOG_LEVEL": "WARNING"}
    env.pop("SPLICE_CREDS", None)
    svc = start_service(fresh_nats.url, env, tmp_path / "serve.log")
    nc = await nats.connect(
        fresh_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, name="eager"
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        await answering(nc, svc)
        # -- a network, a port per updating worker ------------------------------------------
        async def ok(subject: str, body: dict[str, Any]) -> dict[str, Any]:
            body = {"command_id": str(uuid.uuid4()), "actor": "setup", **body}
            reply = await request(nc, f"splice.cmd.{subject}", body)
            assert reply["ok"], (subject, reply)
            return reply

        await ok("_admin.quota.set", {"tenant": T, "limits": {"port": 100_000}})
        net = (await ok(f"{T}.network.create", {"name": "big", "cidr": "10.64.0.0/16"}))["id"]
        ports = [
            (await ok(f"{T}.port.create", {"network_id": net, "name": f"p{i}"}))["id"]
            for i in range(WORKERS // 2)
        ]
        load = Load(nc, net, ports)
        tasks = [asyncio.create_task(load.worker(w)) for w in range(WORKERS)]

        # -- the earlier level ---------------------------------------------------------------
        await asyncio.sleep(1.0)  # warm-up, not measured
        t0 = time.monotonic()
        await asyncio.sleep(BASELINE_S)
        baseline = load.rate(t0, t0 + BASELINE_S)
        assert baseline > 0

        # -- SIGKILL and restart (same store, same port) --------------------------------------
        t_kill = time.monotonic()
        await asyncio.to_thread(fresh_nats.kill)
        await asyncio.to_thread(fresh_nats.start)
        t_up = time.monotonic()

        # -- until throughput is back -------------------------------------------------------
        recovered_at: float | None = None
        start = t_up
        while time.monotonic() < t_up + BOUND_S + WINDOW_S:
            await asyncio.sleep(max(0.0, start + WINDOW_S - time.monotonic()))
            if load.rate(start, start + WINDOW_S) >= RECOVERED * baseline:
                recovered_at = start
                break
            start += STEP_S
        await asyncio.sleep(1.0)  # and it stays there
        t_end = time.monotonic()
        report(load, baseline, t_kill, t_up, t_end, recovered_at)
        assert recovered_at is not None, "throughput did not come back"
        assert recovered_at - t_up < BOUND_S

        # -- stop: every worker finishes the command it is sending ---------------------------
        load.stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        events = [m for m in await stream_messages(fresh_nats.url)
                  if m["subject"].startswith("splice.evt.")]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await nc.close()
        svc.send_signal(signal.SIGTERM)
        try:
            svc.wait(15)
        except subprocess.TimeoutExpired:
            svc.kill()
            svc.wait(5)

    # -- nothing lost, nothing doubled, every reply its event's -------------------------------
    ours: dict[str, list[dict[str, Any]]] = {}
    for m in events:
        cid = m["headers"].get("Splice-Command-Id", "")
        if cid.startswith("w"):
            ours.setdefault(cid, []).append(m)
    assert set(ours) == set(load.replies), (
        f"lost: {sorted(set(load.replies) - set(ours))[:5]}, "
        f"unanswered: {sorted(set(ours) - set(load.replies))[:5]}"
    )
    for cid, (verb, reply) in load.replies.items():
        topics = Counter(m["headers"]["Splice-Topic"] for m in ours[cid])
        main = "PortUpdated" if verb == "update" else "PortCreated"
        expected = {main: 1} if verb == "update" else {main: 1, "AddressAllocated": 1,
                                                       "QuotaConsumed": 1}
        assert topics == expected, (cid, topics)
        event = next(m for m in ours[cid] if m["headers"]["Splice-Topic"] == main)
        assert reply["seq"] == event["seq"], (cid, reply, event["seq"])
