"""Synchronous code that waits for asyncio on the loop's own thread, without blocking the loop.

The event library's `save` and the command executor are synchronous; the store's I/O is asyncio.
Run on worker threads, every command crosses threads four times (loop, worker, the store's loop,
back), and at 32 commands in flight those hand-offs and the GIL queue behind them cost more than
the JetStream write itself. Here a command runs in a greenlet on the loop's thread instead
(`run_inline`): where it must wait for I/O (`wait`), it switches back to the loop, which awaits
the I/O and runs other commands meanwhile, then switches back into the command with the result.
This is the bridge SQLAlchemy's asyncio extension is built on (greenlet, the same library).

Only `wait` may switch: code between two waits runs alone, as on one thread. A lock held across
a `wait` must be a lock that waits the same way (`Gate`), never a `threading.Lock`, which would
stop the whole loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet

T = TypeVar("T")


class _Inline(greenlet.greenlet):
    """A greenlet running synchronous code for `run_inline`."""


async def run_inline(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, run on this thread; each `wait(aw)` inside it awaits `aw` here."""
    child = _Inline(fn, greenlet.getcurrent())
    return await _resume(child, child.switch(*args))


def start_inline(fn: Callable[..., T], args: tuple[Any, ...],
                 then: Callable[[T | None, Exception | None], Awaitable[None]]
                 ) -> asyncio.Task[None]:
    """`run_inline`, begun now: `fn(*args)` runs here until its first `wait` (a request's
    decision starts in the very callback that received it, not a loop turn later); the rest,
    and then `then(result, error)`, go on in the task returned."""
    child = _Inline(fn, greenlet.getcurrent())

    async def rest(step: Any) -> None:
        try:
            result = await _resume(child, step)
        except Exception as e:
            await then(None, e)
        else:
            await then(result, None)

    try:
        step = child.switch(*args)
    except Exception as e:
        return asyncio.ensure_future(then(None, e))
    return asyncio.ensure_future(rest(step))


async def _resume(child: _Inline, step: Any) -> Any:
    """Await what `child` waits for and hand it the outcome, until it returns."""
    while not child.dead:
        try:
            value = await step
        except BaseException as e:  # the code that waited gets it (a cancellation too)
            step = child.throw(e)
        else:
            step = child.switch(value)
    return step


def inline() -> bool:
    """Whether this code runs inside `run_inline` (so it may `wait`)."""
    return isinstance(greenlet.getcurrent(), _Inline)


def wait(aw: Awaitable[T]) -> T:
    """Inside `run_inline`: the result of awaiting `aw` on the loop (other work runs meanwhile)."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Inline):
        raise RuntimeError("wait() outside run_inline would block the loop")
    return current.parent.switch(aw)


def pause(seconds: float) -> None:
    """Sleep: a wait on the loop inside `run_inline`, else a thread's sleep."""
    if inline():
        wait(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


class Gate:
    """A mutex for code that runs inline (waiting for it lets the loop run on) or on threads
    (a thread lock), whichever made it: one process uses one way. Released, it passes straight
    to the first inline waiter, in order."""

    __slots__ = ("__weakref__", "_held", "_thread", "_waiters")

    def __init__(self) -> None:
        self._held = False  # held inline
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._thread: threading.Lock | None = None if inline() else threading.Lock()

    def acquire(self) -> None:
        if self._thread is not None:
            self._thread.acquire()
            return
        if not self._held:
            self._held = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            wait(fut)
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # handed over just as the wait was cancelled: pass it on
            raise

    def release(self) -> None:
        if self._thread is not None:
            self._thread.release()
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # still held: now by that waiter
                return
        self._held = False


class Latch:
    """A one-time signal for code that runs inline or on threads (see `Gate`); made where it
    will be waited for (inline code's costs no thread event)."""

    __slots__ = ("_event", "_futures", "_set")

    def __init__(self) -> None:
        self._event = None if inline() else threading.Event()
        self._futures: list[asyncio.Future[None]] = []
        self._set = False

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()
        futures, self._futures = self._futures, []
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    def wait(self) -> None:
        if self._set:
            return
        if self._event is not None:
            self._event.wait()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(fut)
        wait(fut)
