"""CPython's collector, for Splice's long-running processes (`splice serve`, `agent`,
`projector`, `up`), and none at all for the projector's rebuild worker.

What exists once such a process is up lives as long as the process: frozen, no collection
walks it again. A command or an event allocates and frees many small containers, nearly all
freed by their reference counts, so young collections wait for 10,000 net allocations. With
CPython's defaults the collector took about a tenth of `splice serve`'s CPU under
bench/command_path.py (each full collection walked the whole heap, ~58 ms), and 13 % of the
rebuild worker's under bench/replay.py.

The rebuild worker (`projections/parallel.py`) is a process with an end, and its heap grows
with the rebuild (the row caches): each young collection walked what the batches before had
kept, and the fuller ones all of it. It collects nothing instead: folding makes no reference
cycles (`tests/projections/test_fold_garbage.py` folds every kind of event and finds none), so
reference counts free what a batch leaves, and what the fork copied is never walked.
"""

from __future__ import annotations

import gc

# Young collections wait for this many net allocations of containers (CPython: 700).
COLLECTOR_THRESHOLD = (10_000, 10, 10)


def tune_collector() -> None:
    """Freeze what the process holds now, and space young collections out."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLD)


def stop_collector() -> None:
    """No cyclic collection in this process from now on (the rebuild worker: see above)."""
    gc.disable()
