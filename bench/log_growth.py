"""Command latency as the event log grows: the same commands on a short stream and on a long one.

For each stream size (default 1,000 and 1,000,000 messages), in one run:

1. a fresh nats-server (its own temporary store, ``sync_interval: always``) and ``splice serve``;
2. ``--aggregates`` service types are created, then updated ``--history`` times each, with the
   filler published between the rounds of updates, so that every touched aggregate's events lie
   spread over the whole stream, as on a busy system;
3. the filler: events of *other* aggregates (service types of their own, 100 versions each), each
   a copy of a real ``servicetype.update`` event the run stored — same subject layout, same
   headers, same payload — published raw, in atomic batches of 1,000 (fast: no command path);
4. ``splice serve`` is stopped. Then ``--rounds`` rounds, alternating the two streams (a machine
   busy with other work weighs on both alike): the nats-server restarted and a fresh
   ``splice serve`` (neither the service's aggregate cache nor the server's per-block subject
   indexes hold anything), ``--clients`` clients, each owning one of the service types, send
   ``servicetype.update`` commands one after the other until ``--commands`` in all, and the
   service stops. A client's first command of a round loads its aggregate from the stream
   ("cold"); the others find it cached ("warm"). Figures are medians over the rounds.

Also measured on each stream, outside the command path: a filtered read of one aggregate (every
message on its subject filter, by batched direct get from sequence 1, once and at once again), a
direct get of its last message, and the event store's own load of it (`select_events`, which
follows the aggregate's back-pointers when that is cheaper) just after a server restart and at
once again.

Human-readable figures first; the last line is JSON with, per size, p50/p99 of all commands,
of the cold ones, and the ratios long/short (``ratio_p50``, ``ratio_p99``, ``ratio`` = the larger
of the two; goal ≤ 1.2).

    .venv/bin/python bench/log_growth.py --events 1000000
    .venv/bin/python bench/log_growth.py --events 20000 --commands 300 --rounds 1   # CI size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment
from nats.aio.client import Client

from splice.natsserver import NatsServer
from splice.services.executor import app_env

ADMIN = "splice.cmd._admin.servicetype"
STREAM = "SPLICE_EVENTS"
BATCH = 1000  # messages in one atomic batch (the server's default limit)
IN_FLIGHT = 4  # atomic batches committing at once while the filler is published
VERSIONS_PER_FILLER = 100  # events of one filler aggregate
TIMEOUT_S = 15.0


# -- small tools ----------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float | None:
    """The p-th percentile in milliseconds (nearest rank), None when empty."""
    if not xs:
        return None
    ys = sorted(xs)
    return round(ys[min(len(ys) - 1, int(p / 100 * len(ys)))] * 1000, 3)


def splice_cmd() -> str:
    script = Path(sys.executable).parent / "splice"
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: install the project (pip install -e .)")
    return str(script)


def start_serve(url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([splice_cmd(), "serve", "--nats-url", url],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def request(nc: Client, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"command_id": str(uuid.uuid4()), "actor": "bench", **body}
    msg = await nc.request(f"{ADMIN}.{verb}", json.dumps(body).encode(), timeout=TIMEOUT_S)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def must(nc: Client, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await request(nc, verb, body)
    if reply.get("ok") is not True:
        raise RuntimeError(f"servicetype.{verb} refused: {reply}")
    return reply


async def wait_serving(nc: Client, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the service answers (an invalid command: it stores nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"splice serve exited with {proc.returncode}")
        try:
            await nc.request(f"{ADMIN}.create", b"{}", timeout=1)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"splice serve did not answer within {timeout}s") from None
            await asyncio.sleep(0.05)


async def stream_ready(nc: Client, timeout: float = 120) -> None:
    """Until JetStream answers for the stream (after a restart it recovers it first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.jetstream().stream_info(STREAM)
            return
        except (nats.errors.Error, nats.js.errors.Error):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def last_seq(nc: Client) -> int:
    info = await nc.jetstream().stream_info(STREAM)
    return int(info.state.last_seq)


# -- the filler: raw atomic batches ---------------------------------------------------------


class Filler:
    """Publishes copies of one real event under other aggregates' subjects, in atomic batches."""

    def __init__(self, nc: Client, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.nc = nc
        self.data = data
        # splice.evt.<tenant>.<aggregate>.<id>.<topic>: keep all but the id
        head, _, self.topic = subject.rpartition(".")
        self.base = head.rpartition(".")[0]
        self.headers = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
        self.ids: list[str] = []
        self.versions: list[int] = []
        self.published = 0

    def _next(self) -> tuple[str, dict[str, str]]:
        i = self.published // VERSIONS_PER_FILLER
        if i == len(self.ids):
            self.ids.append(uuid.uuid4().hex)
            self.versions.append(0)
        self.versions[i] += 1
        self.published += 1
        h = dict(self.headers)
        h["Splice-Version"] = str(self.versions[i])
        h["Splice-Command-Id"] = str(uuid.uuid4())
        return f"{self.base}.{self.ids[i]}.{self.topic}", h

    async def _batch(self, n: int) -> None:
        batch_id = uuid.uuid4().hex
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=2)
        try:
            for k in range(1, n + 1):
                subject, h = self._next()
                h["Nats-Batch-Id"] = batch_id
                h["Nats-Batch-Sequence"] = str(k)
                if k == n:
                    h["Nats-Batch-Commit"] = "1"
                reply = inbox if k in (1, n) else ""
                await self.nc.publish(subject, self.data, reply=reply, headers=h)
            while True:  # the first message's reply is empty when all is well; the commit's acks
                msg = await sub.next_msg(timeout=TIMEOUT_S)
                if not msg.data:
                    continue
                ack = json.loads(msg.data)
                if "error" in ack:
                    raise RuntimeError(f"filler batch refused: {ack['error']}")
                return
        finally:
            await sub.unsubscribe()

    async def publish(self, count: int) -> None:
        sizes = [BATCH] * (count // BATCH) + ([count % BATCH] if count % BATCH else [])
        running: set[asyncio.Task[None]] = set()
        for s in sizes:
            if len(running) >= IN_FLIGHT:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
            running.add(asyncio.create_task(self._batch(s)))
        for t in running:
            await t


async def sample(nc: Client, seq: int) -> tuple[str, bytes, dict[str, str]]:
    msg = await nc.jetstream().get_msg(STREAM, seq=seq, direct=True)
    return msg.subject or "", msg.data or b"", dict(msg.headers or {})


# -- one stream size ------------------------------------------------------------------------


async def direct_read_ms(nc: Client, subject: str) -> tuple[float, float, int]:
    """(ms to read every message on `subject` from seq 1, ms of a last-by-subject get, count)."""
    t0 = time.perf_counter()
    count, seq = 0, 1
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        body = json.dumps({"seq": seq, "next_by_subj": subject, "batch": BATCH}).encode()
        await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}", body, reply=inbox)
        pending = 0
        while True:
            msg = await sub.next_msg(timeout=TIMEOUT_S)
            status = (msg.headers or {}).get("Status")
            if status:
                pending = int((msg.headers or {}).get("Nats-Num-Pending", "0") or 0)
                break
            count += 1
            seq = int((msg.headers or {})["Nats-Sequence"]) + 1
        await sub.unsubscribe()
        if pending == 0:
            break
    read_ms = (time.perf_counter() - t0) * 1000
    t1 = time.perf_counter()
    await nc.request(f"$JS.API.DIRECT.GET.{STREAM}",
                     json.dumps({"last_by_subj": subject}).encode(), timeout=TIMEOUT_S)
    return read_ms, (time.perf_counter() - t1) * 1000, count


def load_ms(url: str, public_id: str) -> tuple[float, int]:
    """(ms, events) of loading one service type's events as the command service does: the
    event store's own read (`select_events`, by back-pointers when the aggregate is short)."""
    factory = InfrastructureFactory.construct(Environment(env=app_env(url)))
    try:
        recorder = factory.application_recorder()
        t0 = time.perf_counter()
        events = recorder.select_events(f"_admin.servicetype.{public_id}")
        return (time.perf_counter() - t0) * 1000, len(events)
    finally:
        factory.close()


async def measure(nc: Client, ids: list[str], clients: int, commands: int) -> dict[str, Any]:
    cold: list[float] = []
    warm: list[float] = []
    errors: list[str] = []
    per_client = max(1, commands // clients)

    async def client(c: int) -> None:
        for n in range(per_client):
            t0 = time.perf_counter()
            reply = await request(nc, "update", {"id": ids[c % len(ids)], "description": f"m{n}"})
            dt = time.perf_counter() - t0
            if reply.get("ok") is not True:
                errors.append(str(reply.get("error"))[:160])
                continue
            (cold if n == 0 else warm).append(dt)

    t0 = time.monotonic()
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.monotonic() - t0
    every = cold + warm
    return {"commands": len(every), "errors": len(errors), "first_error": errors[:1],
            "rate": round(len(every) / elapsed, 1), "p50_ms": pct(every, 50),
            "p99_ms": pct(every, 99), "warm_p50_ms": pct(warm, 50), "warm_p99_ms": pct(warm, 99),
            "cold_p50_ms": pct(cold, 50), "cold_max_ms": pct(cold, 100)}


class Stream:
    """One nats-server holding a stream of one size, and the service types the rounds touch."""

    def __init__(self, size: int, tmp: Path) -> None:
        self.size = size
        self.server = NatsServer(store_dir=tmp / "nats")
        self.log = tmp / "splice-serve.log"
        self.ids: list[str] = []
        self.built: dict[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []

    def log_tail(self) -> str:
        try:
            return "".join(self.log.read_text(errors="replace").splitlines(True)[-20:])
        except OSError:
            return ""

    async def build(self, args: argparse.Namespace) -> None:
        """The service types and their history, spread over `size` messages of filler."""
        self.server.start()
        serve = start_serve(self.server.url, self.log)
        nc = await nats.connect(self.server.url, name="bench-log-growth", max_reconnect_attempts=0)
        try:
            await wait_serving(nc, serve)
            for i in range(args.aggregates):
                body = {"name": f"lg-{i}", "providers": {"loadbalancer": "haproxy"}}
                self.ids.append((await must(nc, "create", body))["id"])
            first = await must(nc, "update", {"id": self.ids[0], "description": "h0"})
            filler = Filler(nc, *(await sample(nc, int(first["seq"]))))
            rounds = max(1, args.history)
            t0 = time.monotonic()
            for r in range(rounds):
                left = self.size - await last_seq(nc) - (rounds - r) * args.aggregates
                await filler.publish(max(0, left // (rounds - r)))
                for agg in self.ids:
                    await must(nc, "update", {"id": agg, "description": f"h{r + 1}"})
            await filler.publish(max(0, self.size - await last_seq(nc)))
            built_s = time.monotonic() - t0
            stop_serve(serve)
            subject = f"splice.evt._admin.servicetype.{self.ids[0].rsplit('.', 1)[-1]}.*"
            read_ms, last_ms, own = await direct_read_ms(nc, subject)
            again_ms, _, _ = await direct_read_ms(nc, subject)
            stream = await last_seq(nc)
            await nc.close()
            # the store's own load, as a cold command makes it: the server just restarted
            await asyncio.to_thread(self.server.stop)
            await asyncio.to_thread(self.server.start)
            cold_ms, loaded = await asyncio.to_thread(load_ms, self.server.url, self.ids[0])
            warm_ms, _ = await asyncio.to_thread(load_ms, self.server.url, self.ids[0])
            assert loaded == own, (loaded, own)
            self.built = {"stream": stream, "filler": filler.published,
                          "load_ms": round(cold_ms, 2), "load_again_ms": round(warm_ms, 2),
                          "build_s": round(built_s, 1), "aggregate_events": own,
                          "filtered_read_ms": round(read_ms, 2),
                          "filtered_read_again_ms": round(again_ms, 2),
                          "last_by_subject_ms": round(last_ms, 2)}
        finally:
            await nc.close()
            stop_serve(serve)

    async def round(self, args: argparse.Namespace) -> dict[str, Any]:
        """The nats-server restarted and a fresh `splice serve`, so that neither the service's
        aggregates nor the server's per-block subject indexes are cached; the measured
        commands; then the service stops."""
        await asyncio.to_thread(self.server.stop)
        await asyncio.to_thread(self.server.start)
        serve = start_serve(self.server.url, self.log)
        nc = await nats.connect(self.server.url, name="bench-log-growth", max_reconnect_attempts=0)
        try:
            await stream_ready(nc)
            await wait_serving(nc, serve)
            figures = await measure(nc, self.ids, args.clients, args.commands)
        finally:
            await nc.close()
            stop_serve(serve)
        if figures["errors"]:
            raise RuntimeError(f"{figures['errors']} commands failed: {figures['first_error']}")
        self.rounds.append(figures)
        return figures

    def summary(self) -> dict[str, Any]:
        """The build's figures, and the medians over the rounds."""
        out = dict(self.built)
        for k in ("rate", "p50_ms", "p99_ms", "warm_p50_ms", "warm_p99_ms", "cold_p50_ms",
                  "cold_max_ms"):
            xs = sorted(r[k] for r in self.rounds if r[k] is not None)
            out[k] = xs[len(xs) // 2] if xs else None
        out["commands"] = sum(r["commands"] for r in self.rounds)
        return out


def describe(f: dict[str, Any], rounds: int) -> str:
    return (f"stream of {f['stream']:,} messages ({f['filler']:,} filler, built in "
            f"{f['build_s']} s): {f['commands']} updates in {rounds} round(s), medians: "
            f"{f['rate']:,.0f}/s, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms; cold (first of "
            f"each aggregate) p50 {f['cold_p50_ms']} ms, max {f['cold_max_ms']} ms\n"
            f"  one aggregate ({f['aggregate_events']} events): filtered read from seq 1 "
            f"{f['filtered_read_ms']} ms (at once again: {f['filtered_read_again_ms']} ms), "
            f"last by subject {f['last_by_subject_ms']} ms; the store's load after a server "
            f"restart {f['load_ms']} ms (at once again: {f['load_again_ms']} ms)")


async def run(args: argparse.Namespace, tmps: list[Path]) -> tuple[Stream, Stream]:
    short, long = Stream(args.small, tmps[0]), Stream(args.events, tmps[1])
    try:
        for s in (short, long):
            await s.build(args)
            print(f"built {s.built['stream']:,} messages in {s.built['build_s']} s", flush=True)
        for r in range(args.rounds):  # alternate: a busy machine weighs on both alike
            for s in (short, long):
                f = await s.round(args)
                print(f"  round {r + 1}, {s.size:,}: p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, "
                      f"cold p50 {f['cold_p50_ms']} ms", flush=True)
        return short, long
    except BaseException:
        for s in (short, long):
            print(f"--- splice serve log, {s.size} (last lines) ---\n{s.log_tail()}",
                  file=sys.stderr)
        raise
    finally:
        for s in (short, long):
            s.server.stop()


def ratio(a: float | None, b: float | None) -> float | None:
    return round(b / a, 3) if a and b is not None else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=1000, help="messages in the short stream")
    p.add_argument("--events", type=int, default=1_000_000, help="messages in the long stream")
    p.add_argument("--aggregates", type=int, default=8, help="service types touched")
    p.add_argument("--history", type=int, default=20, help="updates of each before measuring")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients while measuring")
    p.add_argument("--commands", type=int, default=2000, help="commands per round and size")
    p.add_argument("--rounds", type=int, default=3, help="rounds per size, alternating sizes")
    args = p.parse_args(argv)
    tmps = [Path(tempfile.mkdtemp(prefix="splice-loggrowth-")) for _ in range(2)]
    try:
        streams = asyncio.run(run(args, tmps))
    finally:
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
    short, long = (s.summary() for s in streams)
    for f in (short, long):
        print(describe(f, args.rounds), flush=True)
    out: dict[str, Any] = {"small": args.small, "events": args.events, "clients": args.clients,
                           "rounds": args.rounds, "cpus": os.cpu_count()}
    for name, f in (("small", short), ("large", long)):
        for k in ("stream", "p50_ms", "p99_ms", "cold_p50_ms", "filtered_read_ms",
                  "filtered_read_again_ms", "last_by_subject_ms", "load_ms", "load_again_ms"):
            out[f"{name}_{k}"] = f[k]
    out["cold_ratio"] = ratio(short["cold_p50_ms"], long["cold_p50_ms"])
    out["read_ratio"] = ratio(short["filtered_read_ms"], long["filtered_read_ms"])
    out["load_ratio"] = ratio(short["load_ms"], long["load_ms"])
    out["ratio_p50"] = ratio(short["p50_ms"], long["p50_ms"])
    out["ratio_p99"] = ratio(short["p99_ms"], long["p99_ms"])
    out["ratio"] = max(r for r in (out["ratio_p50"], out["ratio_p99"], 0.0) if r is not None)
    print(f"ratio long/short: p50 {out['ratio_p50']}, p99 {out['ratio_p99']} "
          f"(cold p50 {out['cold_ratio']}, filtered read {out['read_ratio']}, "
          f"the store's load {out['load_ratio']})", flush=True)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
