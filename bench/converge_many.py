"""200 load balancers on one host, converged from empty state by a fresh HaproxyDriver, against the
per-LB cost of the equivalent bash script (measured on a smaller sample and scaled per LB).

Same fabric as ``time_to_serve.py`` (``splb-`` names, 10.77.0.0/16, only in namespaces and on a
bridge this benchmark makes). The Splice figure runs from ``converge()`` start to its return
(every LB's haproxy answering its stats socket), then every VIP is checked to serve through the
client namespace (not timed). The script figure runs one bash script that builds ``--sample``
LBs one after the other (the way such scripts are written), timed until it exits, then also
checked. Everything is removed at the end, also on failure. Human-readable figures first; the
last line is JSON: ``{"splice_per_lb_s": .., "script_per_lb_s": .., "ratio": .., ...}``.

    .venv/bin/python bench/converge_many.py --lbs 200 --sample 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def respecify(spec: LoadBalancerSpec, address: str) -> LoadBalancerSpec:
    return spec.with_vip(address)


async def splice_phase(fab: BenchFabric, n: int, state_dir: str, workers: int) -> float:
    specs = [respecify(lb_spec(fab, 0), vip(1, i)) for i in range(n)]
    rec = HaproxyDriver("bench", state_dir, prefix="splb-", workers=workers)
    try:
        start = time.monotonic()
        results = await rec.converge({s.id: s for s in specs})
        elapsed = time.monotonic() - start
        bad = {i: r.reason for i, r in results.items() if r.provisioning_status != ACTIVE}
        if bad:
            raise RuntimeError(f"{len(bad)} LBs not ACTIVE: {next(iter(bad.values()))}")
        check_all_serve(fab, [s.vip_address for s in specs])
        return elapsed
    finally:
        await rec.converge({})
        rec.close()


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
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda v: fab.wait_serving(v, 80, 20), vips))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lbs", type=int, default=200)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    fab = BenchFabric()
    state_dir = tempfile.mkdtemp(prefix="splb", dir="/tmp")
    try:
        fab.build()
        splice_s = asyncio.run(splice_phase(fab, args.lbs, f"{state_dir}/splice", args.workers))
        script_s = script_phase(fab, args.sample, f"{state_dir}/script")
    finally:
        fab.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    splice_per, script_per = splice_s / args.lbs, script_s / args.sample
    print(f"splice  {args.lbs} LBs from empty state: {splice_s:.2f} s "
          f"({splice_per * 1000:.1f} ms per LB, {args.workers} worker threads)")
    print(f"script  {args.sample} LBs sequentially:    {script_s:.2f} s "
          f"({script_per * 1000:.1f} ms per LB)")
    print(json.dumps({"splice_per_lb_s": round(splice_per, 4),
                      "script_per_lb_s": round(script_per, 4),
                      "ratio": round(splice_per / script_per, 3),
                      "lbs": args.lbs, "script_sample": args.sample}))


if __name__ == "__main__":
    main()
