"""Fairness and back-pressure on the command side (issue 11).

The fair queue on its own (pure, on an injected clock), the cut of replies too big for the
server, and the flood test: one tenant sends thousands of valid `network.create` in a few
seconds while other tenants (and `_admin`) go on with their own commands; their p99 latency
during the flood, against a quiet baseline, must stay within `RATIO_GOAL` times, every request
gets an answer (ok, or `unavailable` with a retry hint; never a timeout), and every accepted
create took effect exactly once.

The command service and the flooder run as processes of their own (as in production: the
service is `splice serve`, the flooder some other client); this file is their program too:

    python tests/test_fairness.py serve <nats-url> <env as JSON>
    python tests/test_fairness.py flood <nats-url> <count> <seconds>

The flood test prints its figures; see them with ``pytest -s tests/test_fairness.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from splice.events.contracts import Error, Failed, Ok
from splice.natsserver import NatsServer
from splice.services.admission import MIN_RETRY_MS, Busy, FairQueue
from splice.services.requests import fit
from splice.services.service import CommandService

pytestmark = pytest.mark.trust

FLOODER = "flood"
QUIET = ("quiet-a", "quiet-b", "quiet-c", "quiet-d")
FLOOD_COUNT = 25_000  # network.create from one tenant ...
FLOOD_SECONDS = 10.0  # ... spread over this many seconds (the issue saw 25,000 in 5 s)
PUBLISHERS = 4
QUIET_SECONDS = 6.0  # before the flood, and again after it
RATIO_GOAL = 3.0
REQUEST_TIMEOUT = 10.0
HERE = Path(__file__).resolve()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fair(clock: Clock, **bounds: Any) -> FairQueue[str]:
    kw: dict[str, Any] = {
        "workers": 2,
        "tenant_workers": 2,
        "shared_workers": 2,
        "limit": 100,
        "tenant_limit": 100,
        "max_wait": 5.0,
    }
    kw.update(bounds)
    return FairQueue(clock=clock, **kw)


def take_all(q: FairQueue[str]) -> list[str]:
    """Run the queue dry, one worker at a time: the order items are taken in."""
    order = []
    while (got := q.take()) is not None:
        tenant, item, late = got
        assert late is None
        order.append(item)
        q.done(tenant, 0.01)
    return order


# -- the fair queue, pure --------------------------------------------------------------------


def test_a_tenant_with_one_command_waits_behind_one_turn_not_behind_anothers_thousand() -> None:
    q = fair(Clock(), workers=1, tenant_workers=1, shared_workers=1, tenant_limit=1000, limit=2000)
    for i in range(1000):
        assert q.admit("big", f"big-{i}") is None
    assert q.admit("small", "small-0") is None
    assert q.admit("other", "other-0") is None
    assert take_all(q)[:4] == ["big-0", "small-0", "other-0", "big-1"]


def test_tenants_with_waiting_work_are_taken_in_turn() -> None:
    q = fair(Clock(), workers=1)
    for t in ("a", "b", "c"):
        for i in range(3):
            assert q.admit(t, f"{t}{i}") is None
    assert take_all(q) == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]


def test_one_tenant_never_holds_more_than_its_workers() -> None:
    q = fair(Clock(), workers=4, tenant_workers=2, shared_workers=2)
    for i in range(5):
        q.admit("big", f"big-{i}")
    taken = [q.take(), q.take(), q.take()]
    assert [t[1] if t else None for t in taken] == ["big-0", "big-1", None]  # 2 of 4 workers
    q.admit("small", "small-0")
    got = q.take()
    assert got is not None and got[1] == "small-0"  # a free worker was kept for the others
    q.done("big", 0.01)
    got = q.take()
    assert got is not None and got[1] == "big-2"


def test_alone_a_tenant_uses_its_workers_and_beside_others_only_its_shared_ones() -> None:
    clock = Clock()
    q = fair(clock, workers=10, tenant_workers=8, shared_workers=2, active_window=1.0)
    for i in range(20):
        q.admit("big", f"big-{i}")
    alone = [q.take() for _ in range(9)]
    assert sum(t is not None for t in alone) == 8  # alone: all of `tenant_workers`
    q.admit("small", "small-0")
    got = q.take()
    assert got is not None and got[1] == "small-0"
    q.done("small", 0.01)
    for _ in range(8):  # while small was active lately, big gets a worker only below 2 running
        q.done("big", 0.01)
    running = [q.take() for _ in range(3)]
    assert sum(t is not None for t in running) == 2
    clock.now += 1.5  # small has been quiet for longer than the window
    q.admit("big", "big-late")  # (what notices that is the next admission)
    more = [q.take() for _ in range(7)]
    assert sum(t is not None for t in more) == 6  # back to 8 at once


def test_past_the_tenants_bound_the_answer_is_busy_with_a_hint_and_others_still_get_in() -> None:
    clock = Clock()
    q = fair(clock, workers=1, tenant_workers=1, shared_workers=1, tenant_limit=3)
    for i in range(3):
        assert q.admit("big", f"big-{i}") is None
    # the tenant's pace so far: 0.2 s a command
    tenant, _, _ = q.take()  # type: ignore[misc]
    q.done(tenant, 0.2)
    assert q.admit("big", "big-3") is None
    busy = q.admit("big", "big-4")
    assert isinstance(busy, Busy)
    assert "tenant big" in busy.message
    # three waiting and one more: about 0.8 s at 0.2 s each, one at a time
    assert 600 <= busy.retry_after_ms <= 1000
    assert q.admit("small", "small-0") is None
    reply = busy.reply("cid-1")
    assert reply.error.code == "unavailable" and reply.error.retry_after_ms == busy.retry_after_ms
    assert reply.command_id == "cid-1"
    # however slow the pace, nothing waits past max_wait (5 s): neither does the hint
    tenant, _, _ = q.take()  # type: ignore[misc]
    q.done(tenant, 100.0)
    assert q.admit("big", "big-5") is None
    busy = q.admit("big", "big-6")
    assert isinstance(busy, Busy) and busy.retry_after_ms == 5000


def test_past_the_process_bound_tenants_are_refused_but_the_systems_own_commands_are_not() -> None:
    q = fair(Clock(), limit=4, tenant_limit=3)
    for i in range(3):
        assert q.admit("a", f"a{i}") is None
    assert q.admit("b", "b0") is None
    busy = q.admit("c", "c0")
    assert isinstance(busy, Busy) and "waiting or running here" in busy.message
    assert busy.retry_after_ms >= MIN_RETRY_MS
    assert q.admit("_host", "report") is None
    assert q.admit("_admin", "host-lost") is None
    for i in range(2):
        assert q.admit("_host", f"report-{i}") is None
    assert isinstance(q.admit("_host", "one-too-many"), Busy)  # its own bound still holds


def test_a_command_that_waited_past_max_wait_is_refused_not_run() -> None:
    clock = Clock()
    q = fair(clock, workers=1, max_wait=2.0)
    q.admit("a", "first")
    q.admit("a", "second")
    first = q.take()
    assert first is not None and first[2] is None
    clock.now += 2.5  # the first ran long; the second has waited past max_wait
    q.done("a", 2.5)
    second = q.take()
    assert second is not None and second[1] == "second"
    assert isinstance(second[2], Busy) and "waited 2.5 s" in second[2].message
    q.done("a", 0.0)
    assert q.load == 0 and q.load_of("a") == 0


def test_stopping_drops_what_waits_and_keeps_count_of_what_runs() -> None:
    q = fair(Clock(), workers=1)
    for t in ("a", "b"):
        q.admit(t, f"{t}0")
        q.admit(t, f"{t}1")
    running = q.take()
    assert running is not None
    assert sorted(q.drop_waiting()) == ["a1", "b0", "b1"]
    assert q.load == 1 and q.take() is None
    q.done(running[0], 0.01)
    assert q.load == 0


# -- replies never pass the server's maximum payload ------------------------------------------


def test_an_error_too_big_for_the_server_is_cut_to_fit_and_keeps_its_code() -> None:
    huge = "k" * 40_000
    error = Error(code="invalid", message=f"unknown field `{huge}`", field=f"$.{huge}")
    reply = Failed(error=error, command_id="c1")
    data = fit(reply, 16 * 1024)
    assert len(data) <= 16 * 1024
    body = json.loads(data)
    assert body["ok"] is False and body["command_id"] == "c1"
    assert body["error"]["code"] == "invalid"
    assert body["error"]["field"].startswith("$.kkk") and body["error"]["field"].endswith("…")
    assert "maximum payload" in body["error"]["message"]
    small = Ok(id="x", version=1, seq=2, command_id="c2")
    assert json.loads(fit(small, 16 * 1024))["ok"] is True


async def test_a_command_whose_error_would_pass_the_servers_max_payload_gets_it_cut(
    tmp_path: Path,
) -> None:
    server = NatsServer(store_dir=tmp_path / "nats", max_payload="16KB").start()
    try:
        async with CommandService(server.url, env={"SPLICE_MONITORS": "off"}):
            nc = await nats.connect(server.url)
            try:
                key = "x" * 12_000  # the error names it twice: message and field
                body = json.dumps({"actor": "it", "name": "n", "cidr": "10.0.0.0/24", key: 1})
                msg = await nc.request("splice.cmd.acme.network.create", body.encode(), timeout=10)
                assert len(msg.data) <= nc.max_payload
                reply = json.loads(msg.data)
                assert reply["ok"] is False and reply["error"]["code"] == "invalid"
                assert reply["error"]["field"].startswith("$.xxx")
            finally:
                await nc.close()
    finally:
        server.stop()


# -- the flood ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile_ms(xs: list[float], p: float) -> float:
    """Nearest rank."""
    ys = sorted(xs)
    return round(ys[max(0, math.ceil(p / 100 * len(ys)) - 1)] * 1000, 2)


async def run_process(*args: str, log: Path, stdout: bool = False) -> asyncio.subprocess.Process:
    """This file as a program; its output to `log`, but for stdout when `stdout`."""
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout else err,
            stderr=err,
            start_new_session=True,
        )


async def end(proc: asyncio.subprocess.Process, within: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still there after `within` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def service_process(
    url: str, log: Path
) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """`CommandService` with its default bounds in a process of its own; yields its pid and
    (filled after it stopped) the figures it printed last."""
    env = {"SPLICE_QUOTAS": "network=100000"}
    proc = await run_process("serve", url, json.dumps(env), log=log)
    figures: list[dict[str, Any]] = []
    try:
        yield proc.pid, figures
    finally:
        await end(proc)
        with contextlib.suppress(IndexError, ValueError):
            figures.append(json.loads(last_line(log)))


def last_line(path: Path) -> str:
    return path.read_text(errors="replace").strip().splitlines()[-1]


async def until_answered(nc: Any, timeout: float = 60.0) -> None:
    """Until the service answers a request (an invalid one: it appends nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request("splice.cmd.probe.network.create", b"{}", timeout=1)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def network_body(i: int, actor: str, second: int = 0) -> dict[str, Any]:
    return {
        "command_id": str(uuid.uuid4()),
        "actor": actor,
        "name": f"n{i}",
        "cidr": f"10.{second}.{i % 256}.0/24",
    }


class Probe:
    """One tenant's commands, one at a time, with their latencies and failures."""

    def __init__(self, nc: Any, tenant: str, st_id: str | None = None) -> None:
        self.nc, self.tenant, self.st_id = nc, tenant, st_id
        self.n = 0

    async def one(self) -> tuple[float, dict[str, Any] | str]:
        self.n += 1
        if self.st_id is None:  # a tenant: a network of its own
            subject = f"splice.cmd.{self.tenant}.network.create"
            body = network_body(self.n, "probe", 200)
        else:  # the administrator: a change to its service type
            subject = "splice.cmd._admin.servicetype.update"
            body = {"command_id": str(uuid.uuid4()), "actor": "probe", "id": self.st_id,
                    "description": f"d{self.n}"}
        t0 = time.perf_counter()
        try:
            msg = await self.nc.request(subject, json.dumps(body).encode(),
                                        timeout=REQUEST_TIMEOUT)
        except Exception as e:
            return time.perf_counter() - t0, f"{type(e).__name__}: {e}"
        return time.perf_counter() - t0, json.loads(msg.data)

    async def until(self, stop: asyncio.Event, latencies: list[float], bad: list[Any]) -> None:
        while not stop.is_set():
            seconds, reply = await self.one()
            if isinstance(reply, dict) and reply.get("ok") is True:
                latencies.append(seconds)
            else:
                bad.append((self.tenant, reply))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)  # a steady pace, not a flood


class Window:
    """The probes' commands from `start` to `stop`: latencies of the ok ones, what else came
    back, and the cores the watched processes used meanwhile."""

    def __init__(self, probes: list[Probe], pids: dict[str, int]) -> None:
        self.probes, self.pids = probes, pids
        self.latencies: list[float] = []
        self.bad: list[Any] = []
        self.cores: dict[str, float] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Future[Any] | None = None

    def start(self) -> None:
        self._cpu0 = {k: cpu_seconds(pid) for k, pid in self.pids.items()}
        self._t0 = time.monotonic()
        self._task = asyncio.gather(
            *(p.until(self._stop, self.latencies, self.bad) for p in self.probes)
        )

    async def stop(self) -> None:
        assert self._task is not None
        self._stop.set()
        await self._task
        elapsed = time.monotonic() - self._t0
        self.cores = {k: round((cpu_seconds(pid) - self._cpu0[k]) / elapsed, 2)
                      for k, pid in self.pids.items()}

    async def run_for(self, seconds: float) -> Window:
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)  # the window's length
        await self.stop()
        return self


async def created_networks(nc: Any, tenant: str) -> Counter[str]:
    """NetworkCreated events of `tenant` in the stream, by network id."""
    info = await nc.jetstream().stream_info(
        "SPLICE_EVENTS", subjects_filter=f"splice.evt.{tenant}.network.*.NetworkCreated"
    )
    return Counter({s.split(".")[4]: n for s, n in (info.state.subjects or {}).items()})


async def test_a_flood_from_one_tenant_keeps_the_others_p99_within_three_times_quiet(
    fresh_nats: NatsServer, tmp_path: Path
) -> None:
    url = fresh_nats.url
    async with service_process(url, tmp_path / "service.log") as (service_pid, service_figures):
        nc = await nats.connect(url)
        try:
            await until_answered(nc)
            reply = json.loads((await nc.request(
                "splice.cmd._admin.servicetype.create",
                json.dumps({"actor": "probe", "name": "gold",
                            "providers": {"loadbalancer": "haproxy"}}).encode(),
                timeout=REQUEST_TIMEOUT)).data)
            assert reply["ok"], reply
            probes = [Probe(nc, t) for t in QUIET] + [Probe(nc, "_admin", reply["id"])]
            for p in probes:  # first loads and caches, not measured
                for _ in range(3):
                    _, warm = await p.one()
                    assert isinstance(warm, dict) and warm["ok"], warm

            pids = {"service": service_pid}
            before = await Window(probes, pids).run_for(QUIET_SECONDS)

            flooder = await run_process(
                "flood", url, str(FLOOD_COUNT), str(FLOOD_SECONDS),
                log=tmp_path / "flood.log", stdout=True,
            )
            try:
                assert flooder.stdout is not None
                line = await asyncio.wait_for(flooder.stdout.readline(), 30)
                assert line.strip() == b"started", line
                during = Window(probes, {**pids, "flooder": flooder.pid})
                during.start()
                line = await asyncio.wait_for(flooder.stdout.readline(), FLOOD_SECONDS + 30)
                assert line.strip() == b"sent", line  # the flood is over: so is the window
                await during.stop()
                out, _ = await asyncio.wait_for(flooder.communicate(), 90)
            finally:
                await end(flooder, within=5)
            assert flooder.returncode == 0, last_line(tmp_path / "flood.log")
            flood = json.loads(out.decode().strip().splitlines()[-1])
            # every flood request is answered: the service is quiet again
            after = await Window(probes, pids).run_for(QUIET_SECONDS)
            created = await created_networks(nc, FLOODER)
        finally:
            await nc.close()

    quiet = before.latencies + after.latencies  # the machine's own drift, before and after
    figures = {
        "quiet_commands": len(quiet),
        "quiet_p50_ms": percentile_ms(quiet, 50),
        "quiet_p99_ms": percentile_ms(quiet, 99),
        "quiet_before_p99_ms": percentile_ms(before.latencies, 99),
        "quiet_after_p99_ms": percentile_ms(after.latencies, 99),
        "flood_commands": len(during.latencies),
        "flood_p50_ms": percentile_ms(during.latencies, 50),
        "flood_p99_ms": percentile_ms(during.latencies, 99),
        "flood_requests": flood["sent"],
        "flood_seconds": flood["seconds"],
        "flood_replies": flood["codes"],
        "flood_answered_within_s": flood["last_answer_s"],
        "flood_retry_after_ms": flood["retry_after_ms"],
        "service": service_figures[0] if service_figures else None,
        "cores_used": {"quiet": before.cores, "flood": during.cores},
    }
    figures["p99_ratio"] = round(figures["flood_p99_ms"] / figures["quiet_p99_ms"], 2)
    print("\nflood test figures:", json.dumps(figures, indent=1))

    # the other tenants were answered, every time, and never refused
    bad = before.bad + during.bad + after.bad
    assert not bad, bad[:5]
    assert len(during.latencies) >= 100
    # every flood request got an answer: ok, or unavailable with a hint; never silence
    assert flood["missing"] == 0, flood
    assert set(flood["codes"]) <= {"ok", "unavailable"}, flood["codes"]
    assert flood["unavailable_without_hint"] == 0
    assert flood["codes"].get("unavailable", 0) > 0  # the bound did bite
    # the accepted creates took effect, each once; the refused ones not at all
    assert created == Counter(dict.fromkeys(flood["ok_ids"], 1))
    assert figures["p99_ratio"] <= RATIO_GOAL, figures


# -- the processes --------------------------------------------------------------------------


async def serve(url: str, env: dict[str, str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    svc = CommandService(url, env=env)
    await svc.start()
    await stop.wait()
    await svc.stop()
    print(json.dumps({"handled": svc.handled, "refused": dict(svc.refused)}), flush=True)


async def flood(url: str, count: int, seconds: float) -> None:
    """`count` network.create of one tenant, from `PUBLISHERS` tasks, evenly over `seconds`,
    without waiting for replies; then every reply, counted by code. Prints `started`, `sent`
    and a JSON summary."""
    per = count // PUBLISHERS
    count = per * PUBLISHERS
    nc = await nats.connect(url)
    inbox = nc.new_inbox()
    codes: Counter[str] = Counter()
    ok_ids: list[str] = []
    no_hint = 0
    hints: list[int] = []
    answered: set[int] = set()
    all_in = asyncio.Event()
    last_answer = 0.0

    async def on_reply(msg: Any) -> None:
        nonlocal no_hint, last_answer
        i = int(msg.subject.rsplit(".", 1)[1])
        if i in answered:
            return
        answered.add(i)
        reply = json.loads(msg.data)
        if reply["ok"]:
            codes["ok"] += 1
            ok_ids.append(reply["id"])
        else:
            codes[reply["error"]["code"]] += 1
            hint = reply["error"].get("retry_after_ms")
            if reply["error"]["code"] == "unavailable":
                if hint:
                    hints.append(hint)
                else:
                    no_hint += 1
        last_answer = time.monotonic()
        if len(answered) == count:
            all_in.set()

    await nc.subscribe(f"{inbox}.*", cb=on_reply, pending_msgs_limit=count * 2)
    await nc.flush()
    subject = f"splice.cmd.{FLOODER}.network.create"
    print("started", flush=True)
    start = time.monotonic()

    async def publisher(k: int) -> None:
        for j in range(per):
            i = k * per + j
            due = start + j * seconds / per
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            body = network_body(i, "flood", (i // 256) % 200)
            await nc.publish(subject, json.dumps(body).encode(), reply=f"{inbox}.{i}")

    await asyncio.gather(*(publisher(k) for k in range(PUBLISHERS)))
    await nc.flush()
    sent_at = time.monotonic()
    print("sent", flush=True)
    if len(answered) < count:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 60)
    await nc.close()
    print(json.dumps({
        "sent": count,
        "seconds": round(sent_at - start, 2),
        "codes": dict(codes),
        "ok_ids": ok_ids,
        "missing": count - len(answered),
        "unavailable_without_hint": no_hint,
        "retry_after_ms": {"min": min(hints, default=None), "median": sorted(hints)[len(hints) // 2]
                           if hints else None, "max": max(hints, default=None)},
        "last_answer_s": round(last_answer - sent_at, 2),
    }), flush=True)


if __name__ == "__main__":
    what, nats_url, *rest = sys.argv[1:]
    if what == "serve":
        asyncio.run(serve(nats_url, json.loads(rest[0])))
    else:
        asyncio.run(flood(nats_url, int(rest[0]), float(rest[1])))
