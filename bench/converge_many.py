"""200 and 1,000 load balancers on one host, each converged from empty state by a fresh
HaproxyDriver, against the per-LB cost of the equivalent bash script (measured on a smaller sample
and scaled per LB).

Same fabric as ``time_to_serve.py`` (``splb-`` names, 10.77.0.0/16, only in namespaces and on a
bridge this benchmark makes). The Splice figure runs from ``converge()`` start to its return
(every LB's haproxy answering its stats socket), then every VIP is checked to serve through the
client namespace (not timed). The script figure runs one bash script that builds ``--sample``
LBs one after the other (the way such scripts are written), timed until it exits, then also
checked. Everything is removed at the end, also on failure.

The driver applies each LB's steps in order and different LBs in parallel, on a bounded pool of
``--workers`` threads; the work it starts (haproxy -c, haproxy, netlink) runs in the kernel and
in child processes on every core. Each phase also says where its CPU went: the driver's process,
the children it waited for, and the whole machine (other work on it included).

Human-readable figures first; the last line is JSON: ``ratio_<n>`` and ``splice_per_lb_s_<n>``
for each size, ``script_per_lb_s``, and ``ratio`` (of the first size, 200 by default).

    .venv/bin/python bench/converge_many.py --lbs 200 1000 --sample 20
    .venv/bin/python bench/converge_many.py --lbs 5 --sample 3      # CI size
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from time_to_serve import (
    BenchFabric,
    lb_spec,
    run_script,
    script_for,
    sweep,
    vip,
)

from splice.agents.drivers.haproxy.driver import HaproxyDriver
from splice.agents.drivers.reports import ACTIVE
from splice.agents.model import LoadBalancerSpec

CPUS = os.cpu_count() or 1


def respecify(spec: LoadBalancerSpec, address: str) -> LoadBalancerSpec:
    return spec.with_vip(address)


async def splice_phase(fab: BenchFabric, n: int, state_dir: str,
                       workers: int) -> tuple[float, dict[str, float]]:
    """Converge `n` LBs from empty state: (seconds, CPU seconds used meanwhile by kind)."""
    specs = [respecify(lb_spec(fab, 0), vip(1, i)) for i in range(n)]
    rec = HaproxyDriver("bench", state_dir, prefix="splb-", workers=workers)
    try:
        cpu0 = cpu_now()
        start = time.monotonic()
        results = await rec.converge({s.id: s for s in specs})
        elapsed = time.monotonic() - start
        cpu = {k: round(v - cpu0[k], 1) for k, v in cpu_now().items()}
        bad = {i: r.reason for i, r in results.items() if r.provisioning_status != ACTIVE}
        if bad:
            raise RuntimeError(f"{len(bad)} LBs not ACTIVE: {next(iter(bad.values()))}")
        await asyncio.to_thread(check_all_serve, fab, [s.vip_address for s in specs])
        return elapsed, cpu
    finally:
        await rec.converge({})
        rec.close()


def cpu_now() -> dict[str, float]:
    """CPU seconds: this process (the driver: Python, netlink), the children it waited for
    (haproxy -c, haproxy's start, ip), and the whole machine (other work on it included)."""
    t = os.times()
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields) if i not in (3, 4))  # all but idle, iowait
    return {"driver": t.user + t.system, "children": t.children_user + t.children_system,
            "machine": busy / os.sysconf("SC_CLK_TCK")}


def script_phase(fab: BenchFabric, n: int, state_dir: str) -> float:
    specs = [respecify(lb_spec(fab, 0), vip(100, i)) for i in range(n)]
    text = script_for(fab, specs, state_dir)
    try:
        start = time.monotonic()
        run_script(text)
        elapsed = time.monotonic() - start
        check_all_serve(fab, [s.vip_address for s in specs])
        return elapsed
    finally:
        sweep()


def check_all_serve(fab: BenchFabric, vips: list[str]) -> None:
    """Every VIP answers through the client namespace (not timed). Few at a time, with time
    to answer: all of them end at the one member, whose listen backlog is short."""
    assert fab.client is not None
    client = fab.client
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda v: client.submit(_serves, v).result(), vips))


def _serves(vip_address: str, deadline_s: float = 60.0) -> None:
    """GET / on the VIP until it answers 200 (on a thread in the client namespace)."""
    end = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < end:
        conn = http.client.HTTPConnection(vip_address, 80, timeout=2)
        try:
            conn.request("GET", "/")
            status = conn.getresponse().status
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        time.sleep(0.05)
    raise TimeoutError(f"{vip_address}:80 did not serve within {deadline_s}s ({last})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lbs", type=int, nargs="+", default=[200, 1000],
                        help="load balancers per Splice phase, one phase each (default 200 1000)")
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    fab = BenchFabric()
    state_dir = tempfile.mkdtemp(prefix="splb", dir="/tmp")
    phases: dict[int, tuple[float, dict[str, float]]] = {}
    try:
        fab.build()
        for n in args.lbs:
            phases[n] = asyncio.run(splice_phase(fab, n, f"{state_dir}/splice{n}", args.workers))
        script_s = script_phase(fab, args.sample, f"{state_dir}/script")
    finally:
        fab.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    script_per = script_s / args.sample
    out: dict[str, float | int] = {}
    for n, (splice_s, cpu) in phases.items():
        per = splice_s / n
        print(f"splice  {n} LBs from empty state: {splice_s:.2f} s ({per * 1000:.1f} ms per LB, "
              f"{args.workers} worker threads; CPU s: driver {cpu['driver']}, its children "
              f"{cpu['children']}, machine {cpu['machine']} of {splice_s * CPUS:.1f})")
        out[f"splice_per_lb_s_{n}"] = round(per, 4)
        out[f"ratio_{n}"] = round(per / script_per, 3)
    print(f"script  {args.sample} LBs sequentially:    {script_s:.2f} s "
          f"({script_per * 1000:.1f} ms per LB)")
    first = args.lbs[0]
    out |= {"splice_per_lb_s": out[f"splice_per_lb_s_{first}"],
            "script_per_lb_s": round(script_per, 4), "ratio": out[f"ratio_{first}"],
            "lbs": first, "script_sample": args.sample}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
