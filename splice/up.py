"""`splice up`: Splice on this machine with its embedded nats-server, the command service, the
projector, a local agent (as root, with haproxy) and, with ``--demo``, a demo; cleaned up on
every way out (a closed pipe, SIGINT, SIGTERM, SIGHUP), and after a killed earlier run. Its
parts' lifecycle is `splice.root`'s."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from splice import client, leftovers, pipes
from splice.auth import strip_userinfo
from splice.natsserver import NatsServer, free_port, port_is_free
from splice.root import (
    AGENT_PROVIDERS,
    AgentConfig,
    Part,
    Root,
    agent_part,
    cancel_until_done,
    projector_part,
    run_process,
    signals_interrupt,
)
from splice.tls import self_signed

DEMO_CLEANUP_S = 3.0
SERVER_STOP_S = 5.0
AGENT_PREFIX = "spl-"  # the local agent's prefix: its namespaces and links
DEMO_TENANT = "demo"  # the tenant whose credentials `splice up` writes beside the operator's


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
    """Run Splice on this machine until SIGINT, SIGTERM or SIGHUP; wherever the signal lands,
    stop within a few seconds and leave nothing behind. What an earlier run from the same state
    directory left (it was killed) is removed first.

    Before the event loop runs (and after it), a signal raises KeyboardInterrupt; inside it, it
    sets the root's stop event, and start-up, which runs in phases, skips the phases left.
    Everything printed goes through `pipes.relayed_output()`: a reader that is gone (`| tee`,
    ended by the same Ctrl-C) costs the output, never the clean-up.
    """
    signals_interrupt()  # SIGTERM during start-up stops as cleanly as SIGINT
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    other = client.running_up(cfg.state_dir)
    if other is not None and int(other.get("pid", 0)) != os.getpid():
        raise AlreadyRunning(other)
    say = _sayer(out)
    with pipes.relayed_output():
        try:
            _sweep_after_a_dead_run(cfg.state_dir, say)
            run_process(lambda: _up(cfg, out, say))
        except KeyboardInterrupt:  # a signal during the sweep
            pass
        finally:
            say("Splice stopped.")


def _sweep_after_a_dead_run(state_dir: Path, say: Callable[[str], None]) -> None:
    """A state file whose pid is dead: that run was killed before it could clean up. Remove
    what it left (the local agent's and the demo's namespaces, links and processes)."""
    from splice.demo_lb import LINK_PREFIX, NS_PREFIX

    state_file = state_dir / client.STATE_FILE
    try:
        info = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return
    say(f"[yellow]an earlier splice up (pid {info.get('pid')}) did not stop cleanly;[/] "
        f"removing what it left")
    removed = leftovers.sweep(state_dir, (AGENT_PREFIX, NS_PREFIX), (AGENT_PREFIX, LINK_PREFIX))
    for what in removed:
        say(f"[dim]  removed {what}[/]")
    state_file.unlink(missing_ok=True)


def _sayer(out: Console) -> Callable[[str], None]:
    def say(text: str) -> None:
        """Print; an output that is gone (a closed pipe, a hung-up terminal) is not an error."""
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
                f"[bold]`splice credentials issue tenant NAME`[/] makes more)")
        say(f"  tenant: the CLI acts in one; the demo's is [bold]`export SPLICE_TENANT="
            f"{DEMO_TENANT}`[/] (or -t NAME on each command; --all-tenants reads every one)")
        say("  try: " + ", ".join(f"[bold]`{c}`[/]" for c in SUGGESTED) + "; Ctrl-C stops")
        await asyncio.sleep(0)  # a signal during the server's start has set `stop` by now
        if not root.stop.is_set():
            await root.connect(url, "splice-up")
        if not root.stop.is_set():
            await root.command_service(url)
            from splice.events import metrics

            metrics_url = metrics.serve(0)  # this process's: commands, projector, agent
            say(f"  metrics: {metrics_url} (Prometheus text)")
            _write_state_file(root, cfg.state_dir, public, metrics_url)
        if not root.stop.is_set():
            root.start_parts(_local_parts(url, cfg.state_dir, say, root.nc))
        if cfg.demo and not root.stop.is_set():
            _start_demo(root, url, cfg.state_dir, out, say)
        elif not root.stop.is_set():
            say("[dim]Serving commands on splice.cmd.> — Ctrl-C to stop.[/]")
        await root.until_stopped()


# What the banner suggests (each a real command; tests/test_up_stops.py runs each with --help).
SUGGESTED = (
    "splice servicetype list",
    f"splice events -t {DEMO_TENANT}",
    f"splice loadbalancer list -t {DEMO_TENANT}",
)


def _write_state_file(root: Root, state_dir: Path, url: str, metrics_url: str) -> None:
    state_file = state_dir / client.STATE_FILE
    info = {"pid": os.getpid(), "nats_url": url, "state_dir": str(state_dir),
            "metrics_url": metrics_url}

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
        cfg = AgentConfig(host, state_dir / "agent", AGENT_PROVIDERS, prefix=AGENT_PREFIX)
        parts.append(agent_part(url, cfg, nc))
        say(f"  local agent: host [bold]{host}[/], providers {', '.join(AGENT_PROVIDERS)}")
    else:
        say("  [yellow]no local agent[/] (needs root and haproxy): commands only")
    return parts


def _start_demo(
    root: Root, url: str, state_dir: Path, out: Console, say: Callable[[str], None]
) -> None:
    """The demo runs as one task; on the way out it is cancelled (all it awaits is cancellable:
    NATS requests and asyncio subprocesses), then what it made is removed within a deadline."""
    demos: list[Any] = []
    task = asyncio.create_task(_run_demos(root.nc, url, state_dir, out, agent_ok(), demos))

    async def stop_demo() -> None:
        await cancel_until_done([task])
        for lb_demo in demos:
            say("cleaning up the demo ...")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lb_demo.cleanup(DEMO_CLEANUP_S), DEMO_CLEANUP_S + 0.5)

    root.stack.push_async_callback(stop_demo)


async def _run_demos(
    nc: Any, url: str, state_dir: Path, out: Console, with_lb: bool, demos: list[Any]
) -> None:
    from splice.demo import run_demo

    default = await run_demo(nc, url, out, AGENT_PROVIDERS if with_lb else [])
    if with_lb:
        from splice.demo_lb import LoadBalancerDemo

        lb_demo = LoadBalancerDemo(nc, out, state_dir / "demo")  # on the process's connection
        demos.append(lb_demo)
        try:
            await lb_demo.run(default)
        except Exception as e:  # the demo must never take Splice down
            out.print(f"[red]load-balancer demo failed:[/] {e}")
    out.print("[dim]Serving commands on splice.cmd.> — Ctrl-C to stop.[/]")
