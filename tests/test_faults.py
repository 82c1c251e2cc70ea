"""Faults, with counts (issue 14): the cluster's topology from real processes, a fault under load.

Each test runs three nats-servers (JetStream, `sync_interval: always`, SPLICE_EVENTS at R3), two
command services (`splice serve`, one queue group, each against all three nodes) and the
projector (`splice projector`) on a PostgreSQL database of the test's own
(`tests/faults_cluster.py`). Eight clients send `servicetype.create` commands, each with a unique
name, retrying a timed-out or `unavailable` request with the same command id, while one fault
happens. Each test prints one line of counts — acknowledged, present in the stream, doubled,
lost (and sent, unacknowledged, retried, events) — and asserts: no acknowledged event lost, no
effect doubled (one ServiceTypeCreated per name; a retry refused `name_taken` would be a
command applied twice, and counts as doubled), every command acknowledged in the end, and the
read models identical after the fault: the projector's position is the stream's newest event,
and `splice projections verify` on the same database exits 0 and reports `identical`.

The faults, one test each:

1. a nats-server that is *not* the stream leader SIGKILLed, then restarted on its store (the
   stream leader's kill is `tests/test_cluster.py::test_acknowledged_commands_survive_stream_leader_kill`,
   not repeated here: fault 2 of the issue);
2. one of the two command services frozen (SIGSTOP) for one request timeout, then SIGKILLed:
   the commands routed to it go unanswered, and their retries, same command id, reach the
   survivor (at least one command must have been retried across the kill); then every acknowledged command sent again
   with its command id: each gets its first answer, nothing more is written;
3. the projector SIGKILLed while commands flow, then restarted: it resumes from its committed
   position, catches up, and verifies identical.

Fault 5 (an agent SIGKILLed in the middle of a failover) needs simulated hosts and the
machine-wide lock: `tests/dataplane/test_faults_agent.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults_cluster import Counts, Load, Topology, count, sigkill
from tests.test_cluster import REQUEST_TIMEOUT, send_create, stream_leader

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]

BEFORE_FAULT = 3.0  # seconds of load before the fault
DURING_FAULT = 4.0  # ... while it lasts
AFTER_REPAIR = 4.0  # ... after the repair (restart)


async def settle(top: Topology, counts: Counts) -> dict[str, Any]:
    """The checks every fault shares, once the load stopped: counts, then the read models."""
    assert counts.lost == 0, "\n".join(counts.problems[:10])
    assert counts.doubled == 0, "\n".join(counts.problems[:10])
    assert counts.unacknowledged == 0, "\n".join(counts.problems[:10]) + "\n" + top.logs()
    assert counts.acknowledged == counts.present == counts.sent > 0
    # one event per command: no more ServiceTypeCreated than names (the retries added nothing)
    assert counts.events == counts.acknowledged, counts
    position, stream_end = await top.projector_caught_up()
    names = await asyncio.to_thread(top.read_model_names)
    assert len(names) == len(set(names)) == counts.events, (len(names), counts)
    code, report, output = await top.verify()
    assert code == 0 and report.get("identical") is True, output
    assert report["position"] == position and report["behind"] == 0, report
    return {"position": position, "stream_end": stream_end, "read_models": len(names),
            "verify": "identical"}


async def test_a_follower_node_killed_under_load_loses_and_doubles_nothing(
        tmp_path: Path) -> None:
    top = Topology(tmp_path)
    started = time.monotonic()
    try:
        await top.start()
        assert top.nc is not None
        leader = await stream_leader(top.nc, time.monotonic() + 10)
        victim = next(n for n in top.cluster.nodes if n.name != leader)
        load = Load(top.nc)
        load.start()
        try:
            await asyncio.sleep(BEFORE_FAULT)
            kill_at = time.monotonic()
            await asyncio.to_thread(victim.kill)  # SIGKILL a follower of the stream
            await asyncio.sleep(DURING_FAULT)
            await asyncio.to_thread(victim.start)  # same port, same store
            await asyncio.sleep(AFTER_REPAIR)
        finally:
            await load.stop()
        after_kill = sum(1 for o in load.outcomes if o.ok and o.started > kill_at)
        assert after_kill > 0, "nothing was acknowledged while a node was down"
        state = await top.wait_replicas_current()  # the restarted node caught up
        counts = await count(top.nc, load.outcomes)
        checked = await settle(top, counts)
        print(counts.line("nats-follower-kill", killed=victim.name,
                          leader_after=state["cluster"]["leader"], acked_after_kill=after_kill,
                          seconds=f"{time.monotonic() - started:.1f}", **checked))
    finally:
        await top.close()


async def test_a_command_service_killed_the_survivor_answers_the_retries_once(
        tmp_path: Path) -> None:
    top = Topology(tmp_path)
    started = time.monotonic()
    try:
        await top.start()
        assert top.nc is not None
        victim, survivor = top.services
        load = Load(top.nc)
        load.start()
        try:
            await asyncio.sleep(BEFORE_FAULT)
            # Frozen first, for one request timeout: the requests the queue group routes to it
            # go unanswered (some perhaps written, not answered) and their clients retry, same
            # command id; then SIGKILLed, and the retries can only reach the survivor.
            os.killpg(victim.pid, signal.SIGSTOP)
            seq_at_freeze = await top.last_event_seq()
            await asyncio.sleep(REQUEST_TIMEOUT + 0.5)
            kill_at = time.monotonic()
            await asyncio.to_thread(sigkill, victim)
            await asyncio.sleep(DURING_FAULT)
        finally:
            await load.stop()
        assert survivor.poll() is None, top.logs()
        across = [o for o in load.outcomes if o.ok and o.attempts > 1 and o.started < kill_at]
        assert across, "no command was retried across the kill"
        # Both replicas served before the kill: each one's log names commands it handled.
        logs = [p.read_text(errors="replace") for p in top.service_logs]
        handled = [sum(1 for o in load.outcomes if o.command_id in log) for log in logs]
        assert all(handled), f"a replica handled no command before the kill: {handled}"
        # Retried across the kill: a first attempt that got no answer, then acknowledged ...
        # ... of which the victim had written the event before it froze (the survivor answered
        # the retry from the stream, not by deciding again): timing decides how many, if any.
        written_by_victim = sum(1 for o in across if o.reply and o.reply["seq"] <= seq_at_freeze)
        counts = await count(top.nc, load.outcomes)
        checked = await settle(top, counts)
        # Every acknowledged command again, same command id: the survivor answers the first
        # reply again (same resource, same stream sequence) and writes nothing.
        before = await top.last_event_seq()
        acked = [o for o in load.outcomes if o.ok]
        again = await asyncio.gather(*(send_create(top.nc, o.name, o.command_id) for o in acked))
        differ = [(o.reply, a.reply) for o, a in zip(acked, again, strict=True)
                  if not a.ok or a.reply is None or o.reply is None
                  or (a.reply["id"], a.reply["seq"]) != (o.reply["id"], o.reply["seq"])]
        assert not differ, f"{len(differ)} repeats answered differently, e.g. {differ[:3]}"
        assert await top.last_event_seq() == before, "repeating acknowledged commands wrote"
        recount = await count(top.nc, load.outcomes)
        assert recount.events == counts.events and recount.doubled == 0, recount
        print(counts.line("command-service-kill", handled_per_replica=handled,
                          retried_across_kill=len(across),
                          of_which_written_before_freeze=written_by_victim, repeats_same_answer=len(again),
                          seconds=f"{time.monotonic() - started:.1f}", **checked))
    finally:
        await top.close()


async def test_the_projector_killed_while_commands_flow_resumes_and_verifies_identical(
        tmp_path: Path) -> None:
    top = Topology(tmp_path)
    started = time.monotonic()
    try:
        await top.start()
        assert top.nc is not None
        load = Load(top.nc)
        load.start()
        try:
            await asyncio.sleep(BEFORE_FAULT)
            await asyncio.to_thread(top.kill_projector)  # mid-batch, perhaps mid-transaction
            at_kill = await asyncio.to_thread(top.positions)
            seq_at_kill = await top.last_event_seq()
            await asyncio.sleep(DURING_FAULT)  # commands go on with no projector
            seq_at_restart = await top.last_event_seq()
            await top.start_projector()
            await asyncio.sleep(AFTER_REPAIR)
        finally:
            await load.stop()
        assert at_kill and min(at_kill.values()) > 0, f"nothing was projected before: {at_kill}"
        assert seq_at_restart > seq_at_kill, "no events were written while the projector was down"
        assert top.projector_log is not None
        resumed = json.dumps(sorted(set(at_kill.values())))
        counts = await count(top.nc, load.outcomes)
        checked = await settle(top, counts)
        print(counts.line("projector-kill", position_at_kill=resumed,
                          events_while_down=f"{seq_at_kill}..{seq_at_restart}",
                          seconds=f"{time.monotonic() - started:.1f}", **checked))
    finally:
        await top.close()
