"""The cluster of `tests/test_faults.py`, from real processes, and how its faults are counted.

A `Topology` is three nats-servers (JetStream, `sync_interval: always`, SPLICE_EVENTS at R3:
`tests.test_cluster.make_cluster`), command services (`splice serve` subprocesses, one queue
group, each against all three nodes) and the projector (`splice projector` subprocess) on a
PostgreSQL database of the test's own, dropped afterwards. `Load` is clients sending
`servicetype.create` commands concurrently, each with a unique name, each retried with the same
command id (`tests.test_cluster.send_create`). `count` reads the stream back and says what became
of them; `projector_caught_up` and `verify` check the read models after the fault.
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
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from tests.test_cluster import (
    STREAM,
    Cluster,
    Outcome,
    healthz,
    js_api,
    make_cluster,
    read_created,
    send_create,
    stop_service,
    tail,
    wait_meta_leader,
)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SPLICE = str(Path(sys.executable).parent / "splice")
EVENTS = "splice.evt.>"


def pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def wait_log(proc: subprocess.Popen[bytes], log: Path, text: str, what: str,
                   deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while text not in await asyncio.to_thread(log.read_text, errors="replace"):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > end:
            raise AssertionError(f"{what} not ready within {deadline}s:\n{tail(log)}")
        await asyncio.sleep(0.05)


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
          ) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env or dict(os.environ),
                                start_new_session=True)


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's group (it was started in a session of its own)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@dataclass
class Topology:
    root: Path
    cluster: Cluster = field(init=False)
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)
    service_logs: list[Path] = field(default_factory=list)
    projector: subprocess.Popen[bytes] | None = None
    projector_log: Path | None = None
    db_name: str = field(default_factory=lambda: f"splice_faults_{uuid.uuid4().hex[:10]}")
    db_created: bool = False
    nc: Client | None = None

    def __post_init__(self) -> None:
        self.cluster = make_cluster(self.root)

    @property
    def url(self) -> str:
        return ",".join(self.cluster.urls)

    @property
    def db(self) -> str:
        return pg_url(self.db_name)

    async def start(self, services: int = 2, projector: bool = True) -> None:
        for node in self.cluster.nodes:
            await asyncio.to_thread(node.start)
        self.nc = await nats.connect(servers=self.cluster.urls, name="faults-test",
                                     connect_timeout=2, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.2)
        await wait_meta_leader(self.cluster, self.nc, time.monotonic() + 20)
        for _ in range(services):  # one by one: the first creates the stream at R3
            await self.start_service()
        if projector:
            await asyncio.to_thread(self.create_db)
            await self.start_projector()

    async def start_service(self) -> int:
        i = len(self.services)
        log = self.root / f"serve-{i + 1}.log"
        env = dict(os.environ, JETSTREAM_REPLICAS="3", JETSTREAM_STREAM=STREAM)
        # debug: each accepted command's line, which names its id (the tests count by it)
        proc = spawn([SPLICE, "serve", "--nats-url", self.url, "--log-level", "DEBUG"], log, env)
        self.services.append(proc)
        self.service_logs.append(log)
        await wait_log(proc, log, "command service ready", f"splice serve #{i + 1}")
        return i

    def create_db(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True

    async def start_projector(self) -> None:
        self.projector_log = self.root / "projector.log"
        self.projector = spawn([SPLICE, "projector", "--nats-url", self.url, "--db", self.db],
                               self.projector_log)
        await wait_log(self.projector, self.projector_log, "projector: read models in",
                       "splice projector")

    def kill_projector(self) -> None:
        assert self.projector is not None
        sigkill(self.projector)

    def positions(self) -> dict[str, int]:
        """The projector's committed position of each view, read from its database."""
        with psycopg.connect(self.db, connect_timeout=5) as conn:
            try:
                rows = conn.execute("SELECT view, seq FROM projection_positions").fetchall()
            except psycopg.errors.UndefinedTable:
                return {}
        return {str(v): int(s) for v, s in rows}

    async def last_event_seq(self) -> int:
        """The newest event's stream sequence, asked of the stream leader (not a direct get)."""
        assert self.nc is not None
        try:
            msg = await self.nc.jetstream().get_last_msg(STREAM, EVENTS)
        except NotFoundError:
            return 0
        return int(msg.seq)

    async def stream_state(self) -> dict[str, Any]:
        assert self.nc is not None
        info = await js_api(self.nc, f"$JS.API.STREAM.INFO.{STREAM}", None)
        return dict(info)

    async def wait_replicas_current(self, deadline: float = 30.0) -> dict[str, Any]:
        """Until every node is healthy and the stream's replicas are all current (no lag)."""
        end = time.monotonic() + deadline
        last: Any = None
        while time.monotonic() < end:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                last = await self.stream_state()
                cl = last.get("cluster") or {}
                replicas = cl.get("replicas") or []
                ok = await asyncio.gather(*(asyncio.to_thread(healthz, n)
                                            for n in self.cluster.nodes))
                if (all(ok) and cl.get("leader") and len(replicas) == 2
                        and all(r.get("current") and not r.get("lag") for r in replicas)):
                    return dict(last)
            await asyncio.sleep(0.2)
        raise AssertionError(f"the stream's replicas are not current in time: {last!r}")

    async def projector_caught_up(self, deadline: float = 30.0) -> tuple[int, int]:
        """Until every view's position is the stream's newest event. (position, stream end)."""
        assert self.projector is not None and self.projector_log is not None
        end = time.monotonic() + deadline
        last: tuple[dict[str, int], int] = ({}, -1)
        while time.monotonic() < end:
            if self.projector.poll() is not None:
                raise AssertionError(f"the projector exited:\n{tail(self.projector_log)}")
            target = await self.last_event_seq()
            positions = await asyncio.to_thread(self.positions)
            last = (positions, target)
            if positions and all(p == target for p in positions.values()):
                return target, target
            await asyncio.sleep(0.2)
        raise AssertionError(f"the projector did not catch up: positions {last[0]}, "
                             f"stream's newest event {last[1]}\n{tail(self.projector_log)}")

    def read_model_names(self) -> list[str]:
        with psycopg.connect(self.db, connect_timeout=5) as conn:
            return [str(r[0]) for r in conn.execute("SELECT name FROM servicetypes").fetchall()]

    async def verify(self) -> tuple[int, dict[str, Any], str]:
        """`splice projections verify` against the projector's database: (exit code, report)."""
        proc = await asyncio.create_subprocess_exec(
            SPLICE, "projections", "verify", "--db", self.db, "--nats-url", self.url,
            "-o", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        try:
            report = json.loads(out)
        except json.JSONDecodeError:
            report = {}
        return int(proc.returncode or 0), report, (out + err).decode(errors="replace")[-3000:]

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        for proc in [*self.services, *([self.projector] if self.projector else [])]:
            await asyncio.to_thread(stop_service, proc)
        await asyncio.to_thread(self.cluster.stop)
        if self.db_created:
            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def logs(self) -> str:
        parts = [f"--- {p.name}\n{tail(p)}" for p in self.service_logs]
        if self.projector_log is not None:
            parts.append(f"--- projector\n{tail(self.projector_log)}")
        return "\n".join(parts)


@dataclass
class Load:
    """`workers` clients, each sending one command after another until stopped."""

    nc: Client
    workers: int = 8
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _next: int = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def _worker(self) -> None:
        while not self._stop.is_set():
            self._next += 1
            self.outcomes.append(await send_create(self.nc, f"st-{self._next}"))

    async def stop(self) -> None:
        """Each worker finishes the command in flight (all of its attempts)."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 40)


@dataclass
class Counts:
    sent: int
    acknowledged: int
    present: int  # acknowledged, and its event is in the stream where the reply said
    doubled: int  # names with more than one ServiceTypeCreated, plus retries refused name_taken
    lost: int  # acknowledged, and not in the stream
    unacknowledged: int  # never acknowledged (every attempt failed); not a loss, reported
    retried: int  # acknowledged after more than one attempt
    events: int  # ServiceTypeCreated events in the stream
    problems: list[str]

    def line(self, fault: str, **extra: object) -> str:
        more = " ".join(f"{k}={v}" for k, v in extra.items())
        return (f"[{fault}] acknowledged={self.acknowledged} present={self.present} "
                f"doubled={self.doubled} lost={self.lost} sent={self.sent} "
                f"unacknowledged={self.unacknowledged} retried={self.retried} "
                f"events={self.events} {more}").rstrip()


async def count(nc: Client, outcomes: list[Outcome]) -> Counts:
    """What became of every command: read back from the stream (leader-served gets)."""
    js = nc.jetstream()
    created = await read_created(nc)
    by_id: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for seq, subject, payload in created:
        by_id.setdefault(subject.split(".")[4], []).append((seq, payload))
    acked = [o for o in outcomes if o.ok]
    problems: list[str] = []
    present = 0
    for o in acked:
        assert o.reply is not None
        seq, ident = o.reply.get("seq"), str(o.reply["id"])
        try:
            stored = await js.get_msg(STREAM, int(seq)) if isinstance(seq, int) else None
        except NotFoundError:
            stored = None
        mine = by_id.get(ident, [])
        if (stored is not None and ident in stored.subject
                and any(p.get("name") == o.name and s <= int(seq) for s, p in mine)):
            present += 1
        else:
            problems.append(f"lost: {o.name} {o.reply} stored={stored and stored.subject}")
    per_name = Counter(p.get("name") for _, _, p in created)
    sent_names = {o.name for o in outcomes}
    doubled_names = {n: c for n, c in per_name.items() if c > 1 and n in sent_names}
    refused = [o for o in outcomes if o.reply and not o.ok
               and (o.reply.get("error") or {}).get("code") == "name_taken"]
    problems += [f"doubled: {n} x{c}" for n, c in doubled_names.items()]
    problems += [f"a retry made anew and refused: {o.name} {o.reply}" for o in refused]
    unacked = [o for o in outcomes if not o.ok]
    problems += [f"unacknowledged: {o.name} attempts={o.attempts} {o.transient[-3:]} {o.reply}"
                 for o in unacked if o not in refused]
    return Counts(
        sent=len(outcomes),
        acknowledged=len(acked),
        present=present,
        doubled=len(doubled_names) + len(refused),
        lost=len(acked) - present,
        unacknowledged=len(unacked),
        retried=sum(1 for o in acked if o.attempts > 1),
        events=len(created),
        problems=problems,
    )
