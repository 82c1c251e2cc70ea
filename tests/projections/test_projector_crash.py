"""Exactly once through crashes: the projector is SIGKILLed mid-batch, restarted, and its read
models equal a clean rebuild, with exactly one audit row per event.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import nats
from streamgen import Appender, servicetype_history

from splice.natsserver import NatsServer
from splice.projections.maintenance import verify
from splice.projections.store import open_store

EVENTS_TYPES = 1500  # 1500 types x (create + 5 updates) + 150 deletes = 9150 events


def start_projector(url: str, db_url: str, batch: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "splice.projections.runner",
            "--nats-url",
            url,
            "--db",
            db_url,
            "--batch",
            str(batch),
            "--no-queries",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, SPLICE_LOG_LEVEL="WARNING"),
    )


def position(db_url: str) -> int:
    store = open_store(db_url)
    try:
        return min(store.positions().values(), default=0)
    except Exception:  # the projector has not created its tables yet
        return 0
    finally:
        store.close()


def wait_position(
    db_url: str, cond: Any, proc: subprocess.Popen[bytes], timeout: float = 120.0
) -> int:
    deadline = time.monotonic() + timeout
    while True:
        pos = position(db_url)
        if cond(pos):
            return pos
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, f"position stuck at {pos}"
        time.sleep(0.02)


async def test_sigkill_mid_batch_then_restart_equals_a_clean_rebuild(
    fresh_nats: NatsServer, db_url: str
) -> None:
    appender = Appender(fresh_nats.url)
    try:
        seqs = appender.append(list(servicetype_history(EVENTS_TYPES, 5)), batch=1000)
    finally:
        appender.close()
    end = seqs[-1]
    kills = []
    for round_ in range(2):
        with start_projector(fresh_nats.url, db_url, batch=1500) as proc:  # closes its pipe
            try:
                # Kill once it has committed something and is busy with the next batches.
                before = wait_position(db_url, lambda p, r=round_: p > (r * end // 3), proc)
                assert before < end, "the projector finished before it could be killed"
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills.append((before, position(db_url)))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
    assert all(after < end for _, after in kills), kills
    with start_projector(fresh_nats.url, db_url, batch=1500) as proc:
        try:
            wait_position(db_url, lambda p: p >= end, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)

    store = open_store(db_url)
    try:
        count, distinct, lo, hi = store.select(
            "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM audit"
        )[0]
    finally:
        store.close()
    assert count == distinct == len(seqs)
    assert (lo, hi) == (seqs[0], end)

    nc = await nats.connect(fresh_nats.url)
    try:
        report = await asyncio.wait_for(verify(nc.jetstream(), db_url), 120)
    finally:
        await nc.close()
    assert report["position"] == end
    assert report["identical"], report
    assert report["tables"]["servicetypes"]["rows"] == EVENTS_TYPES
