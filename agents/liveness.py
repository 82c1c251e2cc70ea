"""An agent's liveness: its heartbeats, its registrations, and its fence.

**Heartbeats** go on ``splice.hb.<host>`` every `HEARTBEAT_S` (the host monitor's contract,
`services.monitors`); a host not heard of for ``SPLICE_HOST_TIMEOUT`` (2 s) is declared lost
and its services move to other hosts.

**The fence** keeps a host that may have been declared lost from serving its networks to
the other hosts while the cluster moves its services away (split brain: two hosts answering
for one VIP). Fenced, the agent takes its VXLAN devices down (`drivers.overlay`): what runs
on the host stays, but is cut from every other host. It is fenced

* from the moment it starts (a host that comes back does not know yet what it still owns),
* when it reads its own `HostLost`,
* when NATS has not answered its pings for `FENCE_S` (less than the host timeout: it fences
  before the cluster can have declared it lost and moved anything);

and each time it registers again. It is unfenced when it reads its own `HostRegistered` of
that registration: the stream is ordered, so by then it has read every move that its loss
caused (they are appended with the `HostLost`, before the new registration), and its next
converge removes what moved away before the overlay brings its tunnels up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from splice.events import subjects

log = structlog.get_logger("splice.agent.liveness")

HEARTBEAT_S = 0.25  # the host monitor declares a host lost after SPLICE_HOST_TIMEOUT (2 s)
FENCE_S = 1.5  # cut from NATS this long: fenced (before the monitor's 2 s)
PROBE_S = 0.25  # a round trip to the NATS server this often, this long at most


class Liveness:
    def __init__(self, host: str, body: dict[str, Any],
                 command: Callable[[str, dict[str, Any]], Awaitable[bool]],
                 fence: Callable[[], Awaitable[None]], wake: Callable[[], None]) -> None:
        """`body`: the registration's fields (providers, underlay address); `command` sends
        one; `fence` takes the tunnels down; `wake` asks for a converge."""
        self.host, self.body = host, body
        self._command, self._fence, self._wake = command, fence, wake
        self.fenced = True  # from the start: see the module's doc
        self.registering: str | None = None  # the command id awaited as HostRegistered
        self.registrations = 0

    async def register(self) -> bool:
        """Register (again); the fence lifts when its event is read."""
        cid = f"register-{self.host}-{uuid.uuid4().hex[:8]}"
        self.registering = cid
        ok = await self._command(subjects.command(subjects.HOSTS, "host", "register"), {
            "command_id": cid, "actor": f"agent:{self.host}", "host": self.host, **self.body})
        self.registrations += ok
        if not ok and self.registering == cid:
            self.registering = None  # `watch_connection` tries again
        return ok

    async def fence(self, why: str) -> None:
        if not self.fenced:
            log.warning("fenced: this host's tunnels are down until it registers again",
                        host=self.host, why=why)
        self.fenced = True
        await self._fence()

    def on_host_event(self, topic: str, host: str, command_id: str | None) -> asyncio.Task[Any] | None:
        """One event of the host registry, as folded; a task when it asks for work."""
        if host != self.host:
            return None
        if topic == "HostLost":
            return asyncio.create_task(self._lost())
        if topic == "HostRegistered" and self.fenced and command_id == self.registering:
            self.fenced, self.registering = False, None
            log.info("unfenced: registered again and read what moved", host=self.host)
            self._wake()
        return None

    async def _lost(self) -> None:
        await self.fence("declared lost")
        await self.register()

    async def heartbeats(self, nc: Any, stop: asyncio.Event) -> None:
        payload = json.dumps({"host": self.host, **self.body}).encode()
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await nc.publish(subjects.heartbeat(self.host), payload)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_S)

    async def watch_connection(self, nc: Any, stop: asyncio.Event) -> None:
        """Fence when NATS has not answered a ping for `FENCE_S` (a cut link leaves the
        connection open, silent: nothing but a round trip tells); register again once it
        answers."""
        last_ok = time.monotonic()
        while not stop.is_set():
            try:
                await nc.flush(timeout=PROBE_S)
                last_ok = time.monotonic()
                if self.fenced and self.registering is None:
                    await self.register()
            except Exception:
                if not self.fenced and time.monotonic() - last_ok >= FENCE_S:
                    await self.fence(f"no answer from NATS for {FENCE_S} s")
                    self.registering = None  # register again once it answers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=PROBE_S)
