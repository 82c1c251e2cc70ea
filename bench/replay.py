"""Replay benchmark: rebuild the read models from a long stream, against the raw read rate.

    .venv/bin/python bench/replay.py [--events 100000] [--backend sqlite|postgres|both]
                                     [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]

Starts its own nats-server (free port, temporary store, fsync always as Splice runs it), fills
SPLICE_EVENTS with realistic service-type events (create, then updates that change description
and providers, every 10th type deleted) through the JetStream recorder in atomic batches of
1000, then in the same run:

1. raw: how fast nats-py reads the stream — an ordered consumer with a callback that only counts
   (the fastest consumer shape nats-py has: fetch loops and pull requests are slower). The
   `ratio` is against nats-py's own client; the same read through the client Splice connects
   with (`splice.events.natsclient`, which parses header blocks faster) is reported beside it,
   with the ratios against it (``*_splice_client``);
2. replay: a full rebuild of every read model (audit log, resources, service types) into a
   fresh database — the projector exactly as `splice projections rebuild` runs it.

Then, untimed, the first replay's database is checked as `splice projections verify` checks a
live one: a rebuild into a scratch database, here in batches of another size (997 events, so
that other batch boundaries must give the same rows), compared table by table.

The raw reads and the replays are measured in rounds (``--rounds``, 3 by default): each round
reads the stream raw, then replays it, so that each replay has a raw read of its own minutes'
machine beside it. A round's ratio is its replay's rate over its raw read's; the ``ratio``
printed is the median of the rounds' ratios (each round's is printed on stderr, and listed in
``ratios``). These machines are shared, and their speed moves within a minute: a median of
paired rounds is steadier than one pair, and than the best of each measure apart.

The last line is JSON: ``replay_events_per_s``, ``raw_read_per_s`` (medians), ``ratio`` and
``verified`` (for SQLite; with ``--backend both`` also ``postgres_replay_events_per_s``,
``postgres_ratio`` and ``postgres_verified``), ``raw_read_splice_client_per_s`` and the
``*ratio_splice_client`` against it, ``backend``, ``events`` and ``rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
from eventsourcing.persistence import StoredEvent
from nats.js.api import ConsumerConfig, DeliverPolicy

from splice.events import natsclient
from splice.events.jetstream import JetStreamFactory
from splice.natsserver import NatsServer
from splice.projections.maintenance import verify
from splice.projections.parallel import REBUILD_BATCH, project_until
from splice.projections.reading import last_event_seq
from splice.projections.store import with_database

_encode = msgspec.json.Encoder().encode


def generate(n_events: int, per_type: int = 10) -> list[StoredEvent]:
    """`n_events` service-type events: each type created, then updated `per_type - 1` times."""
    n_types = max(1, n_events // per_type)
    ids = [str(uuid.uuid4()) for _ in range(n_types)]
    now = datetime.now(UTC).isoformat()
    out: list[StoredEvent] = []
    for version in range(1, per_type + 1):
        for n, i in enumerate(ids):
            if len(out) >= n_events:
                return out
            cmd = str(uuid.uuid4())
            payload: dict[str, Any] = {
                "timestamp": now,
                "actor": f"operator-{n % 7}",
                "command_id": cmd,
                "correlation_id": cmd,
                "schema": 1,
            }
            if version == 1:
                topic = "ServiceTypeCreated"
                payload["aggregate"] = "servicetype"
            elif version == per_type and n % 10 == 0:
                topic = "ServiceTypeDeleted"
            else:
                topic = "ServiceTypeUpdated"
            if topic != "ServiceTypeDeleted":
                payload |= {
                    "name": f"type-{n}",
                    "description": f"generated service type {n}, revision {version}",
                    "providers": {"loadbalancer": "haproxy", "firewall": "nftables"}
                    if (n + version) % 3 == 0
                    else {"loadbalancer": "nftables-l4"},
                }
            out.append(
                StoredEvent(
                    originator_id=f"_admin.servicetype.{i}",
                    originator_version=version,
                    topic=topic,
                    state=_encode(payload),
                )
            )
    return out


def fill(url: str, n_events: int) -> float:
    """Append the events in atomic batches of 1000; returns the append rate."""
    events = generate(n_events)
    factory = JetStreamFactory({"NATS_URL": url})
    recorder = factory.application_recorder()
    t0 = time.perf_counter()
    headers = {"Splice-Actor": "bench", "Splice-Command-Id": "bench", "Splice-Correlation-Id": "b"}
    for i in range(0, len(events), 1000):
        recorder.insert_events(events[i : i + 1000], headers=headers)
    elapsed = time.perf_counter() - t0
    factory.close()
    return len(events) / elapsed


async def raw_read(url: str, n: int, connect: Any = nats.connect) -> float:
    """Events per second an ordered consumer with a counting callback receives (on a
    connection `connect` makes: nats-py's own client by default)."""
    nc = await connect(url)
    js = nc.jetstream()
    done = asyncio.Event()
    count = 0

    async def cb(msg: Any) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    t0 = time.perf_counter()
    sub = await js.subscribe(
        "splice.evt.>",
        stream="SPLICE_EVENTS",
        ordered_consumer=True,
        cb=cb,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        pending_msgs_limit=n * 2,
    )
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    await nc.close()
    return n / elapsed


async def replay(url: str, db_url: str, batch: int) -> tuple[float, int]:
    """Rebuild every view from the start into `db_url`; returns (events/s, events). On the
    connection `splice projections rebuild` makes (Splice's client: `natsclient`)."""
    nc = await natsclient.connect(url)
    js = nc.jetstream()
    end = await last_event_seq(js)
    t0 = time.perf_counter()
    await project_until(js, db_url, end, batch_size=batch)
    elapsed = time.perf_counter() - t0
    await nc.close()
    return end / elapsed, end


def scratch_pg(base_url: str) -> tuple[str, Any]:
    """A fresh PostgreSQL database for the run, and how to drop it afterwards."""
    import psycopg

    name = f"splice_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return with_database(base_url, name), drop


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory(prefix="splice-replay-") as tmp:
        server = NatsServer(store_dir=Path(tmp) / "nats")
        server.start()
        try:
            append_rate = fill(server.url, args.events)
            print(f"appended {args.events} events at {append_rate:,.0f}/s", file=sys.stderr)
            rounds: list[dict[str, float]] = []
            verified: dict[str, bool] = {}
            for i in range(args.rounds):
                one = {"raw": await raw_read(server.url, args.events),
                       "raw_mine": await raw_read(server.url, args.events, natsclient.connect)}
                for backend in backends:
                    db_url, drop = (str(Path(tmp) / f"rm{i}.sqlite"), None) \
                        if backend == "sqlite" else scratch_pg(args.pg_url)
                    try:
                        one[backend], _ = await replay(server.url, db_url, args.batch)
                        if i == 0:
                            verified[backend] = await check(server.url, db_url)
                    finally:
                        if drop is not None:
                            drop()
                print(f"round {i + 1}: raw read {one['raw']:,.0f}/s (Splice's client "
                      f"{one['raw_mine']:,.0f}/s); " + "; ".join(
                          f"{b} {one[b]:,.0f}/s, ratio {one[b] / one['raw']:.3f}"
                          for b in backends), file=sys.stderr)
                rounds.append(one)
            raw, raw_mine = _median(rounds, "raw"), _median(rounds, "raw_mine")
            result["raw_read_per_s"] = round(raw)
            result["raw_read_splice_client_per_s"] = round(raw_mine)
            for backend in backends:
                prefix = "postgres_" if backend == "postgres" and args.backend == "both" else ""
                rate = _median(rounds, backend)
                ratio = statistics.median(r[backend] / r["raw"] for r in rounds)
                mine = statistics.median(r[backend] / r["raw_mine"] for r in rounds)
                result[f"{prefix}replay_events_per_s"] = round(rate)
                result[f"{prefix}ratio"] = round(ratio, 3)
                result[f"{prefix}ratio_splice_client"] = round(mine, 3)
                result[f"{prefix}verified"] = verified[backend]
                if args.rounds > 1:
                    result[f"{prefix}ratios"] = [round(r[backend] / r["raw"], 3) for r in rounds]
        finally:
            server.stop()
    result["backend"] = args.backend
    result["events"] = args.events
    result["rounds"] = args.rounds
    return result


def _median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


async def check(url: str, db_url: str) -> bool:
    """`splice projections verify` on a replayed database: identical to a rebuild?"""
    nc = await natsclient.connect(url)
    try:
        report = await verify(nc.jetstream(), db_url, batch_size=997)
    finally:
        await nc.close()
    if not report["identical"]:
        print(f"NOT identical to a rebuild: {json.dumps(report)[:2000]}", file=sys.stderr)
    return bool(report["identical"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay benchmark (see the module docstring).")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--batch", type=int, default=REBUILD_BATCH,
                        help="events per transaction (default: the rebuild's)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (raw reads, replays); the ratios are their medians")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
