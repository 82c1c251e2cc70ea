"""What one reading of the per-service counters costs the agent, per load balancer.

nftables-l4: `drivers.l4.stats.read` (``nft -j list counters table …`` and ``conntrack -L``
started from a thread inside the load balancer's namespace) against the same two commands
through ``ip netns exec`` (the baseline: what `nftables.apply.run` does for the driver's
steps). haproxy: ``show stat`` on a running haproxy's stats socket. Each measured ``--n``
times after 3 warm-ups, in the same run, on one namespace ``spsb-l4-…`` holding a rendered
table of two listeners (and a haproxy with the same tree, in the same namespace, on a state
directory of its own); everything is removed at the end, also on failure.

The last line is JSON: ``{"l4_read_ms", "l4_ip_netns_exec_ms", "l4_ratio", "haproxy_read_ms",
"n"}`` (``l4_ratio`` = read / baseline; medians in milliseconds).

    flock /tmp/splice-dataplane.lock .venv/bin/python bench/stats_read.py --n 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from splice.agents.drivers.haproxy import process as haproxy
from splice.agents.drivers.haproxy.render import LbPaths, render
from splice.agents.drivers.l4 import stats as l4stats
from splice.agents.drivers.l4.model import L4Layout, listeners
from splice.agents.drivers.nftables import apply as napply
from splice.agents.drivers.nftables.render import render_l4
from splice.agents.model import LoadBalancerSpec, NetworkSpec
from splice.events.lbaas import Listener, Member, Pool

LAYOUT = L4Layout("spsb-")
LB = "5b5b5b5b-0000-4000-8000-000000000001"
VIP = "10.78.0.100"


def spec() -> LoadBalancerSpec:
    members = [Member(id=f"00000000-0000-4000-8000-00000000000{i}", address=f"10.78.0.1{i}",
                      protocol_port=8080) for i in range(1, 4)]
    pool = Pool(id="00000000-0000-4000-8000-000000000101", name="p", protocol="TCP",
                members=members)
    ls = [Listener(id=f"00000000-0000-4000-8000-00000000020{i}", name="l", protocol="TCP",
                   protocol_port=port, default_pool_id=pool.id) for i, port in ((1, 80), (2, 81))]
    return LoadBalancerSpec.build(LB, NetworkSpec("00000000-0000-4000-8000-000000000301",
                                                  "10.78.0.0/24", "10.78.0.1"), VIP,
                                  listeners=ls, pools=[pool], name="bench")


def timed(fn: Callable[[], Any], n: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    s = spec()
    ns, table = LAYOUT.namespace(s.id), LAYOUT.table(s.id)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    state = tempfile.TemporaryDirectory(prefix="spsb-")
    paths = LbPaths(state.name)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        napply.replace(ns, render_l4(table, s.vip_address, listeners(s, ())))

        def baseline() -> None:
            napply.run(ns, ["nft", "-j", "list", "counters", "table", "ip", table])
            napply.run(ns, ["conntrack", "-L", "-f", "ipv4", "-p", "tcp", "--state",
                            "ESTABLISHED", "-d", VIP], check=False)

        raw = l4stats.read(LAYOUT, s)
        assert raw.found and len(raw.counters) == 6, raw
        read_ms = timed(lambda: l4stats.read(LAYOUT, s), args.n)
        base_ms = timed(baseline, args.n)
        haproxy.write_checked(paths, render(s.with_vip("127.0.0.1"), paths))
        haproxy.start(ns, paths)
        assert haproxy.show_stat(paths)
        ha_ms = timed(lambda: haproxy.show_stat(paths), args.n)
    finally:
        haproxy.stop(paths)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        state.cleanup()
    print(f"nftables-l4 reading (nft + conntrack from a thread in the namespace): "
          f"median {read_ms:.1f} ms per load balancer")
    print(f"the same two commands through ip netns exec (baseline):            "
          f"median {base_ms:.1f} ms")
    print(f"haproxy show stat on the stats socket:                             "
          f"median {ha_ms:.2f} ms")
    print(json.dumps({"l4_read_ms": round(read_ms, 2), "l4_ip_netns_exec_ms": round(base_ms, 2),
                      "l4_ratio": round(read_ms / base_ms, 3), "haproxy_read_ms": round(ha_ms, 3),
                      "n": args.n}))


if __name__ == "__main__":
    main()
