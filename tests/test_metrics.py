"""The processes' Prometheus metrics, served over HTTP: command latency by command and outcome,
events appended, projector lag; read back as Prometheus text from the URL `serve` returns."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from pathlib import Path

import nats
from prometheus_client.parser import text_string_to_metric_families

from splice.events import metrics
from splice.natsserver import NatsServer
from splice.projections.runner import run_projector
from splice.services.service import CommandService
from tests.helpers import wait_for


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_commands_appends_and_projector_lag_are_served_as_prometheus_text(
        fresh_nats: NatsServer, tmp_path: Path) -> None:
    url = metrics.serve(0)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    before = await asyncio.to_thread(scrape, url)
    svc = CommandService(fresh_nats.url)
    await svc.start()
    nc = await nats.connect(fresh_nats.url)
    stop = asyncio.Event()
    try:
        async def send(body: dict[str, object]) -> dict[str, object]:
            msg = await nc.request("splice.cmd._admin.servicetype.create", json.dumps(
                {"command_id": str(uuid.uuid4()), "actor": "t", **body}).encode(), timeout=10)
            return dict(json.loads(msg.data))

        ok = await send({"name": "m1", "providers": {"loadbalancer": "haproxy"}})
        assert ok["ok"]
        refused = await send({"name": "m1", "providers": {"loadbalancer": "haproxy"}})
        assert not refused["ok"]
        metrics.PROJECTOR_LAG.set(-1)  # not a lag: only the projector's batches set it again
        projecting = asyncio.create_task(run_projector(fresh_nats.url, str(tmp_path / "rm.db"), stop))
        # it applied the stream up to its last message: nothing pending after its last batch
        await wait_for(lambda: scrape(url).get(("splice_projector_lag", ())) == 0.0, 15)
        after = await asyncio.to_thread(scrape, url)
        ok_key = {"command": "servicetype.create", "outcome": "ok"}
        taken = {"command": "servicetype.create", "outcome": "name_taken"}
        assert (value(after, "splice_command_seconds_count", **ok_key)
                - value(before, "splice_command_seconds_count", **ok_key)) == 1
        assert (value(after, "splice_command_seconds_count", **taken)
                - value(before, "splice_command_seconds_count", **taken)) == 1
        assert value(after, "splice_command_seconds_bucket", le="10.0", **ok_key) >= 1
        appended = (value(after, "splice_events_appended_total")
                    - value(before, "splice_events_appended_total"))
        assert appended >= 1  # the service type's event (and the default's singleton's)
        stop.set()
        await asyncio.wait_for(projecting, 15)
    finally:
        stop.set()
        await nc.close()
        await svc.stop()
