"""The projector's committer: one batch's transaction in flight on a thread of its own.

While batch N commits (PostgreSQL's own work, in its server), the projector decodes and folds
batch N+1. At most one transaction is in flight, and they go in the order they were handed
over: `submit` first waits for the one before. `queue` hands over work that goes before the
next transaction (a rebuild's staged rows) without waiting.

``inline=True`` runs each piece of work at once, on the caller's thread, with the same
protocol (a failure is raised by the next `wait`). That is for SQLite, whose work is done in
this process: Python's sqlite3 releases the GIL around every statement it runs and must take
it back after each, so beside a thread that folds, a commit thread waits for the GIL at every
row and overlaps nothing. A rebuild of 100k events cost 4-9 % more CPU that way, in the same
wall time as its CPU (`bench/replay.py`'s fold, measured apart).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Committer:
    """Runs one callable at a time on its thread; `wait` returns (or raises) their outcome."""

    def __init__(self, *, inline: bool = False) -> None:
        self.inline = inline
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(self, commit: Callable[[], None]) -> None:
        """Wait for what is in flight (raising its failure), then start `commit`."""
        self.wait()
        self.queue(commit)

    def queue(self, work: Callable[[], None]) -> None:
        """Start `work` after what is in flight, without waiting for it (inline: do it now)."""
        if self.inline:
            done: Future[None] = Future()
            try:
                work()
            except Exception as e:  # raised by `wait`, as from the thread
                done.set_exception(e)
            else:
                done.set_result(None)
            self._pending.append(done)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="splice-commit")
        self._pending.append(self._pool.submit(work))

    def wait(self) -> None:
        """Until nothing is in flight; raises the first failure of what ran, once."""
        pending, self._pending = self._pending, []
        failure: BaseException | None = None
        for done in pending:
            try:
                done.result()
            except BaseException as e:
                failure = failure or e
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Stop the thread (after what is in flight); a later `submit` starts a new one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
