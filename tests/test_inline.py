"""Synchronous code run inline on the loop (`splice.events.inline`): it waits for I/O without
blocking the loop, its locks and signals wait the same way, and a connection on the loop serves
it (real nats-server for the last)."""

from __future__ import annotations

import asyncio
import time

import pytest

from splice.events.inline import Gate, Latch, inline, pause, run_inline, wait
from splice.events.natsio import NatsThread
from splice.natsserver import NatsServer


async def test_inline_code_gets_results_and_errors_of_what_it_waits_for() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 41

    async def boom() -> None:
        raise KeyError("k")

    def work() -> tuple[bool, int, str]:
        got = wait(value())
        try:
            wait(boom())
        except KeyError as e:
            caught = str(e)
        return inline(), got + 1, caught

    assert await run_inline(work) == (True, 42, "'k'")
    assert not inline()


async def test_an_error_of_the_inline_code_reaches_its_awaiter() -> None:
    def work() -> None:
        pause(0)
        raise ValueError("decided badly")

    with pytest.raises(ValueError, match="decided badly"):
        await run_inline(work)


async def test_waiting_inline_lets_the_loop_run_other_work() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        def work() -> int:
            before = ticks
            pause(0.05)
            return ticks - before

        assert await run_inline(work) >= 5  # the loop ticked while the code waited
    finally:
        task.cancel()


def test_wait_outside_inline_code_refuses_instead_of_blocking() -> None:
    async def nothing() -> None:
        return None

    coro = nothing()
    with pytest.raises(RuntimeError, match="outside run_inline"):
        wait(coro)
    coro.close()


async def test_a_gate_serialises_inline_code_in_arrival_order() -> None:
    made: list[Gate] = []  # made inline: an inline gate
    trace: list[str] = []

    def work(i: int) -> None:
        if not made:
            made.append(Gate())
        g = made[0]
        g.acquire()
        try:
            trace.append(f"in{i}")
            pause(0.005)  # others queue meanwhile
            trace.append(f"out{i}")
        finally:
            g.release()

    await asyncio.gather(*(run_inline(work, i) for i in range(4)))
    assert trace == [x for i in range(4) for x in (f"in{i}", f"out{i}")]


async def test_a_gate_passes_on_when_a_waiter_is_cancelled() -> None:
    made: list[Gate] = []

    def holder() -> None:
        made.append(Gate())
        made[0].acquire()
        pause(0.05)
        made[0].release()

    def waiter() -> str:
        made[0].acquire()
        made[0].release()
        return "got it"

    first = asyncio.create_task(run_inline(holder))
    await asyncio.sleep(0.01)
    doomed = asyncio.create_task(run_inline(waiter))
    later = asyncio.create_task(run_inline(waiter))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await first
    assert await asyncio.wait_for(later, 2) == "got it"
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_a_latch_wakes_inline_waiters_and_passes_once_set() -> None:
    made: list[Latch] = []

    def make() -> None:
        made.append(Latch())

    await run_inline(make)
    woke: list[int] = []

    def waiter(i: int) -> None:
        made[0].wait()
        woke.append(i)

    tasks = [asyncio.create_task(run_inline(waiter, i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert woke == []
    made[0].set()
    await asyncio.gather(*tasks)
    assert sorted(woke) == [0, 1, 2]
    await run_inline(waiter, 3)  # already set: no wait
    assert woke[-1] == 3


async def test_a_connection_on_the_loop_serves_inline_code_and_other_threads(
    fresh_nats: NatsServer,
) -> None:
    conn = await NatsThread.on_this_loop(fresh_nats.url, name="inline-test")
    try:
        def ask() -> bool:
            info = conn.call(conn.api("$JS.API.INFO", None))
            return "memory" in info

        assert await run_inline(ask)
        started = time.monotonic()
        assert await asyncio.to_thread(ask)  # another thread still just calls it
        assert time.monotonic() - started < 10
    finally:
        await asyncio.to_thread(conn.close)
