"""Host drivers, one per provider: each turns the services of its provider on this host into
operations with a pure ``plan(desired, observed)``, applies them, and observes the host.

A driver offers:

* ``provider`` — the provider it serves (what the agent advertises, and the scheduler places by);
* ``keep_bridges`` — the bridges the host's other drivers need: set by the agent before each
  converge, never deleted by this driver even when it no longer needs them (the drivers share
  the networks' bridges, and one must not remove a bridge another is about to plug into);
* ``observe(desired)`` — what the host holds of its kind (its blocking calls off the loop);
* ``plan(desired, observed)`` — pure: the operations that close the gap;
* ``converge(desired)`` — observe, plan, apply; returns each service's result;
* ``run_resync(interval_s, stop)`` and ``close()``.

`DRIVERS` is the one table of them; an agent offers exactly the providers found here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from splice.agents.model import LoadBalancerSpec


class Driver(Protocol):
    provider: str
    keep_bridges: frozenset[str]

    def __init__(self, host_name: str, state_dir: str | os.PathLike[str], *, prefix: str,
                 on_report: Callable[[Any], Any] | None) -> None: ...

    async def observe(self, desired: Mapping[str, LoadBalancerSpec]) -> Any: ...

    def plan(self, desired: Mapping[str, LoadBalancerSpec], observed: Any) -> list[Any]: ...

    async def converge(self, desired: Mapping[str, LoadBalancerSpec]) -> dict[str, Any]: ...

    async def run_resync(self, interval_s: float, stop: Any) -> None: ...

    def close(self) -> None: ...


async def resync_every(
    interval_s: float, stop: asyncio.Event, resync: Callable[[], Awaitable[Any]], what: str
) -> None:
    """Call `resync()` every `interval_s` until `stop` is set; its errors are logged, never
    fatal (the next round tries again)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            break
        try:
            await resync()
        except Exception:
            structlog.get_logger("splice.agent").exception("resync failed", driver=what)


def drivers() -> Mapping[str, type[Driver]]:
    """The drivers by provider (imported here, not at import time of the agent's model)."""
    from .haproxy import HaproxyDriver
    from .l4 import L4Driver
    from .tap import TapDriver

    return {HaproxyDriver.provider: HaproxyDriver, L4Driver.provider: L4Driver,
            TapDriver.provider: TapDriver}  # the agent hands it taps, not load balancers
