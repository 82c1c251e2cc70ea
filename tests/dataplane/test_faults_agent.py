"""Faults, with counts (issue 14), fault 5: an agent SIGKILLed in the middle of a failover.

Three simulated hosts (`tests/dataplane/hosts.py`), each offering haproxy, a nats-server on the
underlay, the command service with its host monitor in the test's process; the member and the
client on host 3. The load balancer is placed on host 1 (least loaded, ties by name). Host 1 is
cut (its agent SIGKILLed, its underlay link down); the host monitor declares it lost and the
scheduler moves the load balancer to host 2. As soon as host 2's agent has started building it
(its namespace appears under host 2's prefix), host 2's agent is SIGKILLed too: a half-built
(or just built) copy stays behind on host 2, whose link stays up.

What happens next is decided here, not left to timing: host 2's agent stays down until the host
monitor has declared host 2 lost as well (it misses its heartbeats for SPLICE_HOST_TIMEOUT, 2 s),
so the scheduler moves the load balancer once more, to host 3, the only live host left; then
host 2's agent is restarted. It starts fenced (its tunnels down), registers, reads that the load
balancer is no longer its own, removes its copy, and unfences. The load balancer must end up
served from host 3, with exactly one copy among the connected hosts (2 and 3) and one haproxy
for it; host 1's copy is cut off with it (not live: its removal when host 1 returns is
`tests/dataplane/test_distributed.py::test_failover_serves_from_the_other_host_and_the_returning_host_cleans_up`).
The placements are counted from the event stream (one `ServicePlaced` per move: h1, h2, h3)
and printed with the copies per host.

Runs only as root, under the machine-wide lock:
`flock /tmp/splice-dataplane.lock .venv/bin/python -m pytest tests/dataplane/test_faults_agent.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from splice.agents import netns
from tests.dataplane.hosts import Cluster, http_lb, running
from tests.dataplane.test_distributed import T, cmd, get, lbs_of, port, serve, until

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]

NET = "10.77.62"


@pytest.fixture
async def world3(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Three hosts, a nats-server on the underlay, the command service; the hosts' events."""
    async with running(tmp_path, f"sf{os.getpid() % 0xFFF:x}", 3,
                       {"loadbalancer": "haproxy"}) as w:
        yield w


def haproxies(cluster: Cluster, host: str) -> int:
    """haproxy instances (masters: a haproxy whose parent is not one) in the host's LB
    namespaces."""
    found = 0
    for ns in lbs_of(cluster, host):
        for pid in netns.pids_in_namespace(ns):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                parent = Path(f"/proc/{ppid}/comm").read_text().strip()
            except (OSError, IndexError):
                continue
            if comm == "haproxy" and parent != "haproxy":
                found += 1
    return found


async def test_an_agent_killed_mid_failover_leaves_one_served_copy(
        world3: dict[str, Any]) -> None:
    cluster, nc, url, events = world3["cluster"], world3["nc"], world3["url"], world3["events"]
    loop = asyncio.get_running_loop()
    h1, h2, h3 = list(cluster.hosts)
    started = time.monotonic()
    for h in (h1, h2, h3):
        cluster.start_agent(h, url, ("haproxy",))
    net = (await cmd(nc, f"{T}.network.create", {"name": "n", "cidr": f"{NET}.0/24"}))["id"]
    member, mmac = await port(nc, net, h3, f"{NET}.11")
    client, cmac = await port(nc, net, h3, f"{NET}.21")
    await loop.run_in_executor(None, lambda: (
        cluster.plug(h3, "m1", net, member, mmac, f"{NET}.11/24"),
        cluster.plug(h3, "c1", net, client, cmac, f"{NET}.21/24")))
    serve(cluster, "m1", "m1")
    # all three registered before the load balancer is placed: it goes to host 1 (ties by name)
    await until(lambda: {p.get("host") for t, p, _ in events if t == "HostRegistered"}
                >= {h1, h2, h3}, "the three hosts registered", deadline=20)
    lb = (await cmd(nc, f"{T}.loadbalancer.create", http_lb(net, f"{NET}.100", f"{NET}.11")))["id"]
    c1 = cluster.machine("c1")
    vip = f"http://{NET}.100/"
    await until(lambda: get(c1, vip) == "m1", "served through the VIP", deadline=30)
    assert lbs_of(cluster, h1) and not lbs_of(cluster, h2) and not lbs_of(cluster, h3)

    async def within(check: Any, what: str, deadline: float) -> float:
        try:
            return await until(check, what, deadline)
        except AssertionError as e:
            raise AssertionError(f"{e}; the host registry's events: {events}") from None

    def placements() -> list[str]:
        service = f"{T}.loadbalancer.{lb}"
        return [p["host"] for t, p, _ in events if t == "ServicePlaced" and p["service_id"] == service]

    def lost() -> list[str]:
        return [p["host"] for t, p, _ in events if t == "HostLost"]

    # host 1 lost: agent SIGKILLed, link cut
    cluster.kill_agent(h1)
    cluster.cut(h1)
    # host 2 starts building it: SIGKILL its agent as soon as its namespace is there
    end = time.monotonic() + 30
    while not lbs_of(cluster, h2):
        assert time.monotonic() < end, f"never placed on {h2}: {placements()}, lost {lost()}"
        await asyncio.sleep(0.01)
    cluster.kill_agent(h2)
    haproxy_on_h2_at_kill = haproxies(cluster, h2)
    # host 2 declared lost too (its agent is silent); the load balancer moves to host 3
    await within(lambda: h2 in lost() and placements()[-1:] == [h3],
                "host 2 declared lost and the load balancer placed on host 3", deadline=20)
    # what the dead agent left behind on host 2, which the restarted agent must remove
    left_on_h2 = len(lbs_of(cluster, h2))
    # host 2's agent comes back (its link never went down): fenced, it removes its copy
    cluster.start_agent(h2, url, ("haproxy",))
    took = await within(lambda: not lbs_of(cluster, h2) and len(lbs_of(cluster, h3)) == 1
                       and haproxies(cluster, h3) == 1 and get(c1, vip, 0.5) == "m1",
                       "host 2's copy removed, served from host 3", deadline=40)
    answers = [await loop.run_in_executor(None, get, c1, vip) for _ in range(10)]
    copies = {h: len(lbs_of(cluster, h)) for h in (h1, h2, h3)}
    procs = {h: haproxies(cluster, h) for h in (h1, h2, h3)}
    print(f"[agent-kill-mid-failover] placements={placements()} lost={lost()} "
          f"copies={copies} haproxy={procs} haproxy_on_h2_at_kill={haproxy_on_h2_at_kill} "
          f"left_on_h2_before_restart={left_on_h2} served_again_after_restart={took:.1f}s "
          f"answers={answers.count('m1')}/10 seconds={time.monotonic() - started:.1f}")
    assert left_on_h2 == 1, "host 2's agent died before it left anything to clean up"
    assert answers == ["m1"] * 10, answers
    assert placements() == [h1, h2, h3], placements()  # one placement per move, none doubled
    assert lost() == [h1, h2], lost()
    assert copies[h2] == 0 and copies[h3] == 1, copies  # one live copy among connected hosts
    assert procs[h2] == 0 and procs[h3] == 1, procs  # one haproxy for it
    # host 2's agent came back: it registered again after it was declared lost
    kinds = [(t, p.get("host")) for t, p, _ in events]
    assert ("HostRegistered", h2) in kinds[kinds.index(("HostLost", h2)):], kinds
