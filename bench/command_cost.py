"""Instructions per command in ``splice serve``, counted by valgrind's callgrind.

The command path's rate (`bench/command_path.py`) moves by a third from minute to minute on a
shared machine, so a change that saves a tenth of the service's work can hide in it. Callgrind
counts the instructions a process runs, whatever else the machine does: the same code and
inputs give the same count to a few hundredths of a percent. It cannot see the kernel's share
(system calls, wake-ups), nor caches: it measures the Python work, which is what changes.

1. The service: `bench/command_path.py` twice (one round, no warm-up, ``--commands`` N1 then
   N2 ``servicetype.update``), with ``splice serve`` under callgrind. The difference of the
   service's two totals over N2 - N1 is what one command costs it: its start, the clients'
   service types and the idle raw phase are the same in both runs and cancel out.
2. The baseline, the same way: a nats-py client (this script, ``--publisher``) awaiting
   N1 then N2 ``js.publish`` of an event's size, the clients' count in flight, as the raw
   phase of the command path does. ``ratio`` = instructions per raw publish over instructions
   per command: the share of a bare publish's client work that a whole command costs the
   service (higher is better).

Slow: valgrind runs Python about 50 times slower (a run of 1,300 commands takes about a
minute). The last line is one JSON object.

    .venv/bin/python bench/command_cost.py                # 300 and 1,300 commands, 32 clients
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nats
from command_path import make_raw_stream  # this folder is on the path of a script run here

from splice.natsserver import NatsServer

HERE = Path(__file__).resolve().parent
PAYLOAD = b"x" * 334  # the size of the command path's event (its sample)
HEADERS = {"Splice-Topic": "ServiceTypeUpdated", "Bench-Pad": "x" * 330}  # and its headers'


def callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]


def total(prefix: Path) -> int:
    """The instructions callgrind counted, from its one output file starting with `prefix`."""
    found = sorted(prefix.parent.glob(prefix.name + ".*"))
    if len(found) != 1:
        raise RuntimeError(f"expected one callgrind file {prefix}.*, found {found}")
    for line in found[0].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {found[0]}")


def service_run(tmp: Path, n: int, clients: int) -> int:
    out = tmp / f"serve-{n}"
    splice = Path(sys.executable).parent / "splice"
    run = subprocess.run(
        [sys.executable, str(HERE / "command_path.py"), "--rounds", "1", "--warmup", "0",
         "--commands", str(n), "--clients", str(clients), "--start-timeout", "600",
         "--serve-cmd", shlex.join([*callgrind(out), str(splice)])],
        capture_output=True, text=True, timeout=3600, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"command_path.py failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result.get("splice_update_errors"):
        raise RuntimeError(f"commands failed: {result}")
    return total(out)


def publisher_run(tmp: Path, url: str, n: int, clients: int) -> int:
    out = tmp / f"publish-{n}"
    subprocess.run([*callgrind(out), sys.executable, __file__, "--publisher", url,
                    "--count", str(n), "--clients", str(clients)],
                   capture_output=True, timeout=3600, check=True)
    return total(out)


async def publish(url: str, n: int, clients: int) -> None:
    """`n` js.publish to BENCH_RAW, `clients` awaiting at once (the raw phase's shape)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    left = n

    async def client(c: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await js.publish(f"bench.c{c}.evt", PAYLOAD, headers=HEADERS, timeout=60)

    await asyncio.gather(*(client(c) for c in range(clients)))
    await nc.close()


async def make_stream(url: str) -> None:
    nc = await nats.connect(url)
    await make_raw_stream(nc.jetstream())  # the raw phase's stream
    await nc.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", type=int, nargs=2, default=[300, 1300], metavar=("N1", "N2"),
                   help="commands in the two runs (default 300 1300)")
    p.add_argument("--clients", type=int, default=32, help="in flight at once (default 32)")
    p.add_argument("--publisher", metavar="URL", help=argparse.SUPPRESS)  # the baseline's client
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)  # its publishes
    args = p.parse_args(argv)
    if args.publisher:
        asyncio.run(publish(args.publisher, args.count, args.clients))
        return 0
    n1, n2 = args.commands
    if not 0 <= n1 < n2:
        p.error("--commands wants N1 < N2")
    if shutil.which("valgrind") is None:
        p.error("valgrind is missing (Debian's valgrind; ./dev setup installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="splice-cost-"))
    server = NatsServer(store_dir=tmp / "nats")
    try:
        serve = [service_run(tmp, n, args.clients) for n in (n1, n2)]
        server.start()
        asyncio.run(make_stream(server.url))
        raw = [publisher_run(tmp, server.url, n, args.clients) for n in (n1, n2)]
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    per_command = (serve[1] - serve[0]) / (n2 - n1)
    per_publish = (raw[1] - raw[0]) / (n2 - n1)
    print(f"splice serve: {serve[0]:,} instructions for {n1} commands, {serve[1]:,} for {n2}: "
          f"{per_command:,.0f} per servicetype.update", flush=True)
    print(f"nats-py client: {raw[0]:,} for {n1} js.publish, {raw[1]:,} for {n2}: "
          f"{per_publish:,.0f} per publish", flush=True)
    print(f"ratio (per publish / per command): {per_publish / per_command:.3f}", flush=True)
    print(json.dumps({
        "instructions_per_command": round(per_command),
        "instructions_per_raw_publish": round(per_publish),
        "ratio": round(per_publish / per_command, 4),
        "commands": [n1, n2], "clients": args.clients,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
