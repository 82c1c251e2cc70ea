"""The `splice` command line: run Splice (`up`, `serve`), send commands, read the event log."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import nats
import typer
from rich.console import Console

from splice import logs
from splice.natsserver import NatsServer, free_port, port_is_free

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
servicetype_app = typer.Typer(
    no_args_is_help=True, help="Service types: providers per kind, one default."
)
app.add_typer(servicetype_app, name="servicetype")

out = Console()
err = Console(stderr=True)

STATE_FILE = "splice-up.json"

NatsUrlOpt = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="SPLICE_NATS_URL", help="NATS server(s), comma-separated."),
]
OutputOpt = Annotated[str, typer.Option("-o", "--output", help="table or json")]


def default_state_dir() -> Path:
    env = os.environ.get("SPLICE_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "splice"


StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="SPLICE_STATE_DIR", help="Where `splice up` keeps its data."
    ),
]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_url(nats_url: str | None, state_dir: Path | None = None) -> str:
    """--nats-url / $SPLICE_NATS_URL, else the running `splice up` found in the state dir."""
    if nats_url:
        return nats_url
    state = (state_dir or default_state_dir()) / STATE_FILE
    if state.exists():
        info = json.loads(state.read_text())
        if _pid_alive(int(info.get("pid", 0))):
            return str(info["nats_url"])
    err.print(
        "[red]No running `splice up` found[/] (looked in "
        f"{state}). Start one with `splice up`, or give --nats-url."
    )
    raise typer.Exit(2)


# -- running Splice ---------------------------------------------------------------------------


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
        if say is not None:
            loop.call_soon_threadsafe(say, f"{signal.Signals(signum).name}: stopping")
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    on_stop_signals(stop)
    await stop.wait()


async def _serve(url: str, replicas: int, until_signal: bool = True) -> None:
    from splice.services.service import CommandService

    async with CommandService(url, env={"JETSTREAM_REPLICAS": str(replicas)}):
        await _wait_for_signal()


@app.command()
def serve(
    nats_url: NatsUrlOpt = None,
    replicas: Annotated[
        int, typer.Option(envvar="JETSTREAM_REPLICAS", help="Stream replicas when creating it.")
    ] = 1,
    log_level: Annotated[str, typer.Option(envvar="SPLICE_LOG_LEVEL")] = "INFO",
) -> None:
    """Run the command service against an existing NATS (one replica of the queue group)."""
    logs.configure(log_level)
    url = resolve_url(nats_url)
    asyncio.run(_serve(url, replicas))


@app.command()
def agent(
    host: Annotated[str, typer.Option(help="This host's name (default: the machine's).")] = "",
    nats_url: NatsUrlOpt = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the agent keeps its state.")] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", help="Providers offered.")] = None,
    prefix: Annotated[str, typer.Option(help="Name prefix of everything the agent owns.")] = "spl-",
    resync: Annotated[float, typer.Option(help="Seconds between drift repairs.")] = 30.0,
    log_level: Annotated[str, typer.Option(envvar="SPLICE_LOG_LEVEL")] = "INFO",
) -> None:
    """Run the host agent: converge this host's load balancers to the event stream."""
    logs.configure(log_level)
    url = resolve_url(nats_url)
    name = host or socket.gethostname().split(".")[0]
    asyncio.run(_agent(url, name, state_dir or default_state_dir() / "agent", provider or ["haproxy"],
                       prefix, resync))


async def _agent(url: str, host: str, state_dir: Path, providers: list[str], prefix: str,
                 resync: float) -> None:
    from splice.agents.runtime import Agent

    stop = asyncio.Event()
    on_stop_signals(stop)
    await Agent(url, host, state_dir, providers=providers, prefix=prefix, resync_s=resync).run(stop)


@app.command()
def up(
    state_dir: StateDirOpt = default_state_dir(),  # noqa: B008 - typer default
    port: Annotated[
        int, typer.Option(help="NATS client port; 0: 4222 if free, else a free one.")
    ] = 0,
    nats_url: Annotated[
        str | None, typer.Option("--nats-url", help="Use this NATS instead of the embedded one.")
    ] = None,
    demo: Annotated[bool, typer.Option(help="Send a few commands and show the event log.")] = False,
    log_level: Annotated[str, typer.Option(envvar="SPLICE_LOG_LEVEL")] = "WARNING",
) -> None:
    """Run Splice on this machine: embedded nats-server (JetStream, fsync always) + command service."""
    logs.configure(log_level)
    _signals_interrupt()  # SIGTERM during start-up stops as cleanly as SIGINT
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file = state_dir / STATE_FILE
    if state_file.exists():
        info = json.loads(state_file.read_text())
        if _pid_alive(int(info.get("pid", 0))) and int(info.get("pid", 0)) != os.getpid():
            err.print(
                f"[red]splice up is already running[/] (pid {info['pid']}, {info['nats_url']})"
            )
            raise typer.Exit(1)
    server: NatsServer | None = None
    try:
        note = ""
        if nats_url is None:
            if port == 0:
                if port_is_free(4222):
                    port = 4222
                else:
                    port = free_port()
                    note = " (port 4222 is taken by another server, so Splice picked a free one)"
            server = NatsServer(
                store_dir=state_dir / "nats", port=port, name="splice-up", die_with_parent=True
            )
            server.start()
            url = server.url
        else:
            url = nats_url
        info = {"pid": os.getpid(), "nats_url": url, "state_dir": str(state_dir)}
        out.print(f"[bold green]Splice is up.[/] NATS listens on [bold]{url}[/]{note}")
        out.print(f"  state directory: {state_dir}")
        out.print("  try: [bold]splice servicetype list[/] or [bold]splice events[/]; Ctrl-C stops")
        # The state file appears once commands are served: the CLI finds a ready Splice.
        asyncio.run(_up(url, demo, lambda: state_file.write_text(json.dumps(info)), state_dir))
    except KeyboardInterrupt:  # a signal before the loop took the handlers over
        pass
    finally:
        _signals_interrupt()  # the loop is gone: a second Ctrl-C must not reach its handler
        with contextlib.suppress(FileNotFoundError):
            state_file.unlink()
        if server is not None:
            server.stop()
        _say("Splice stopped.")


def _say(text: str) -> None:
    """Print, even when the terminal's Ctrl-C has already closed the pipe we print into."""
    with contextlib.suppress(OSError, ValueError):
        out.print(text)


def _signals_interrupt() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt: a stop before or after the event loop."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


# How long each part of stopping may take; together they stay well inside a few seconds.
DEMO_CLEANUP_S = 3.0
PARTS_STOP_S = 3.0


async def _up(url: str, demo: bool, ready: Callable[[], object], state_dir: Path) -> None:
    """Serve until SIGINT/SIGTERM; wherever the signal lands, stop within a few seconds.

    Start-up runs in phases, and a signal during one skips the rest. The demo runs as one task
    that is cancelled (all it awaits is cancellable: NATS requests and asyncio subprocesses),
    then cleans up with a deadline; the projector and the agent stop last, also with one.
    """
    from splice.services.service import CommandService

    stop = asyncio.Event()  # Ctrl-C
    parts_stop = asyncio.Event()  # the agent stops last: it removes the demo's load balancer
    on_stop_signals(stop, lambda text: _say(f"[dim]{text}[/]"))
    tasks: list[asyncio.Task[None]] = []
    demos: list[Any] = []
    async with CommandService(url):
        ready()
        if not stop.is_set():
            tasks += _start_parts(url, state_dir, parts_stop)
        demo_task = None
        if demo and not stop.is_set():
            demo_task = asyncio.create_task(_run_demos(url, agent_ok(), demos))
        else:
            _say("[dim]Serving commands on splice.cmd.> — Ctrl-C to stop.[/]")
        await stop.wait()
        if demo_task is not None and not demo_task.done():
            demo_task.cancel()
            await asyncio.gather(demo_task, return_exceptions=True)
        for lb_demo in demos:
            _say("cleaning up the demo ...")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lb_demo.cleanup(DEMO_CLEANUP_S), DEMO_CLEANUP_S + 0.5)
            with contextlib.suppress(Exception):
                await lb_demo.nc.close()
        parts_stop.set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=PARTS_STOP_S)
            for t in late:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def agent_ok() -> bool:
    """A local agent needs root (namespaces) and haproxy."""
    return os.geteuid() == 0 and shutil.which("haproxy") is not None


def _start_parts(url: str, state_dir: Path, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    from splice.projections.runner import run_projector

    db = str(state_dir / "readmodels.sqlite")
    tasks = [asyncio.create_task(run_projector(url, db, stop))]
    _say(f"  read models: {db} (queries on splice.qry.<tenant>.<view>)")
    if agent_ok():
        from splice.agents.runtime import Agent

        host = socket.gethostname().split(".")[0]
        agent = Agent(url, host, state_dir / "agent", providers=["haproxy"], prefix="spl-")
        tasks.append(asyncio.create_task(agent.run(stop)))
        _say(f"  local agent: host [bold]{host}[/], provider haproxy")
    else:
        _say("  [yellow]no local agent[/] (needs root and haproxy): commands only")
    return tasks


async def _run_demos(url: str, with_lb: bool, demos: list[Any]) -> None:
    from splice.demo import run_demo

    gold = await run_demo(url, out)
    if with_lb:
        from splice.demo_lb import LoadBalancerDemo

        lb_demo = LoadBalancerDemo(await nats.connect(url), out)
        demos.append(lb_demo)
        try:
            await lb_demo.run(gold)
        except Exception as e:  # the demo must never take Splice down
            out.print(f"[red]load-balancer demo failed:[/] {e}")
    out.print("[dim]Serving commands on splice.cmd.> — Ctrl-C to stop.[/]")


# -- commands ---------------------------------------------------------------------------------


async def _request(url: str, subject: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    import nats

    nc = await nats.connect(url.split(","), connect_timeout=5)
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
        return dict(json.loads(msg.data))
    finally:
        await nc.close()


def send(
    nats_url: str | None,
    aggregate: str,
    verb: str,
    body: dict[str, Any],
    output: str,
    tenant: str,
    timeout: float = 10.0,
) -> dict[str, Any]:
    url = resolve_url(nats_url)
    body = {k: v for k, v in body.items() if v is not None}
    body.setdefault("command_id", str(uuid.uuid4()))
    body.setdefault("actor", os.environ.get("SPLICE_ACTOR") or getpass.getuser())
    subject = f"splice.cmd.{tenant}.{aggregate}.{verb}"
    try:
        reply = asyncio.run(_request(url, subject, body, timeout))
    except Exception as e:
        err.print(f"[red]no reply[/] on {subject}: {e}")
        raise typer.Exit(3) from e
    if output == "json":
        out.print_json(json.dumps(reply))
    elif reply.get("ok"):
        out.print(
            f"[green]ok[/] id={reply['id']} version={reply['version']} seq={reply['seq']} "
            f"command_id={reply['command_id']}"
        )
    else:
        problem = reply.get("error", {})
        out.print(
            f"[red]{problem.get('code')}[/]: {problem.get('message')} "
            f"(field: {problem.get('field')})"
        )
    if not reply.get("ok"):
        raise typer.Exit(1)
    return reply


def _providers(items: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items:
        kind, sep, provider = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected KIND=PROVIDER", param_hint="--provider")
        result[kind] = provider
    return result


ProviderOpt = Annotated[
    list[str], typer.Option("--provider", "-p", help="KIND=PROVIDER, e.g. loadbalancer=haproxy")
]
CommandIdOpt = Annotated[str | None, typer.Option(help="Idempotency key (default: a new UUID).")]
ADMIN = "_admin"


@servicetype_app.command("create")
def st_create(
    name: str,
    provider: ProviderOpt,
    description: Annotated[str, typer.Option()] = "",
    default: Annotated[bool, typer.Option("--default")] = False,
    command_id: CommandIdOpt = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Create a service type."""
    send(
        nats_url,
        "servicetype",
        "create",
        {
            "name": name,
            "providers": _providers(provider),
            "description": description,
            "default": default,
            "command_id": command_id,
        },
        output,
        ADMIN,
    )


@servicetype_app.command("update")
def st_update(
    id: str,
    name: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", "-p")] = None,
    command_id: CommandIdOpt = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Change a service type's name, description or providers."""
    send(
        nats_url,
        "servicetype",
        "update",
        {
            "id": id,
            "name": name,
            "description": description,
            "providers": _providers(provider) if provider else None,
            "command_id": command_id,
        },
        output,
        ADMIN,
    )


@servicetype_app.command("set-default")
def st_set_default(
    id: str,
    command_id: CommandIdOpt = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Make a service type the default (the previous default stops being one, atomically)."""
    send(
        nats_url, "servicetype", "set_default", {"id": id, "command_id": command_id}, output, ADMIN
    )


@servicetype_app.command("delete")
def st_delete(
    id: str,
    command_id: CommandIdOpt = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Delete a service type (not the default one)."""
    send(nats_url, "servicetype", "delete", {"id": id, "command_id": command_id}, output, ADMIN)


# -- the event log ----------------------------------------------------------------------------


def _parse_since(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@app.command()
def events(
    from_seq: Annotated[
        int | None, typer.Option("--from-seq", help="Start at this stream sequence.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Start at this time (ISO 8601).")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    subject: Annotated[str, typer.Option(help="Subject filter.")] = "splice.evt.>",
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    nats_url: NatsUrlOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Read the event log (the JetStream stream), from a sequence or a time; -f follows it."""
    from splice.events.eventlog import read_events

    url = resolve_url(nats_url)
    start_time = _parse_since(since) if since else None

    def show(ev: dict[str, Any]) -> None:
        if output == "json":
            sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()
        else:
            p = ev["payload"]
            out.print(
                f"{ev['seq']:>7} {ev['time'][:23]} [bold]{ev['type']:<28}[/] {ev['aggregate_id']} "
                f"v{ev['version']} actor={p.get('actor', '?')} cmd={p.get('command_id', '?')}",
                highlight=False,
            )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            read_events(
                url,
                show,
                subject=subject,
                from_seq=from_seq,
                start_time=start_time,
                follow=follow,
                limit=limit,
            )
        )


def _write_json(doc: object, out_file: Path | None) -> None:
    text = msgspec.json.format(msgspec.json.encode(doc), indent=2).decode()
    if out_file:
        out_file.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


OutFileOpt = Annotated[Path | None, typer.Option("--out", help="Write to this file (default stdout).")]


@app.command()
def schema(out_file: OutFileOpt = None) -> None:
    """Write the JSON Schema of every command, reply and event."""
    from splice.events.contracts import json_schema

    _write_json(json_schema(), out_file)


@app.command()
def asyncapi(out_file: OutFileOpt = None) -> None:
    """Write the AsyncAPI 3.0 document of the whole message API (commands, replies, events)."""
    from splice.events.contracts import asyncapi as document

    _write_json(document(), out_file)


def main() -> None:
    from splice import cmdcli, readcli

    readcli.register(app)
    cmdcli.register(app)
    app()


if __name__ == "__main__":
    main()
