"""The projector's committer: a batch's transaction, run where the projector runs.

It runs each piece of work at once, on the caller's thread, in the order given, and keeps
its failure for the next `wait` (`submit` waits first): the projector's protocol of a batch
"in flight" stays, with nothing in flight once `submit` returns.

Commits once ran on a thread of their own, beside the folding of the next batch. They gained
nothing there: Python's sqlite3 releases the GIL around every statement it runs and must take
it back after each, so beside a thread that folds, a commit thread waited for the GIL at every
row (a rebuild's fold used 4-9 % more CPU in the same wall time); and psycopg's COPY formats
each row under the GIL too. A rebuild of 100k events into PostgreSQL ran at 25.9k events/s
with commits here against 23.8k with the thread (7 alternating runs, 6 won). PostgreSQL's own
work still overlaps the reading: a rebuild's reader is another process, and a live projector's
reads go on on the event loop while its pool thread commits.
"""

from __future__ import annotations

from collections.abc import Callable


class Committer:
    """Runs each callable at once; `wait` raises the first failure since the last `wait`."""

    def __init__(self) -> None:
        self._failure: Exception | None = None

    def submit(self, commit: Callable[[], None]) -> None:
        """Raise what failed before, if anything; then run `commit`."""
        self.wait()
        self.queue(commit)

    def queue(self, work: Callable[[], None]) -> None:
        """Run `work` (after an earlier failure: not at all; that failure is raised by
        `wait`)."""
        if self._failure is not None:
            return
        try:
            work()
        except Exception as e:  # raised by `wait`, as a batch in flight's would be
            self._failure = e

    def wait(self) -> None:
        """Raise the failure of what ran since the last `wait`, once."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
