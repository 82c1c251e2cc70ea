"""The composition root: what each Splice process is made of, started and stopped in one place.

One function per process (`serve`, `agent`, `projector` here; `splice.up.run_up`) builds its parts. A `Root`
holds their lifecycle in one `contextlib.AsyncExitStack`, so they stop in the reverse order of
their start, each within a deadline; SIGINT and SIGTERM set its `stop` event. Each process opens
one NATS connection here (`Root.nc`), which its parts share (the command service and its
monitors, the projector, the agent, the demo). The command side's event store keeps one of its
own: it runs on a thread with its own event loop, where an asyncio connection cannot follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from splice import client, pipes
from splice.events.collector import tune_collector
from splice.events.router_fold import ROUTER_PROVIDER

log = structlog.get_logger("splice.root")
# What an agent offers unless told otherwise: every provider it has a host driver for.
AGENT_PROVIDERS = ["haproxy", "nftables-l4", ROUTER_PROVIDER, "tc-mirror"]

# How long each part of stopping may take; together they stay well inside a few seconds.
PARTS_STOP_S = 3.0
SERVICE_STOP_S = 3.0
CONNECTION_CLOSE_S = 1.0

# Stopping signals: Ctrl-C, a kill, and the terminal's hang-up (its default action would leave
# everything behind).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Part = Callable[[asyncio.Event], Coroutine[Any, Any, None]]  # runs until its event is set


def on_stop_signals(stop: asyncio.Event, say: Callable[[str], object] | None = None) -> None:
    """SIGINT, SIGTERM and SIGHUP set `stop` (after a hang-up, a terminal output is dropped).

    Not asyncio's add_signal_handler: it routes signals through a wake-up socket that processes
    forked by pyroute2 (for work inside namespaces) inherit, so a signal sent to such a child
    would reach this process's loop and stop Splice. A plain handler stays per process; in a
    forked child it just ends the child, as the default action would.
    """
    loop = asyncio.get_running_loop()
    me = os.getpid()

    def handler(signum: int, _frame: object) -> None:
        if os.getpid() != me:
            os._exit(0)
        if signum == signal.SIGHUP:
            pipes.detach_terminal()
        with contextlib.suppress(RuntimeError):  # the loop is closing: it is stopping anyway
            if say is not None:
                loop.call_soon_threadsafe(say, f"{signal.Signals(signum).name}: stopping")
            loop.call_soon_threadsafe(stop.set)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


async def cancel_until_done(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` until they are done. One cancel is not enough on Python 3.11: a
    cancellation that lands as an inner `asyncio.wait_for` completes is lost (nats-py's
    requests use one), and the task goes on."""
    while pending := [t for t in tasks if not t.done()]:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)


def signals_interrupt() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt: a stop before or after the event
    loop."""

    def interrupt(signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            pipes.detach_terminal()
        raise KeyboardInterrupt

    for sig in STOP_SIGNALS:
        signal.signal(sig, interrupt)


async def within(seconds: float, what: str, stop: Callable[[], Awaitable[Any]]) -> None:
    """Await `stop()` for at most `seconds`; a late or failing stop is logged, not raised."""
    try:
        await asyncio.wait_for(stop(), seconds)
    except TimeoutError:
        log.warning("did not stop in time; abandoned", part=what, deadline_s=seconds)
    except Exception as e:
        log.warning("stopped with an error", part=what, error=str(e))


class Root:
    """One process's parts: one stop event, one exit stack, one NATS connection."""

    def __init__(self, say: Callable[[str], object] | None = None) -> None:
        self.stop = asyncio.Event()  # SIGINT/SIGTERM
        self.stack = AsyncExitStack()
        self.nc: Any = None  # the process's NATS connection
        self.parts: list[asyncio.Task[None]] = []
        self._say = say

    async def __aenter__(self) -> Root:
        on_stop_signals(self.stop, self._say)
        await self.stack.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool:
        return bool(await self.stack.__aexit__(*exc))

    async def connect(self, url: str, name: str, *, wait: bool = False) -> Any:
        """Open the process's NATS connection; it closes after every part that may use it.
        `wait`: until NATS answers (a host agent waits for its cluster), or a stop signal."""
        while True:
            try:
                self.nc = await client.connect(
                    url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5
                )
                break
            except Exception as e:
                if not wait:
                    raise
                if self.stop.is_set():
                    break
                log.warning("NATS does not answer yet; trying again", error=str(e))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 1.0)
        if self.nc is None:
            raise ConnectionError("stopped before NATS answered")
        self.stack.push_async_callback(self._close_connection)
        return self.nc

    async def _close_connection(self) -> None:
        await within(CONNECTION_CLOSE_S, "nats connection", self.nc.drain)
        with contextlib.suppress(Exception):
            await self.nc.close()

    async def command_service(self, url: str, env: Mapping[str, str] | None = None) -> Any:
        from splice.services.service import CommandService

        service = CommandService(url, env=dict(env or {}), nc=self.nc)
        await service.start()
        self.stack.push_async_callback(within, SERVICE_STOP_S, "command service", service.stop)
        return service

    def start_parts(self, parts: Sequence[Part], deadline: float = PARTS_STOP_S) -> None:
        """Run `parts` as tasks; on the way out they are told to stop together, then cancelled
        if they outlive `deadline`."""
        stop = asyncio.Event()
        tasks = [asyncio.create_task(part(stop)) for part in parts]
        self.parts += tasks

        async def stop_them() -> None:
            stop.set()
            _, late = await asyncio.wait(tasks, timeout=deadline)
            for t in late:
                log.warning("part did not stop in time; cancelled", part=t.get_coro())
            await cancel_until_done(tasks)

        self.stack.push_async_callback(stop_them)

    async def until_stopped(self, or_a_part_ends: bool = False) -> None:
        """Wait for SIGINT/SIGTERM; with `or_a_part_ends`, also for the first part to end (its
        error, if any, is raised). The process is up: in a long-running one, what it built to
        run is frozen (`tune_collector`)."""
        if _LONG_RUNNING.get():
            gc.freeze()
        stopped = asyncio.create_task(self.stop.wait())
        waiting: set[asyncio.Future[Any]] = {stopped}
        if or_a_part_ends:
            waiting.update(self.parts)
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        for task in done:
            error = None if task is stopped or task.cancelled() else task.exception()
            if error is not None:
                raise error


# Set by `run_process`: this is a long-running process (not a test's root), whose collector
# `tune_collector` tunes and which freezes what it built once it is up (`Root.until_stopped`).
_LONG_RUNNING: ContextVar[bool] = ContextVar("splice_long_running", default=False)


def run_process(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one process's `main` until it returns; a signal before its loop (or after) ends it
    quietly, as one inside it does."""
    tune_collector()
    _LONG_RUNNING.set(True)
    signals_interrupt()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # a signal before the loop took the handlers over
        pass
    finally:
        signals_interrupt()  # the loop is gone: a second Ctrl-C must not reach its handler


# -- splice serve, splice agent, splice projector ---------------------------------------------


def serve_metrics(port: int | None, say: Callable[[str], object]) -> str | None:
    """With a `port` (0: a free one), serve the process's Prometheus metrics on 127.0.0.1 and
    say where; None: no endpoint (the default of `splice serve`, `agent` and `projector`)."""
    if port is None:
        return None
    from splice.events import metrics

    url = metrics.serve(port)
    say(f"metrics: {url} (Prometheus text)")
    return url


def serve(url: str, env: Mapping[str, str], metrics_port: int | None = None,
          say: Callable[[str], object] = print) -> None:
    """One more command-service replica (one member of the queue group), until a signal."""
    serve_metrics(metrics_port, say)

    async def main() -> None:
        async with Root() as root:
            await root.connect(url, "splice-serve")
            await root.command_service(url, env)
            await root.until_stopped()

    run_process(main)


@dataclass(frozen=True)
class AgentConfig:
    host: str
    state_dir: Path
    providers: list[str]
    prefix: str = "spl-"
    resync_s: float = 30.0
    js_prefix: str | None = None  # a host's own account reads events through imported API
    netns: str | None = None  # the host's network namespace, when it is not the process's
    underlay_ip: str | None = None  # this host's underlay address (VXLAN to the other hosts)
    stats_s: float = 5.0  # seconds between two readings of the services' counters


def agent_part(url: str, cfg: AgentConfig, nc: Any) -> Part:
    """The agent on the process's connection, run until its event is set."""
    from splice.agents.runtime import Agent

    agent = Agent(url, cfg.host, cfg.state_dir, providers=cfg.providers, prefix=cfg.prefix,
                  resync_s=cfg.resync_s, nc=nc, js_prefix=cfg.js_prefix,
                  underlay_ip=cfg.underlay_ip, stats_s=cfg.stats_s)
    return agent.run


def projector_part(url: str, db_url: str, nc: Any) -> Part:
    """The projector on the process's connection, run until its event is set."""
    from splice.projections.runner import run_projector

    async def part(stop: asyncio.Event) -> None:
        await run_projector(url, db_url, stop, nc=nc)

    return part


def agent(url: str, cfg: AgentConfig, metrics_port: int | None = None,
          say: Callable[[str], object] = print) -> None:
    """The host agent, until a signal (or until it fails). With `cfg.netns`, the whole process
    lives in that network namespace (a host simulated on one machine, or a host's own); its
    metrics are served before it moves, so in the namespace it was started from."""
    serve_metrics(metrics_port, say)
    if cfg.netns:
        from splice.agents import netns

        netns.enter(cfg.netns)
    from splice.agents.drivers.overlay import host as overlay

    overlay.fence(cfg.prefix)  # before anything: this host may not own what it holds any more

    async def main() -> None:
        async with Root() as root:
            await root.connect(url, f"splice-agent-{cfg.host}", wait=True)
            root.start_parts([agent_part(url, cfg, root.nc)])
            await root.until_stopped(or_a_part_ends=True)

    run_process(main)


def projector(url: str, db_url: str, ready: Callable[[], object] = lambda: None,
              metrics_port: int | None = None, say: Callable[[str], object] = print) -> None:
    """The projector (read models and queries), until a signal (or until it fails)."""
    serve_metrics(metrics_port, say)

    async def main() -> None:
        async with Root() as root:
            await root.connect(url, "splice-projector")
            root.start_parts([projector_part(url, db_url, root.nc)])
            ready()
            await root.until_stopped(or_a_part_ends=True)

    run_process(main)
