"""`splice up`, `splice serve`, `splice agent`, `splice projector`: the flags of each process.

What each process is made of, and how it starts and stops, is `splice.root`'s.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from splice import client, logs, root
from splice import up as splice_up
from splice.cli.common import (
    DbOpt,
    LogLevelOpt,
    NatsUrlOpt,
    StateDirOpt,
    err,
    out,
    redact,
    url_of,
)

MetricsPortOpt = Annotated[int | None, typer.Option(
    "--metrics-port", min=0, max=65535,
    help="Serve Prometheus metrics on 127.0.0.1:PORT (0: a free port; the URL is printed). "
         "Default: not served.")]


def _say(text: str) -> None:
    out.print(text, highlight=False)


def serve(
    nats_url: NatsUrlOpt = None,
    replicas: Annotated[
        int, typer.Option(envvar="JETSTREAM_REPLICAS", help="Stream replicas when creating it.")
    ] = 1,
    metrics_port: MetricsPortOpt = None,
    log_level: LogLevelOpt = "INFO",
) -> None:
    """Run the command service against an existing NATS (one replica of the queue group)."""
    logs.configure(log_level)
    root.serve(url_of(nats_url).url, {"JETSTREAM_REPLICAS": str(replicas)}, metrics_port, _say)


def agent(
    host: Annotated[str, typer.Option(help="This host's name (default: the machine's).")] = "",
    nats_url: NatsUrlOpt = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the agent keeps its state.")] = None,
    provider: Annotated[list[str] | None, typer.Option(
        "--provider", help="Providers offered (default: haproxy, nftables-l4, router, tc-mirror).")] = None,
    prefix: Annotated[str, typer.Option(help="Name prefix of everything the agent owns.")] = "spl-",
    resync: Annotated[float, typer.Option(help="Seconds between drift repairs.")] = 30.0,
    netns: Annotated[str | None, typer.Option(
        help="Run inside this network namespace: the host's root (a simulated host).")] = None,
    underlay_ip: Annotated[str | None, typer.Option(
        help="This host's underlay address: its networks reach the other hosts over VXLAN.")] = None,
    stats_interval: Annotated[float, typer.Option(
        min=0.1, help="Seconds between two readings of the services' counters "
                      "(metrics, `splice loadbalancer stats`).")] = 5.0,
    metrics_port: MetricsPortOpt = None,
    log_level: LogLevelOpt = "INFO",
) -> None:
    """Run the host agent: converge this host to the event stream."""
    logs.configure(log_level)
    bus = url_of(nats_url)
    cfg = root.AgentConfig(
        host=host or socket.gethostname().split(".")[0],
        state_dir=state_dir or client.default_state_dir() / "agent",
        providers=provider or root.AGENT_PROVIDERS,
        prefix=prefix,
        resync_s=resync,
        js_prefix=bus.js_prefix,
        netns=netns,
        underlay_ip=underlay_ip,
        stats_s=stats_interval,
    )
    root.agent(bus.url, cfg, metrics_port, _say)


def projector(
    nats_url: NatsUrlOpt = None,
    db: DbOpt = None,
    metrics_port: MetricsPortOpt = None,
    log_level: LogLevelOpt = "INFO",
) -> None:
    """Run the projector: fold the event stream into the read models and answer queries."""
    logs.configure(log_level)
    url = url_of(nats_url).url
    db_url = db or client.default_db()

    def ready() -> None:
        out.print(
            f"projector: read models in {redact(db_url)}, queries on "
            "splice.qry.<tenant>.<view> — Ctrl-C stops",
            highlight=False,
        )

    root.projector(url, db_url, ready, metrics_port, _say)


def up(
    state_dir: StateDirOpt = client.default_state_dir(),  # noqa: B008 - typer default
    port: Annotated[
        int, typer.Option(help="NATS client port; 0: 4222 if free, else a free one.")
    ] = 0,
    nats_url: Annotated[
        str | None, typer.Option("--nats-url", help="Use this NATS instead of the embedded one.")
    ] = None,
    demo: Annotated[bool, typer.Option(help="Send a few commands and show the event log.")] = False,
    tls: Annotated[
        bool, typer.Option(help="TLS only, with a certificate authority made in the state dir.")
    ] = False,
    log_level: LogLevelOpt = "WARNING",
) -> None:
    """Run Splice on this machine: embedded nats-server (JetStream, fsync always) + command service."""
    logs.configure(log_level)
    try:
        splice_up.run_up(splice_up.UpConfig(state_dir, port, nats_url, demo, tls), out)
    except splice_up.AlreadyRunning as e:
        err.print(f"[red]splice up is already running[/] (pid {e.info['pid']}, {e.info['nats_url']})")
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("agent")(agent)
    app.command("projector")(projector)
    app.command("up")(up)
