"""`splice serve`, `splice projector` and `splice agent` with `--metrics-port 0` each serve
their own Prometheus text on 127.0.0.1 at the URL they print: command latency on the
service's, projector lag on the projector's, converge duration on the agent's. Without the
option, a process serves none.

Real processes (the installed `splice`) against a real nats-server; the agent owns nothing
but its prefix ``splm-`` and serves no load balancer (its per-service counters are in
tests/dataplane/test_stats_e2e.py, which scrapes them over HTTP as well).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError
from prometheus_client.parser import text_string_to_metric_families

from splice.natsserver import NatsServer
from tests.helpers import wait_for

SPLICE = str(Path(sys.executable).parent / "splice")
URL = re.compile(r"metrics: (http://127\.0\.0\.1:[0-9]+/metrics)")


class Process:
    """One `splice …` process; its stdout is read on a thread for the metrics URL."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([SPLICE, *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def metrics_url(self, deadline_s: float = 20.0) -> str:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for line in list(self.lines):
                if m := URL.search(line):
                    return m.group(1)
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.lines}"
            time.sleep(0.05)
        raise AssertionError(f"no metrics URL printed: {self.lines}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def env(fresh_nats: NatsServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield dict(os.environ, SPLICE_NATS_URL=fresh_nats.url, SPLICE_STATE_DIR=str(tmp_path / "st"),
               SPLICE_LOG_LEVEL="WARNING", SPLICE_ACTOR="metrics-test")


async def create_servicetype(url: str, deadline_s: float = 30.0) -> None:
    """Once the command service answers (it starts with the process)."""
    nc = await nats.connect(url)
    body = {"command_id": str(uuid.uuid4()), "actor": "t", "name": "pm",
            "providers": {"loadbalancer": "haproxy"}}
    end = time.monotonic() + deadline_s
    try:
        while True:
            try:
                msg = await nc.request("splice.cmd._admin.servicetype.create",
                                       json.dumps(body).encode(), timeout=15)
                break
            except NoRespondersError:
                assert time.monotonic() < end, "the command service did not answer"
                await asyncio.sleep(0.1)
        reply = json.loads(msg.data)
        assert reply["ok"], reply
    finally:
        await nc.close()


async def test_serve_projector_and_agent_each_serve_their_own_metrics(
        env: dict[str, str], fresh_nats: NatsServer, tmp_path: Path) -> None:
    procs = [
        Process("serve", "--metrics-port", "0", env=env),
        Process("projector", "--metrics-port", "0", "--db", str(tmp_path / "rm.db"), env=env),
        Process("agent", "--metrics-port", "0", "--host", "pm-host", "--prefix", "splm-",
                "--provider", "haproxy", "--state-dir", str(tmp_path / "agent"), env=env),
        Process("projector", "--db", str(tmp_path / "rm2.db"), env=env),  # no option: none
    ]
    try:
        serve, projector, agent = (p.metrics_url() for p in procs[:3])
        assert len({serve, projector, agent}) == 3
        await create_servicetype(fresh_nats.url)
        ok = (("command", "servicetype.create"), ("outcome", "ok"))
        await wait_for(lambda: scrape(serve).get(("splice_command_seconds_count", ok), 0) >= 1, 15)
        await wait_for(lambda: scrape(projector).get(("splice_projector_lag", ())) == 0.0, 20)
        await wait_for(lambda: scrape(agent).get(("splice_agent_converge_seconds_count", ()),
                                                 0) >= 1, 30)
        assert ("splice_agent_converge_errors_total", ()) in scrape(agent)
        # each process serves its own registry: no command was handled in the projector
        assert ("splice_command_seconds_count", ok) not in scrape(projector)
        assert scrape(serve)[("splice_agent_converge_seconds_count", ())] == 0  # not an agent
        assert not any("metrics:" in line for line in procs[3].lines)
    finally:
        for p in procs:
            p.stop()
