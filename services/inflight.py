"""One command id, one run in this process: duplicates in flight join it, recent ones are
answered from memory (the executor's first line of idempotency; the stream is its last)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from splice.events.contracts import Error, Failed, Ok
from splice.events.inline import Latch

Key = tuple[str, str]  # (tenant, command id): a command id is its tenant's
Run = Callable[[], tuple[Ok | Failed, int]]


class _Flight:
    """A command id being handled in this process; its duplicates wait for its reply."""

    __slots__ = ("done", "error", "reply", "subject")

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.done = Latch()
        self.reply: Ok | Failed | None = None
        self.error: BaseException | None = None


class InFlight:
    """The commands being handled here, and the last `keep` first replies that were ok."""

    def __init__(self, count: Callable[[str], None], keep: int = 10_000) -> None:
        self._count = count
        self._keep = keep
        self._flights: dict[Key, _Flight] = {}
        self._answered: OrderedDict[Key, tuple[str, Ok]] = OrderedDict()
        self._guard = threading.Lock()

    def forget(self) -> None:
        """Drop the memory of recent replies (as `keep` other commands would)."""
        with self._guard:
            self._answered.clear()

    def once(self, key: Key, subject: str, run: Run) -> tuple[Ok | Failed, int]:
        """`run()`'s reply, unless the same command id is in flight here (then its reply, once
        it has one) or was answered lately (that answer). Attempts 0: the reply of another."""
        with self._guard:
            answered = self._answered.get(key)
            flight = None if answered is not None else self._flights.get(key)
            if answered is not None:
                self._answered.move_to_end(key)
            elif flight is None:
                mine = self._flights[key] = _Flight(subject)
        if answered is not None:
            self._count("answered")
            return same(key[1], subject, *answered), 0
        if flight is not None:
            self._count("joined")
            flight.done.wait()
            if flight.error is not None or flight.reply is None:
                raise RuntimeError("the command this one duplicates failed") from flight.error
            return same(key[1], subject, flight.subject, flight.reply), 0
        try:
            mine.reply, attempts = run()
        except BaseException as e:
            mine.error = e
            raise
        finally:
            with self._guard:
                del self._flights[key]
                if isinstance(mine.reply, Ok):
                    self._answered[key] = (subject, mine.reply)
                    if len(self._answered) > self._keep:
                        self._answered.popitem(last=False)
            mine.done.set()
        return mine.reply, attempts


def same(command_id: str, subject: str, first_subject: str, reply: Ok | Failed) -> Ok | Failed:
    """The reply of the same command id handled before (a conflict for another command)."""
    if first_subject != subject:
        message = f"command id {command_id} was already used for {first_subject}"
        error = Error(code="conflict", message=message, field="command_id")
        return Failed(error=error, command_id=command_id)
    return reply
