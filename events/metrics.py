"""The process's metrics (prometheus_client, default registry), every label bounded:

* ``splice_events_set_aside_total{reader}``: events a reader (projector, agent, command, …)
  could not decode or apply and set aside to go on with the next ones, each counted once;
* ``splice_command_seconds{command, outcome}``: a command's handling, from its arrival to its
  reply (``command`` is ``<aggregate>.<verb>``, ``outcome`` ``ok`` or the error code);
* ``splice_events_appended_total``: events the command side appended to the stream;
* ``splice_projector_lag``: stream messages the projector has not applied yet (the stream's
  last sequence minus its position, as the last delivery said);
* ``splice_agent_converge_seconds`` and ``splice_agent_converge_errors_total``;
* ``splice_agent_stats_errors_total{provider}``: readings of a driver's counters that failed.

An agent's per-service counters (``splice_lb_*``: bytes, connections, member states) come from
its readings, collected by `splice.agents.stats` into the same registry.

`serve(port)` exposes the registry over HTTP on 127.0.0.1 (`splice up`, `splice serve`, …).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

EVENTS_SET_ASIDE = Counter(
    "splice_events_set_aside",
    "Events a reader could not decode or apply and set aside (it went on with the next ones).",
    ["reader"],
)


def count_set_aside(reader: str, n: int = 1) -> None:
    """`n` more events set aside by `reader` (a bounded name: projector, agent, command, …)."""
    if n > 0:
        EVENTS_SET_ASIDE.labels(reader=reader).inc(n)


def set_aside_count(reader: str) -> float:
    """How many events `reader` has set aside in this process (0 before the first)."""
    value = REGISTRY.get_sample_value("splice_events_set_aside_total", {"reader": reader})
    return value or 0.0


COMMAND_SECONDS = Histogram(
    "splice_command_seconds", "Time from a command's arrival to its reply.",
    ["command", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENTS_APPENDED = Counter("splice_events_appended", "Events the command side appended.")
PROJECTOR_LAG = Gauge("splice_projector_lag",
                      "Stream messages the projector has not applied yet (last sequence - position).")
CONVERGE_SECONDS = Histogram("splice_agent_converge_seconds", "One converge of every driver.")
CONVERGE_ERRORS = Counter("splice_agent_converge_errors", "Converges that failed.")
STATS_ERRORS = Counter("splice_agent_stats_errors",
                       "Readings of a driver's per-service counters that failed.", ["provider"])


def serve(port: int = 0, host: str = "127.0.0.1") -> str:
    """Serve the registry as Prometheus text; the URL (`port` 0: a free one)."""
    server, _ = start_http_server(port, addr=host)
    return f"http://{host}:{server.server_address[1]}/metrics"
