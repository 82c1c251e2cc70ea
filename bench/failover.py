"""Failover: from the moment the host serving a load balancer is cut off (its agent SIGKILLed
and its underlay link down) to the first answer through the VIP from the other host.

Three hosts simulated on this machine (`tests/dataplane/hosts.py`: a namespace each, an
underlay bridge, VXLAN between them, a `splice agent --netns` process each); the nats-server
listens on the underlay, the command service (with its host monitor, ``SPLICE_HOST_TIMEOUT``
2 s, heartbeats every 0.25 s) runs in this process. Hosts 1 and 2 offer haproxy; the client
and the member live on host 3 (which offers routing only), so they survive either cut. One
HTTP load balancer (VIP and member on one tenant network).

Each run: the host that serves the load balancer is cut; the client (on host 3) asks the VIP
every 50 ms (0.3 s timeout per request) until an answer comes, from the other host.
``failover_s``: the cut to that answer; ``detected_s``: the cut to the `HostLost` event.
Then the cut host comes back (its agent restarted: fenced; the link mended; it removes its
old copy before its tunnels come up) off the clock, and the next run cuts the host now
serving. Everything is removed at the end, also on failure or SIGINT/SIGTERM. Figures per
run, then one JSON line: ``{"failover_s_median", "failover_s_max", "detected_s_median",
"runs", "host_timeout_s"}``.

    flock /tmp/splice-dataplane.lock .venv/bin/python bench/failover.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splice import logs  # noqa: E402
from splice.agents import netns  # noqa: E402
from splice.services.network import mac_for  # noqa: E402
from tests.dataplane.hosts import Cluster, command, http_lb, registered, running, sh  # noqa: E402

T = "bench"
NET = "10.77.70"
VIP = f"{NET}.100"
MEMBER = ROOT / "tests" / "dataplane" / "member_server.py"
HOST_TIMEOUT_S = 2.0


def get(machine: str, timeout: float = 0.3) -> str:
    return subprocess.run(["ip", "netns", "exec", machine, "curl", "-s", "--max-time",
                           str(timeout), f"http://{VIP}/"], capture_output=True, text=True,
                          check=False).stdout.strip()


async def off(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def wait(check: Any, what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not await off(check):
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not after {deadline} s")
        await asyncio.sleep(0.05)


def serving(cluster: Cluster, name: str) -> bool:
    return bool(netns.list_namespaces(f"{cluster.hosts[name].prefix}lb-"))


def tunnels_up(cluster: Cluster, name: str) -> list[bool]:
    vx = json.loads(sh("ip", "-n", name, "-j", "link", "show", "type", "vxlan") or "[]")
    return ["UP" in link["flags"] for link in vx]


async def bench(runs: int, state: Path) -> dict[str, Any]:
    async with running(state, f"fo{os.getpid() % 0xFFF:x}", 3, {"loadbalancer": "haproxy"}) as w:
        cluster, nc, url, events = w["cluster"], w["nc"], w["url"], w["events"]
        h1, h2, h3 = list(cluster.hosts)
        cluster.start_agent(h1, url, ("haproxy",))
        await wait(lambda: h1 in registered(events), "host 1 registered first")
        cluster.start_agent(h2, url, ("haproxy",))
        cluster.start_agent(h3, url, ("router",))
        net = (await command(nc, f"{T}.network.create", {"name": "n", "cidr": f"{NET}.0/24"}))["id"]
        for machine, address in (("m1", f"{NET}.11"), ("c1", f"{NET}.21")):
            pid = (await command(nc, f"{T}.port.create", {"network_id": net, "host": h3,
                                                          "ip_address": address}))["id"]
            await off(lambda m=machine, p=pid, a=address: cluster.plug(
                h3, m, net, p, mac_for(f"{T}.port.{p}"), f"{a}/24"))
        await off(lambda: subprocess.Popen(
            ["ip", "netns", "exec", cluster.machine("m1"), sys.executable, str(MEMBER), "m1",
             "8080"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await command(nc, f"{T}.loadbalancer.create", http_lb(net, VIP, f"{NET}.11"))
        client = cluster.machine("c1")
        await wait(lambda: get(client) == "m1", "served through the VIP")
        failovers, detections = [], []
        for run in range(runs):
            victim = next(h for h in (h1, h2) if serving(cluster, h) and cluster.hosts[h].agent)
            start = time.monotonic()
            cluster.kill_agent(victim)
            cluster.cut(victim)
            while await off(get, client) != "m1":
                if time.monotonic() - start > 30:
                    raise TimeoutError("not served again after 30 s")
                await asyncio.sleep(0.05)
            failovers.append(time.monotonic() - start)
            seen = [at for t, p, at in events if t == "HostLost" and p["host"] == victim and at > start]
            detections.append((seen[0] if seen else float("nan")) - start)
            print(f"run {run + 1}: cut {victim}: detected after {detections[-1]:.2f} s, served "
                  f"again after {failovers[-1]:.2f} s", flush=True)
            # off the clock: the host comes back, fenced, and cleans up before it serves
            cluster.start_agent(victim, url, ("haproxy",))
            await wait(lambda v=victim: not any(tunnels_up(cluster, v)), "the agent fenced")
            cluster.mend(victim)
            await wait(lambda v=victim: not serving(cluster, v) and all(tunnels_up(cluster, v)),
                       "the returning host clean and unfenced")
            await wait(lambda: get(client) == "m1", "served")
        return {"failover_s_median": round(statistics.median(failovers), 3),
                "failover_s_max": round(max(failovers), 3),
                "detected_s_median": round(statistics.median(detections), 3),
                "runs": runs, "host_timeout_s": HOST_TIMEOUT_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces)")
    logs.configure("WARNING")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with tempfile.TemporaryDirectory(prefix="splfo-") as tmp:
        figures = asyncio.run(bench(args.runs, Path(tmp)))
    print(f"failover: median {figures['failover_s_median']} s, max {figures['failover_s_max']} s "
          f"(goal: 3 s); detection median {figures['detected_s_median']} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
