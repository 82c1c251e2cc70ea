"""The leftover-task guard (`tests/leftovers.py`) fails a run that leaves a task pending, names
the test and the task, and lets a run that cancels and awaits its tasks pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent

LEAKY = '''
import asyncio


async def forever():
    await asyncio.sleep(3600)


def test_leaves_a_task_pending():
    loop = asyncio.new_event_loop()
    loop.create_task(forever())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
'''

TIDY = '''
import asyncio
import contextlib


async def forever():
    await asyncio.sleep(3600)


def test_cancels_and_awaits_its_task():
    loop = asyncio.new_event_loop()
    task = loop.create_task(forever())
    loop.run_until_complete(asyncio.sleep(0))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    loop.close()
'''


def run_guarded(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess on one test file, with the guard's hooks as its conftest."""
    (tmp_path / "conftest.py").write_text("from tests.leftovers import *  # noqa: F403\n")
    (tmp_path / "test_it.py").write_text(test_source)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "-o", "asyncio_default_fixture_loop_scope=function",
         str(tmp_path / "test_it.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_a_task_left_pending_fails_the_run_and_is_named(tmp_path: Path) -> None:
    res = run_guarded(tmp_path, LEAKY)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 passed" in res.stdout  # the test itself passed: the guard failed the run
    assert "tasks left pending" in res.stdout
    named = [line for line in res.stdout.splitlines()
             if "test_it.py::test_leaves_a_task_pending" in line]
    assert len(named) == 1 and "<Task pending" in named[0] and "coro=<forever()" in named[0]


def test_a_run_that_awaits_its_tasks_passes_quietly(tmp_path: Path) -> None:
    res = run_guarded(tmp_path, TIDY)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tasks left pending" not in res.stdout
    assert "Task was destroyed" not in res.stdout + res.stderr
