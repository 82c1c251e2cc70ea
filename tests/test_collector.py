"""The collector of a long-running process (`splice.events.collector.tune_collector`, called
by `splice.root.run_process`): `splice serve`, `agent`, `projector` and `up` run with young
collections every 10,000 net allocations and with what they built at start-up frozen; code
that only borrows a `Root` (tests) is left as it is."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys

from splice.events.collector import COLLECTOR_THRESHOLD
from splice.root import Root

PROCESS = """
import gc, json
from splice.root import Root, run_process

async def main():
    loaded = gc.get_freeze_count()
    async with Root() as root:
        built = [[i] for i in range(5000)]  # what a process builds to run (lists: tracked)
        root.stop.set()
        await root.until_stopped()
        print(json.dumps({"threshold": gc.get_threshold(), "loaded": loaded,
                          "up": gc.get_freeze_count(), "built": len(built)}))

run_process(main)
"""


def test_a_process_run_by_run_process_tunes_its_collector_and_freezes_what_it_built() -> None:
    out = subprocess.run([sys.executable, "-c", PROCESS], capture_output=True, text=True,
                         timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(got["threshold"]) == COLLECTOR_THRESHOLD
    assert got["loaded"] > 10_000  # the modules' objects, frozen before `main` ran
    assert got["up"] >= got["loaded"] + got["built"]  # and what it built, once it was up


def test_a_root_in_this_process_leaves_the_collector_alone() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()

    async def borrow() -> None:
        async with Root() as root:
            root.stop.set()
            await root.until_stopped()

    asyncio.run(borrow())
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
