"""How one-message writes should reach JetStream: alone, or grouped into atomic batches.

The command path's writes go through `splice.events.committer.GroupCommitter`. This measures
its store path alone (no decision): T threads each commit N one-message writes (an event's size
and headers) to a stream of their own, on one nats-server with ``sync_interval: always``, under
each shape in turn, alternating rounds on the same server:

* ``direct=64``: plain publishes, up to 64 in flight (the default);
* ``direct=0 inflight=K``: every write queued and sent in atomic batches, K batches at once.

It prints writes/s and the process's CPU per write for each shape (medians of the rounds) and,
last, one JSON line; ``batch_vs_direct`` is the best batched shape's rate over the direct one's.

    .venv/bin/python bench/group_commit.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from splice.events.committer import GroupCommitter
from splice.events.natsio import NatsThread
from splice.events.natswire import OutMsg
from splice.events.store_datastore import stream_config
from splice.natsserver import NatsServer

SHAPES = [(64, 1), (0, 1), (0, 2), (0, 4)]  # (direct, inflight)
HEADERS = {"Splice-Version": "2", "Splice-Topic": "ServiceTypeUpdated", "Splice-Actor": "bench",
           "Splice-Command-Id": "0f3c0a5e-9d7b-4c1e-8a57-2b8f7d6e1c44", "Splice-Tenant": "_admin"}


def run_shape(conn: NatsThread, direct: int, inflight: int, threads: int, writes: int,
              tag: str) -> tuple[float, float]:
    """(writes per second, CPU microseconds per write) of one shape."""
    committer = GroupCommitter(conn, inflight=inflight, direct=direct)
    payload = b"x" * 330

    def worker(t: int) -> None:
        for _ in range(writes):
            msg = OutMsg(f"bgc.evt.{tag}.{t}", payload, HEADERS)
            committer.submit([msg]).result(30)

    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = threads * writes
    return n / elapsed, cpu / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=32, help="concurrent writers (default 32)")
    p.add_argument("--writes", type=int, default=60, help="writes per thread and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="splice-bgc-"))
    server = NatsServer(store_dir=tmp / "nats")
    figures: dict[tuple[int, int], list[tuple[float, float]]] = {s: [] for s in SHAPES}
    try:
        server.start()
        conn = NatsThread(server.url, name="bench-group-commit")
        try:
            conn.call(conn.api("$JS.API.STREAM.CREATE.BGC", stream_config("BGC", "bgc")))
            for r in range(args.rounds):
                for direct, inflight in SHAPES:
                    figures[(direct, inflight)].append(run_shape(
                        conn, direct, inflight, args.threads, args.writes, f"r{r}d{direct}i{inflight}"))
        finally:
            conn.close()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, float | int] = {}
    for (direct, inflight), runs in figures.items():
        name = "direct" if direct else f"batch_inflight_{inflight}"
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:18s} {rate:8,.0f} writes/s  {cpu:5.0f} us CPU per write  "
              f"rounds: {[round(r) for r, _ in runs]}", flush=True)
        result[f"{name}_per_s"] = round(rate, 1)
        result[f"{name}_cpu_us"] = round(cpu, 1)
    best_batch = max(v for k, v in result.items() if k.startswith("batch") and k.endswith("_per_s"))
    result["batch_vs_direct"] = round(best_batch / result["direct_per_s"], 3)
    result["threads"] = args.threads
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
