"""The projector's committer: one batch's transaction in flight on a thread of its own.

While batch N commits (SQLite's or PostgreSQL's own work, with the GIL released), the
projector decodes and folds batch N+1. At most one transaction is in flight, and they go in
the order they were handed over: `submit` first waits for the one before. `queue` hands over
work that goes before the next transaction (a rebuild's staged rows) without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Committer:
    """Runs one callable at a time on its thread; `wait` returns (or raises) their outcome."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(self, commit: Callable[[], None]) -> None:
        """Wait for what is in flight (raising its failure), then start `commit`."""
        self.wait()
        self.queue(commit)

    def queue(self, work: Callable[[], None]) -> None:
        """Start `work` after what is in flight, without waiting for it."""
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
