"""The projector's committer: one batch's transaction in flight on a thread of its own.

While batch N commits (SQLite's or PostgreSQL's own work, with the GIL released), the
projector decodes and folds batch N+1. At most one transaction is in flight, and they go in
the order they were handed over: `submit` first waits for the one before.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Committer:
    """Runs one callable at a time on its thread; `wait` returns (or raises) its outcome."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def submit(self, commit: Callable[[], None]) -> None:
        """Wait for the transaction in flight (raising its failure), then start `commit`."""
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="splice-commit")
        self._pending = self._pool.submit(commit)

    def wait(self) -> None:
        """Until nothing is in flight; raises what the last transaction raised, once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def close(self) -> None:
        """Stop the thread (after what is in flight); a later `submit` starts a new one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
