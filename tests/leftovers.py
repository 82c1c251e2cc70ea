"""A guard that keeps the test run quiet: a task left pending when its loop went away fails it.

asyncio says "Task was destroyed but it is pending!" (through its logger) when a task nobody
cancelled and awaited is garbage-collected: a subscription never unsubscribed, a loop stopped
with work on it. Such a line used to show after the summary, naming no test. Here every such
record is kept with the test that was running when it came (a task collected later is named
with a later test: look at the task's coroutine too), the garbage is collected once more when
the session ends, and the run then fails with the list, in a section of its own.

`tests/conftest.py` imports these hooks; `tests/test_leftovers.py` checks that they fail a run.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Generator
from typing import Any

import pytest

DESTROYED = "Task was destroyed but it is pending!"


class Leftovers(logging.Handler):
    """Keeps asyncio's records of destroyed pending tasks, with the test running then."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.current = "(collection)"
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(DESTROYED):
            self.seen.append((self.current, message))


LEFTOVERS = Leftovers()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger("asyncio").addHandler(LEFTOVERS)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger("asyncio").removeHandler(LEFTOVERS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, Any, Any]:
    LEFTOVERS.current = item.nodeid
    try:
        return (yield)
    finally:
        LEFTOVERS.current = f"(after {item.nodeid})"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    gc.collect()  # what is left of the last tests' loops and tasks goes now, not at exit
    if LEFTOVERS.seen and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not LEFTOVERS.seen:
        return
    terminalreporter.section("tasks left pending (cancel and await them)", red=True)
    for where, message in LEFTOVERS.seen:
        task = message.split("\n", 1)[-1].strip().removeprefix("task: ")
        terminalreporter.write_line(f"{where}: {task}")
