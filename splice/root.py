"""The composition root: what each Splice process is made of, started and stopped in one place.

One function per process (`run_up`, `serve`, `agent`, `projector`) builds its parts. A `Root`
holds their lifecycle in one `contextlib.AsyncExitStack`, so they stop in the reverse order of
their start, each within a deadline; SIGINT and SIGTERM set its `stop` event. Each process opens
one NATS connection here (`Root.nc`), which its parts share (the command service and its
monitors, the projector, the agent, the demo). The command side's event store keeps one of its
own: it runs on a thread with its own event loop, where an asyncio connection cannot follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console

from splice import client
from splice.auth import strip_userinfo
from splice.events.router_fold import ROUTER_PROVIDER
from splice.natsserver import NatsServer, free_port, port_is_free
from splice.tls import self_signed

log = structlog.get_logger("splice.root")
# What an agent offers unless told otherwise: every provider it has a host driver for.
AGENT_PROVIDERS = ["haproxy", "nftables-l4", ROUTER_PROVIDER, "tc-mirror"]

# How long each part of stopping may take; together they stay well inside a few seconds.
DEMO_CLEANUP_S = 3.0
PARTS_STOP_S = 3.0
SERVICE_STOP_S = 3.0
CONNECTION_CLOSE_S = 1.0
SERVER_STOP_S = 5.0

DEMO_TENANT = "demo"  # the tenant whose credentials `splice up` writes beside the operator's
Part = Callable[[asyncio.Event], Coroutine[Any, Any, None]]  # runs until its event is set


def on_stop_signals(stop: asyncio.Event, say: Callable[[str], object] | None = None) -> None:
    """SIGINT and SIGTERM set `stop`.

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
        with contextlib.suppress(RuntimeError):  # the loop is closing: it is stopping anyway
            if say is not None:
                loop.call_soon_threadsafe(say, f"{signal.Signals(signum).name}: stopping")
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGINT, signal.SIGTERM):
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
    """SIGINT and SIGTERM raise KeyboardInterrupt: a stop before or after the event loop."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
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

    async def connect(self, url: str, name: str) -> Any:
        """Open the process's NATS connection; it closes after every part that may use it."""
        self.nc = await client.connect(
            url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
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
        error, if any, is raised)."""
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


def run_process(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one process's `main` until it returns; a signal before its loop (or after) ends it
    quietly, as one inside it does."""
    signals_interrupt()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # a signal before the loop took the handlers over
        pass
    finally:
        signals_interrupt()  # the loop is gone: a second Ctrl-C must not reach its handler


# -- splice serve, splice agent, splice projector ---------------------------------------------


def serve(url: str, env: Mapping[str, str]) -> None:
    """One more command-service replica (one member of the queue group), until a signal."""

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


def agent_part(url: str, cfg: AgentConfig, nc: Any) -> Part:
    """The agent on the process's connection, run until its event is set."""
    from splice.agents.runtime import Agent

    agent = Agent(url, cfg.host, cfg.state_dir, providers=cfg.providers, prefix=cfg.prefix,
                  resync_s=cfg.resync_s, nc=nc, js_prefix=cfg.js_prefix)
    return agent.run


def projector_part(url: str, db_url: str, nc: Any) -> Part:
    """The projector on the process's connection, run until its event is set."""
    from splice.projections.runner import run_projector

    async def part(stop: asyncio.Event) -> None:
        await run_projector(url, db_url, stop, nc=nc)

    return part


def agent(url: str, cfg: AgentConfig) -> None:
    """The host agent, until a signal (or until it fails)."""

    async def main() -> None:
        async with Root() as root:
            await root.connect(url, f"splice-agent-{cfg.host}")
            root.start_parts([agent_part(url, cfg, root.nc)])
            await root.until_stopped(or_a_part_ends=True)

    run_process(main)


def projector(url: str, db_url: str, ready: Callable[[], object] = lambda: None) -> None:
    """The projector (read models and queries), until a signal (or until it fails)."""

    async def main() -> None:
        async with Root() as root:
            await root.connect(url, "splice-projector")
            root.start_parts([projector_part(url, db_url, root.nc)])
            ready()
            await root.until_stopped(or_a_part_ends=True)

    run_process(main)


# -- splice up ----------------------------------------------------------------------------------


class AlreadyRunning(Exception):
    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(f"splice up is already running (pid {info['pid']}, {info['nats_url']})")
        self.info = info


@dataclass(frozen=True)
class UpConfig:
    state_dir: Path
    port: int = 0  # 0: 4222 if free, else a free one
    nats_url: str | None = None  # an existing NATS instead of the embedded one
    demo: bool = False
    tls: bool = False  # the embedded server speaks TLS only, with a certificate of its own


def agent_ok() -> bool:
    """A local agent needs root (namespaces), haproxy and nft."""
    return os.geteuid() == 0 and all(shutil.which(b) is not None for b in ("haproxy", "nft"))


def run_up(cfg: UpConfig, out: Console) -> None:
    """Run Splice on this machine until SIGINT/SIGTERM; wherever the signal lands, stop within
    a few seconds and leave nothing behind.

    Before the event loop runs (and after it), a signal raises KeyboardInterrupt; inside it, it
    sets the root's stop event, and start-up, which runs in phases, skips the phases left.
    """
    signals_interrupt()  # SIGTERM during start-up stops as cleanly as SIGINT
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    other = client.running_up(cfg.state_dir)
    if other is not None and int(other.get("pid", 0)) != os.getpid():
        raise AlreadyRunning(other)
    say = _sayer(out)
    try:
        run_process(lambda: _up(cfg, out, say))
    finally:
        say("Splice stopped.")


def _sayer(out: Console) -> Callable[[str], None]:
    def say(text: str) -> None:
        """Print, even when the terminal's Ctrl-C has already closed the pipe we print into."""
        with contextlib.suppress(OSError, ValueError):
            out.print(text)

    return say


def _embedded_server(root: Root, cfg: UpConfig) -> tuple[NatsServer, str]:
    """Start the embedded nats-server (from this, the main, thread: it dies with it)."""
    port, note = cfg.port, ""
    if port == 0:
        if port_is_free(4222):
            port = 4222
        else:
            port = free_port()
            note = " (port 4222 is taken by another server, so Splice picked a free one)"
    tls = None
    if cfg.tls:
        tls = self_signed(cfg.state_dir / client.TLS_DIR)
        os.environ["SSL_CERT_FILE"] = str(tls.ca)  # every connection of this process trusts it
        note += f"\n  TLS only: clients trust {tls.ca} (SSL_CERT_FILE)"
    server = NatsServer(
        store_dir=cfg.state_dir / "nats",
        port=port,
        name="splice-up",
        die_with_parent=True,
        auth_dir=cfg.state_dir / client.CREDENTIALS_DIR,  # the operator's and the demo's too
        tls=tls,
    )
    server.issue("tenant", DEMO_TENANT)
    root.stack.callback(server.stop, SERVER_STOP_S)  # also when start() gives up half-way
    server.start()
    return server, note


async def _up(cfg: UpConfig, out: Console, say: Callable[[str], None]) -> None:
    """The parts of `splice up`, in the order they start (they stop in the reverse one):
    the embedded nats-server, the process's connection, the command service, the state file
    (once commands are served, so the CLI finds a ready Splice), the projector and the local
    agent (they stop after the demo: the agent removes the demo's load balancer), the demo (a
    task that is cancelled, then cleans up with a deadline)."""
    async with Root(lambda text: say(f"[dim]{text}[/]")) as root:
        url, public, note = cfg.nats_url or "", strip_userinfo(cfg.nats_url or ""), ""
        if cfg.nats_url is None:
            server, note = _embedded_server(root, cfg)
            url, public = server.url, server.public_url
        say(f"[bold green]Splice is up.[/] NATS listens on [bold]{public}[/]{note}")
        say(f"  state directory: {cfg.state_dir}")
        if cfg.nats_url is None:
            creds = cfg.state_dir / client.CREDENTIALS_DIR
            say(f"  credentials: {creds} (the CLI uses the operator's; "
                f"`splice credentials issue tenant NAME` makes more)")
        say("  try: [bold]splice servicetype list[/] or [bold]splice events[/]; Ctrl-C stops")
        await asyncio.sleep(0)  # a signal during the server's start has set `stop` by now
        if not root.stop.is_set():
            await root.connect(url, "splice-up")
        if not root.stop.is_set():
            await root.command_service(url)
            _write_state_file(root, cfg.state_dir, public)
        if not root.stop.is_set():
            root.start_parts(_local_parts(url, cfg.state_dir, say, root.nc))
        if cfg.demo and not root.stop.is_set():
            _start_demo(root, url, out, say)
        elif not root.stop.is_set():
            say("[dim]Serving commands on splice.cmd.> — Ctrl-C to stop.[/]")
        await root.until_stopped()


def _write_state_file(root: Root, state_dir: Path, url: str) -> None:
    state_file = state_dir / client.STATE_FILE
    info = {"pid": os.getpid(), "nats_url": url, "state_dir": str(state_dir)}

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            state_file.unlink()

    root.stack.callback(remove)
    state_file.write_text(json.dumps(info))


def _local_parts(url: str, state_dir: Path, say: Callable[[str], None], nc: Any) -> list[Part]:
    db = client.default_db(state_dir)
    parts = [projector_part(url, db, nc)]
    say(f"  read models: {db} (queries on splice.qry.<tenant>.<view>)")
    if agent_ok():
        host = socket.gethostname().split(".")[0]
        parts.append(agent_part(url, AgentConfig(host, state_dir / "agent", AGENT_PROVIDERS), nc))
        say(f"  local agent: host [bold]{host}[/], providers {', '.join(AGENT_PROVIDERS)}")
    else:
        say("  [yellow]no local agent[/] (needs root and haproxy): commands only")
    return parts


def _start_demo(root: Root, url: str, out: Console, say: Callable[[str], None]) -> None:
    """The demo runs as one task; on the way out it is cancelled (all it awaits is cancellable:
    NATS requests and asyncio subprocesses), then what it made is removed within a deadline."""
    demos: list[Any] = []
    task = asyncio.create_task(_run_demos(root.nc, url, out, agent_ok(), demos))

    async def stop_demo() -> None:
        await cancel_until_done([task])
        for lb_demo in demos:
            say("cleaning up the demo ...")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lb_demo.cleanup(DEMO_CLEANUP_S), DEMO_CLEANUP_S + 0.5)

    root.stack.push_async_callback(stop_demo)


async def _run_demos(nc: Any, url: str, out: Console, with_lb: bool, demos: list[Any]) -> None:
    from splice.demo import run_demo

    gold = await run_demo(nc, url, out)
    if with_lb:
        from splice.demo_lb import LoadBalancerDemo

        lb_demo = LoadBalancerDemo(nc, out)  # on the process's connection
        demos.append(lb_demo)
        try:
            await lb_demo.run(gold)
        except Exception as e:  # the demo must never take Splice down
            out.print(f"[red]load-balancer demo failed:[/] {e}")
    out.print("[dim]Serving commands on splice.cmd.> — Ctrl-C to stop.[/]")
