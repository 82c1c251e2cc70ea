"""Commands per second through the whole Splice command path, against raw JetStream publishing.

One run, one nats-server (its own temporary store, a free port, ``sync_interval: always``):

1. the Splice phase: ``splice serve`` as a subprocess; N concurrent clients (asyncio tasks sharing
   one nats-py connection) each send a command by request/reply and wait for its reply, again and
   again, for a duration or a total number of commands. The measured command is
   ``servicetype.update`` on a service type each client owns (independent aggregates: the
   workload of many tenants), or ``servicetype.create`` (each create also writes its name's
   claim aggregate and reads the default-service-type singleton), or both one after the other;
2. the raw phase: N concurrent tasks on one connection each awaiting ``js.publish`` of a message
   as large as a real event (the payload and header size of one event the Splice phase wrote) to a
   stream of its own, ``BENCH_RAW`` (file storage, R1), on the same server.

The phases alternate ``--rounds`` times (3 by default): the rates are medians, and ``ratio`` is
the median of the rounds' own ratios (each Splice phase over the raw phase right after it, in
the same minute), which evens out a machine busy with other work. Only ``{"ok": true}`` replies
count; error replies and failed requests are reported by kind. Human-readable figures go to stdout; the last line is one JSON
object ending with ``"splice_cmds_per_s", "raw_publish_per_s", "ratio", "clients", "services"``.
With ``--services 2`` two ``splice serve`` processes share the queue group (the ratio judged is
the one-process figure; two show what a second process adds, against the same raw figure).

    .venv/bin/python bench/command_path.py --clients 32 --duration 10 --command update
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import api
from nats.js.client import JetStreamContext

from splice.natsserver import NatsServer

ADMIN = "splice.cmd._admin.servicetype"
REQUEST_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    last_seq: int | None = None

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, p: float) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000, 2)

    @property
    def cpu_per_cmd_ms(self) -> float | None:
        """The command service's CPU time per answered command: the figure that a busy machine
        disturbs least (rates move with the neighbours' load, this moves less)."""
        cpu = sum(v for k, v in self.cpu_s.items() if k.startswith("splice serve"))
        return cpu / self.ok * 1000 if cpu and self.ok else None

    def describe(self) -> str:
        lines = [
            f"{self.name}: {self.ok} ok in {self.elapsed_s:.2f} s = {self.rate:,.0f}/s; "
            f"latency p50 {self.percentile_ms(50)} ms, p99 {self.percentile_ms(99)} ms, "
            f"max {self.percentile_ms(100)} ms",
        ]
        if self.cpu_s:
            used = ", ".join(f"{k} {v:.1f} s" for k, v in self.cpu_s.items())
            lines.append(f"  CPU used: {used} (of {self.elapsed_s * os.cpu_count():.1f} s)")
            if self.cpu_per_cmd_ms is not None and not self.name.startswith("raw"):
                lines.append(f"  splice serve CPU per command: {self.cpu_per_cmd_ms:.3f} ms")
        if self.errors:
            lines.append(f"  errors: {sum(self.errors.values())}")
            lines += [f"    {n} x {kind}" for kind, n in self.errors.most_common(10)]
        return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (children excluded), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Limits:
    duration_s: float
    commands: int | None

    def budget(self) -> tuple[float, list[int]]:
        """The deadline, and a shared countdown of commands (unbounded when -1)."""
        return time.monotonic() + self.duration_s, [self.commands or -1]


async def run_clients(
    name: str,
    clients: int,
    limits: Limits,
    one: Callable[[int, int], Awaitable[tuple[bool, str | None, int | None]]],
    pids: dict[str, int],
) -> Phase:
    """`clients` tasks each calling `one(client, n)` until the budget is spent.

    `one` returns (ok, error kind, stream seq)."""
    phase = Phase(name)
    deadline, left = limits.budget()
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}

    async def client(c: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            if left[0] == 0:
                return
            if left[0] > 0:
                left[0] -= 1
            n += 1
            t0 = time.perf_counter()
            try:
                ok, error, seq = await one(c, n)
            except Exception as e:
                ok, error, seq = False, f"{type(e).__name__}: {e}"[:160], None
            if ok:
                phase.ok += 1
                phase.latencies.append(time.perf_counter() - t0)
                if seq is not None:
                    phase.last_seq = max(seq, phase.last_seq or 0)
            else:
                phase.errors[error or "?"] += 1

    started = time.monotonic()
    await asyncio.gather(*(client(c) for c in range(clients)))
    phase.elapsed_s = time.monotonic() - started
    phase.cpu_s = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    return phase


# -- the Splice command path --------------------------------------------------------------------


async def command(nc: Client, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(f"{ADMIN}.{verb}", json.dumps(body).encode(), timeout=REQUEST_TIMEOUT_S)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


def error_kind(reply: dict[str, Any]) -> str:
    err = reply.get("error") or {}
    return f"{err.get('code')}: {err.get('message')}"[:160]


async def wait_until_serving(
    nc: Client, services: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float
) -> None:
    """Until every service says it is ready and one answers a request (an invalid one: it
    appends nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        for service in services:
            if service.poll() is not None:
                raise RuntimeError(f"splice serve exited with {service.returncode}")
        try:
            ready = all(b"command service ready" in log.read_bytes() for log in logs)
            if ready:
                await nc.request(f"{ADMIN}.create", b"{}", timeout=1)
                return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"splice serve did not answer within {timeout}s") from None
        await asyncio.sleep(0.1)


def st_body(name: str) -> dict[str, Any]:
    return {
        "command_id": str(uuid.uuid4()),
        "actor": "bench",
        "name": name,
        "providers": {"loadbalancer": "haproxy"},
    }


async def splice_create(
    nc: Client, run: str, clients: int, limits: Limits, pids: dict[str, int]
) -> Phase:
    async def one(c: int, n: int) -> tuple[bool, str | None, int | None]:
        reply = await command(nc, "create", st_body(f"st-{run}-{c}-{n}"))
        if reply.get("ok") is True:
            return True, None, reply.get("seq")
        return False, error_kind(reply), None

    return await run_clients("splice servicetype.create", clients, limits, one, pids)


async def own_service_types(nc: Client, run: str, clients: int) -> list[str]:
    """One service type per client, made before the clock starts."""
    ids: list[str] = []
    for c in range(clients):
        reply = await command(nc, "create", st_body(f"own-{run}-{c}"))
        if reply.get("ok") is not True:
            raise RuntimeError(f"could not create the service type of client {c}: {reply}")
        ids.append(reply["id"])
    return ids


async def splice_update(
    nc: Client, ids: list[str], clients: int, limits: Limits, pids: dict[str, int]
) -> Phase:
    async def one(c: int, n: int) -> tuple[bool, str | None, int | None]:
        body = {
            "command_id": str(uuid.uuid4()),
            "actor": "bench",
            "id": ids[c],
            "description": f"d{n}",
        }
        reply = await command(nc, "update", body)
        if reply.get("ok") is True:
            return True, None, reply.get("seq")
        return False, error_kind(reply), None

    return await run_clients("splice servicetype.update", clients, limits, one, pids)


# -- raw JetStream ------------------------------------------------------------------------------


async def sample_event(js: JetStreamContext, seq: int) -> tuple[str, bytes, dict[str, str]]:
    """The stream, payload and headers of the event stored at `seq` by the Splice phase."""
    async for name in _stream_names(js):
        try:
            msg = await js.get_msg(name, seq=seq)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject and ".evt." in msg.subject:
            return name, msg.data or b"", dict(msg.headers or {})
    raise RuntimeError(f"no stream holds an event at seq {seq}")


async def _stream_names(js: JetStreamContext) -> Any:
    for info in await js.streams_info():
        if info.config.name and info.config.name != "BENCH_RAW":
            yield info.config.name


async def make_raw_stream(js: JetStreamContext) -> None:
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream("BENCH_RAW")
    await js.add_stream(
        api.StreamConfig(
            name="BENCH_RAW",
            subjects=["bench.>"],
            storage=api.StorageType.FILE,
            num_replicas=1,
        )
    )


def header_size(headers: dict[str, str]) -> int:
    return len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())


def raw_headers(real: dict[str, str]) -> dict[str, str]:
    """The real event's application headers, padded to its full header size.

    Its ``Nats-*`` headers (concurrency checks, de-duplication) are not part of a raw publish."""
    mine = {k: v for k, v in real.items() if not k.startswith("Nats-")}
    missing = header_size(real) - header_size(mine) - len("Bench-Pad") - 4
    if missing > 0:
        mine["Bench-Pad"] = "x" * missing
    return mine


async def raw_publish(
    js: JetStreamContext,
    payload: bytes,
    headers: dict[str, str],
    clients: int,
    limits: Limits,
    pids: dict[str, int],
) -> Phase:
    async def one(c: int, n: int) -> tuple[bool, str | None, int | None]:
        ack = await js.publish(
            f"bench.c{c}.evt", payload, timeout=REQUEST_TIMEOUT_S, headers=headers
        )
        return True, None, ack.seq

    return await run_clients("raw js.publish", clients, limits, one, pids)


# -- the run ----------------------------------------------------------------------------------


def splice_script() -> str:
    script = Path(sys.executable).parent / "splice"
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: install the project (pip install -e .)")
    return str(script)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def median(xs: list[float]) -> float:
    ys = sorted(xs)
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else (ys[mid - 1] + ys[mid]) / 2


def merged(phases: list[Phase]) -> Phase:
    """All rounds of one phase as one (for latency percentiles and error counts)."""
    out = Phase(phases[0].name)
    for ph in phases:
        out.ok += ph.ok
        out.errors.update(ph.errors)
        out.latencies += ph.latencies
        out.elapsed_s += ph.elapsed_s
    return out


async def bench(
    args: argparse.Namespace,
    server: NatsServer,
    services: list[subprocess.Popen[bytes]],
    logs: list[Path],
) -> dict[str, Any]:
    assert server.proc is not None
    pids = {("splice serve" if i == 0 else f"splice serve {i + 1}"): p.pid
            for i, p in enumerate(services)}
    pids |= {"nats-server": server.proc.pid, "bench": os.getpid()}
    limits = Limits(args.duration, args.commands)
    run = uuid.uuid4().hex[:8]
    kinds = ["create", "update"] if args.command == "both" else [args.command]
    main_kind = "update" if "update" in kinds else "create"
    rounds: dict[str, list[Phase]] = {k: [] for k in [*kinds, "raw"]}
    nc = await nats.connect(server.url, name="bench", max_reconnect_attempts=0)
    try:
        await wait_until_serving(nc, services, logs, args.start_timeout)
        print(f"splice serve answers on {server.url}; {args.clients} clients", flush=True)
        if args.warmup > 0:  # not measured: first loads, caches, the default service type
            await splice_create(nc, f"{run}w", args.clients, Limits(args.warmup, None), pids)
        ids = await own_service_types(nc, run, args.clients) if "update" in kinds else []
        js = nc.jetstream()
        await make_raw_stream(js)
        payload: bytes | None = None
        hdrs: dict[str, str] = {}
        for r in range(1, args.rounds + 1):
            label = f" (round {r}/{args.rounds})" if args.rounds > 1 else ""
            for kind in kinds:
                if kind == "create":
                    ph = await splice_create(nc, f"{run}r{r}", args.clients, limits, pids)
                else:
                    ph = await splice_update(nc, ids, args.clients, limits, pids)
                ph.name += label
                rounds[kind].append(ph)
                print(ph.describe(), flush=True)
            if payload is None:
                last_seq = rounds[main_kind][-1].last_seq
                if last_seq is None:
                    raise RuntimeError("the Splice phase had no successful command: no event")
                stream, payload, headers = await sample_event(js, last_seq)
                hdrs = raw_headers(headers)
                print(
                    f"sample event from {stream} seq {last_seq}: payload {len(payload)} B, "
                    f"headers {header_size(headers)} B (raw: {header_size(hdrs)} B)",
                    flush=True,
                )
            ph = await raw_publish(js, payload, hdrs, args.clients, limits, pids)
            ph.name += label
            rounds["raw"].append(ph)
            print(ph.describe(), flush=True)
    finally:
        await nc.close()

    def rate(kind: str) -> float:
        return median([ph.rate for ph in rounds[kind]])

    raw_rate = rate("raw")
    main_rate = rate(main_kind)
    # each round's own ratio (its Splice phase over the raw phase right after it), then their
    # median: the machine's speed moves from minute to minute, and a pair shares its minute
    paired = [s.rate / r.rate for s, r in zip(rounds[main_kind], rounds["raw"], strict=True)
              if r.rate]
    ratio = median(paired) if paired else None
    how = f"median of {args.rounds} rounds" if args.rounds > 1 else "one round"
    print(f"\n{args.clients} clients, {how}:", flush=True)
    for kind in kinds:
        print(f"  Splice servicetype.{kind}: {rate(kind):,.0f} commands/s", flush=True)
    print(f"  raw js.publish: {raw_rate:,.0f}/s", flush=True)
    if ratio is not None:
        each = ", ".join(f"{x:.3f}" for x in paired)
        print(f"  ratio (servicetype.{main_kind} / raw, median of the rounds' ratios): "
              f"{ratio:.3f} ({each})", flush=True)
    result: dict[str, Any] = {
        "command": args.command,
        "rounds": args.rounds,
        "event_bytes": len(payload or b""),
    }
    for kind in kinds:
        all_of = merged(rounds[kind])
        result[f"splice_{kind}_cmds_per_s"] = round(rate(kind), 1)
        result[f"splice_{kind}_p50_ms"] = all_of.percentile_ms(50)
        result[f"splice_{kind}_p99_ms"] = all_of.percentile_ms(99)
        result[f"splice_{kind}_errors"] = sum(all_of.errors.values())
        per_cmd = [ph.cpu_per_cmd_ms for ph in rounds[kind] if ph.cpu_per_cmd_ms is not None]
        result[f"splice_{kind}_cpu_ms_per_cmd"] = round(median(per_cmd), 3) if per_cmd else None
    raw_all = merged(rounds["raw"])
    result["raw_p50_ms"] = raw_all.percentile_ms(50)
    result["raw_p99_ms"] = raw_all.percentile_ms(99)
    result["raw_errors"] = sum(raw_all.errors.values())
    result["ratios"] = [round(x, 4) for x in paired]
    result["splice_cmds_per_s"] = round(main_rate, 1)
    result["raw_publish_per_s"] = round(raw_rate, 1)
    result["ratio"] = round(ratio, 4) if ratio is not None else None
    result["clients"] = args.clients
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per phase (default 10; 600 as a bound with --commands)",
    )
    p.add_argument(
        "--commands",
        type=int,
        default=None,
        help="commands per phase instead (still bounded by --duration)",
    )
    p.add_argument(
        "--command",
        choices=("update", "create", "both"),
        default="update",
        help="update: each client updates its own service type (default); create: new service "
        "types, which all go through the unique-name registry; both: one phase of each",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate the Splice and raw phases this many times (default 3); figures are "
        "medians, the ratio the median of the rounds' ratios (evens out a busy machine)",
    )
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds of creates first")
    p.add_argument("--start-timeout", type=float, default=60.0, help="for splice serve to answer")
    p.add_argument(
        "--serve-cmd",
        default="",
        help="the command that runs `splice` (default: the splice script next to this Python); "
        "e.g. to profile the service",
    )
    p.add_argument(
        "--services",
        type=int,
        default=1,
        help="splice serve processes in the queue group (default 1: the figure the ratio is "
        "judged on; 2 shows what a second process adds)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, store)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.duration is None:
        args.duration = 10.0 if args.commands is None else 600.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="splice-bench-"))
    server = NatsServer(store_dir=tmp / "nats")
    services: list[subprocess.Popen[bytes]] = []
    logs = [tmp / f"splice-serve-{i + 1}.log" for i in range(args.services)]
    try:
        server.start()
        for log in logs:
            with log.open("wb") as out:
                services.append(subprocess.Popen(
                    [*(shlex.split(args.serve_cmd) or [splice_script()]),
                     "serve", "--nats-url", server.url],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))
        print(f"nats-server {server.url} (sync_interval: always) store {tmp}; "
              f"{args.services} splice serve process(es) in one queue group", flush=True)
        try:
            result = asyncio.run(bench(args, server, services, logs))
        except BaseException:
            for log in logs:
                print(f"--- {log.name} (last lines) ---\n{tail(log)}", file=sys.stderr)
            raise
        result["services"] = args.services
        print(json.dumps(result), flush=True)
        return 0
    finally:
        for service in services:
            stop_process(service)
        server.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
