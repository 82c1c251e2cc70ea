"""The command service on a 3-node JetStream cluster survives the loss of the stream leader.

Three real nats-servers (each `sync_interval: always`) form a cluster; `splice serve` runs as a
subprocess against all three and creates SPLICE_EVENTS at R3. Several clients send create
commands concurrently, retrying a timed-out or unavailable request with the same command id.
Meanwhile the stream leader is SIGKILLed, and later restarted on the same store. Afterwards:

* every acknowledged reply's stream sequence is in the stream, on that service type's subject,
  and the type's ServiceTypeCreated event carries the name sent (no acknowledged event was lost);
* every acknowledged name has exactly one ServiceTypeCreated event (retries added nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from splice.natsserver import NatsServer, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

STREAM = "SPLICE_EVENTS"
SUBJECT = "splice.cmd._admin.servicetype.create"
CREATED_FILTER = "splice.evt._admin.servicetype.*.ServiceTypeCreated"
WORKERS = 8
REQUEST_TIMEOUT = 3.0  # one attempt
COMMAND_DEADLINE = 25.0  # all attempts of one command
MAX_ATTEMPTS = 12
RETRY_CODES = {"unavailable", "conflict", "internal"}  # transient: same command id again
PHASE_BEFORE_KILL = 3.0
PHASE_AFTER_KILL = 6.0
PHASE_AFTER_RESTART = 6.0


@dataclass
class Cluster:
    nodes: list[NatsServer]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def by_name(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.stop()


def make_cluster(root: Path, size: int = 3) -> Cluster:
    client_ports = [free_port() for _ in range(size)]
    cluster_ports = [free_port() for _ in range(size)]
    http_ports = [free_port() for _ in range(size)]
    nodes = []
    for i in range(size):
        routes = [f"nats-route://127.0.0.1:{p}" for j, p in enumerate(cluster_ports) if j != i]
        nodes.append(
            NatsServer(
                store_dir=root / f"n{i + 1}",
                port=client_ports[i],
                name=f"n{i + 1}",
                cluster_name="splice-test",
                cluster_port=cluster_ports[i],
                routes=routes,
                http_port=http_ports[i],
                auth_dir=root / "auth",  # one set of accounts and users for the whole cluster
            )
        )
    return Cluster(nodes)


def healthz(node: NatsServer) -> bool:
    """True when the node serves clients and its JetStream is current with the meta leader."""
    try:
        with urllib.request.urlopen(f"http://{node.host}:{node.http_port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def js_api(
    nc: Client, subject: str, body: dict[str, Any] | None, timeout: float = 2.0
) -> Any:
    msg = await nc.request(subject, json.dumps(body).encode() if body else b"", timeout=timeout)
    return json.loads(msg.data)


async def wait_meta_leader(cluster: Cluster, nc: Client, deadline: float) -> None:
    """Until $JS.API.INFO answers without error and every node's healthz is ok."""
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await js_api(nc, "$JS.API.INFO", None, timeout=1.0)
            if "error" not in last:
                ok = await asyncio.gather(*(asyncio.to_thread(healthz, n) for n in cluster.nodes))
                if all(ok):
                    return
        except (nats.errors.Error, TimeoutError) as e:
            last = repr(e)
        await asyncio.sleep(0.2)
    raise AssertionError(f"JetStream has no meta leader in time; last answer: {last!r}")


async def stream_leader(nc: Client, deadline: float) -> str:
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await js_api(nc, f"$JS.API.STREAM.INFO.{STREAM}", None)
            leader = (last.get("cluster") or {}).get("leader")
            if leader:
                assert last["config"]["num_replicas"] == 3, last["config"]
                return str(leader)
        except (nats.errors.Error, TimeoutError) as e:
            last = repr(e)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no leader for stream {STREAM}; last answer: {last!r}")


def start_service(urls: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    splice = Path(sys.executable).parent / "splice"
    env = dict(os.environ, JETSTREAM_REPLICAS="3", JETSTREAM_STREAM=STREAM)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(splice), "serve", "--nats-url", ",".join(urls)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Outcome:
    name: str
    command_id: str
    attempts: int = 0
    reply: dict[str, Any] | None = None
    transient: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    acked_at: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.reply and self.reply.get("ok") is True)


async def send_create(nc: Client, name: str, command_id: str | None = None) -> Outcome:
    """One command, retried with the same command id while the cluster fails over."""
    out = Outcome(name=name, command_id=command_id or str(uuid.uuid4()))
    body = json.dumps(
        {
            "command_id": out.command_id,
            "actor": "cluster-test",
            "name": name,
            "providers": {"loadbalancer": "haproxy"},
        }
    ).encode()
    deadline = time.monotonic() + COMMAND_DEADLINE
    while out.attempts < MAX_ATTEMPTS and time.monotonic() < deadline:
        out.attempts += 1
        try:
            msg = await nc.request(SUBJECT, body, timeout=REQUEST_TIMEOUT)
        except (nats.errors.Error, TimeoutError) as e:
            out.transient.append(type(e).__name__)
            await asyncio.sleep(min(0.1 * out.attempts, 0.5))
            continue
        out.reply = json.loads(msg.data)
        if out.ok:
            out.acked_at = time.monotonic()
            return out
        code = (out.reply.get("error") or {}).get("code")
        if code not in RETRY_CODES:
            return out
        out.transient.append(f"error:{code}")
        await asyncio.sleep(min(0.1 * out.attempts, 0.5))
    return out


async def wait_service(nc: Client, proc: subprocess.Popen[bytes], log: Path) -> Outcome:
    """Until the service acknowledges a first command (which is kept and checked as well)."""
    deadline = time.monotonic() + 20
    command_id = str(uuid.uuid4())
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"splice serve exited with {proc.returncode}:\n{tail(log)}")
        out = await send_create(nc, "st-0", command_id)
        if out.ok:
            return out
        if out.reply is not None and not out.ok:
            raise AssertionError(f"first command failed: {out.reply}\n{tail(log)}")
        await asyncio.sleep(0.2)
    raise AssertionError(f"splice serve did not answer within 20 s:\n{tail(log)}")


async def read_created(nc: Client) -> list[tuple[int, str, dict[str, Any]]]:
    """Every ServiceTypeCreated event in the stream: (seq, subject, payload), by ordered consumer."""
    js = nc.jetstream()
    info = await js.stream_info(STREAM)
    if info.state.messages == 0:
        return []
    sub = await js.subscribe(CREATED_FILTER, ordered_consumer=True, stream=STREAM)
    found: list[tuple[int, str, dict[str, Any]]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=3)
            except nats.errors.TimeoutError:
                break  # nothing at all matched the filter
            found.append((msg.metadata.sequence.stream, msg.subject, json.loads(msg.data)))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


async def test_acknowledged_commands_survive_stream_leader_kill(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    log = tmp_path / "splice-serve.log"
    proc: subprocess.Popen[bytes] | None = None
    nc: Client | None = None
    verify: Client | None = None
    try:
        for node in cluster.nodes:
            await asyncio.to_thread(node.start)
        nc = await nats.connect(
            servers=cluster.urls,
            name="cluster-test",
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
        )
        await wait_meta_leader(cluster, nc, time.monotonic() + 20)

        proc = start_service(cluster.urls, log)
        first = await wait_service(nc, proc, log)
        leader_name = await stream_leader(nc, time.monotonic() + 10)
        victim = cluster.by_name(leader_name)

        outcomes: list[Outcome] = [first]
        counter = iter(range(1, 1_000_000))
        stop = asyncio.Event()
        at: dict[str, float] = {}

        async def worker() -> None:
            while not stop.is_set():
                outcomes.append(await send_create(nc, f"st-{next(counter)}"))

        workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
        try:
            await asyncio.sleep(PHASE_BEFORE_KILL)
            assert proc.poll() is None, tail(log)
            at["kill"] = time.monotonic()
            await asyncio.to_thread(victim.kill)  # SIGKILL the stream leader
            await asyncio.sleep(PHASE_AFTER_KILL)
            at["restart"] = time.monotonic()
            await asyncio.to_thread(victim.start)  # same port, same store
            await asyncio.sleep(PHASE_AFTER_RESTART)
        finally:
            stop.set()
            # Each worker finishes the command it has in flight (bounded by COMMAND_DEADLINE).
            await asyncio.wait_for(asyncio.gather(*workers), COMMAND_DEADLINE + 10)

        failed = [o for o in outcomes if not o.ok]
        acked = [o for o in outcomes if o.ok]
        assert not failed, (
            f"{len(failed)} of {len(outcomes)} commands never acknowledged, e.g. "
            f"{[(o.name, o.attempts, o.transient, o.reply) for o in failed[:5]]}\n{tail(log)}"
        )
        # The cluster kept serving: commands sent after the kill, and after the restart, went in.
        after_kill = [o for o in acked if o.started > at["kill"]]
        after_restart = [o for o in acked if o.started > at["restart"]]
        assert after_kill, "no command sent after the leader was killed was acknowledged"
        assert after_restart, "no command sent after the node came back was acknowledged"

        # Read back through a node that was never killed.
        survivor = next(n for n in cluster.nodes if n is not victim)
        verify = await nats.connect(survivor.url, name="cluster-test-verify", connect_timeout=2)
        js = verify.jetstream()
        created = await read_created(verify)
        created_by_id: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for seq, subject, payload in created:
            created_by_id.setdefault(subject.split(".")[4], []).append((seq, payload))

        for o in acked:
            assert o.reply is not None
            seq, ident = o.reply.get("seq"), str(o.reply["id"])
            assert isinstance(seq, int) and seq > 0, o.reply
            assert isinstance(o.reply.get("version"), int) and o.reply["version"] >= 1, o.reply
            # The acknowledged sequence is in the stream (a stream get: served by the leader).
            try:
                stored = await js.get_msg(STREAM, seq)
            except NotFoundError:
                raise AssertionError(
                    f"acknowledged seq {seq} ({o.name}) is not in {STREAM}"
                ) from None
            assert stored.subject.startswith("splice.evt._admin.servicetype."), stored.subject
            assert ident in stored.subject, (o.reply, stored.subject)
            # ... and the type was created once, with this name, at or before that sequence.
            mine = created_by_id.get(ident.rsplit(".", 1)[-1], [])
            assert len(mine) == 1, (o.reply, mine)
            assert mine[0][0] <= seq and mine[0][1].get("name") == o.name, (o.reply, mine)

        names = {o.name for o in acked}
        per_name = Counter(p.get("name") for _, _, p in created if p.get("name") in names)
        duplicates = {n: c for n, c in per_name.items() if c != 1}
        assert not duplicates, f"names created more than once: {duplicates}"
        assert sum(per_name.values()) == len(names)
        retried = sum(1 for o in acked if o.attempts > 1)
        times = sorted(o.acked_at for o in acked)
        pause = max((b - a for a, b in pairwise(times)), default=0.0)
        print(
            f"acked={len(acked)} after_kill={len(after_kill)} "
            f"after_restart={len(after_restart)} retried={retried} "
            f"killed={victim.name} longest_pause_between_acks={pause:.1f}s"
        )
    finally:
        for client in (verify, nc):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        if proc is not None:
            await asyncio.to_thread(stop_service, proc)
        await asyncio.to_thread(cluster.stop)
