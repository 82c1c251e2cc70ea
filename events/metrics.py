"""The process's metrics that every reader shares (prometheus_client, default registry).

`EVENTS_SET_ASIDE` counts the events a reader could not decode or apply and set aside to go on
with the next ones: ``splice_events_set_aside_total{reader="projector"|"agent"|"command"|…}``.
A reader counts each event once (the projector once per event, however many of its views
skipped it; the command side once per poisoned event, however many commands it refused on it).
Nothing here serves them over HTTP: an exporter reads the default registry.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter

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
