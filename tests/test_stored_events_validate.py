"""Every stored event validates against the published event schema.

The scenario tests over NATS (`test_families_over_nats.py`, `test_command_service.py`) are run
again here, each on a nats-server of its own with a command service started as their fixtures
start one; then the whole stream is read and every event's payload is validated against the
published schema's definition of its type (the `Splice-Topic` header names it, and so does the
subject's last token), with python-jsonschema's Draft 2020-12 validator and with the same
validator reading `pattern` as ECMA-262 does (see `test_schema_agreement.py`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import nats
import pytest
import test_command_service
import test_families_over_nats
from helpers import event_messages
from test_schema_agreement import event_pointer, validators_for

from splice.natsserver import NatsServer
from splice.services.service import CommandService

# The command service each module's fixture starts (`svc` / `service`), by its environment.
MODULES: dict[str, tuple[ModuleType, dict[str, str]]] = {
    "families": (test_families_over_nats, {"SPLICE_QUOTAS": "loadbalancer=3"}),
    "command_service": (test_command_service, {}),
}
AT_LEAST = {"families": 50, "command_service": 20}


def scenarios(module: ModuleType) -> list[tuple[str, Callable[..., Awaitable[None]]]]:
    return [(name, fn) for name, fn in vars(module).items()
            if name.startswith("test_") and inspect.iscoroutinefunction(fn)]


async def run_scenario(
    fn: Callable[..., Awaitable[None]], env: dict[str, str], store: Path
) -> list[dict[str, Any]]:
    """Run one scenario as pytest would, on a server of its own; its stream's events."""
    server = NatsServer(store_dir=store)
    server.start()
    try:
        params = list(inspect.signature(fn).parameters)
        svc = None
        if {"svc", "service"} & set(params):
            svc = CommandService(server.url, env=env)
            await svc.start()
        nc = await nats.connect(server.url)
        try:
            given = {"svc": svc, "service": svc, "nc": nc, "fresh_nats": server}
            unknown = [p for p in params if p not in given]
            assert not unknown, f"{fn.__name__} needs fixtures this runner does not give: {unknown}"
            await fn(**{p: given[p] for p in params})
        finally:
            await nc.close()
            if svc is not None:
                await svc.stop()
        return await event_messages(server.url)
    finally:
        server.stop()


def invalid_events(events: list[dict[str, Any]]) -> list[str]:
    """What is wrong with each event that does not validate (empty when all do).

    Each type's definition must also refuse a payload without its fields (so that an empty or
    `true` definition cannot pass for a validation).
    """
    problems: list[str] = []
    refusal_checked: set[str] = set()
    for m in events:
        topic = m["headers"].get("Splice-Topic")
        where = f"seq {m['seq']} {m['subject']}"
        if topic is None or m["subject"].rsplit(".", 1)[-1] != topic:
            problems.append(f"{where}: Splice-Topic {topic!r} does not name the subject's type")
            continue
        try:
            plain, ecma = validators_for(event_pointer(topic))
        except LookupError as e:
            problems.append(f"{where}: {e}")
            continue
        if topic not in refusal_checked:
            refusal_checked.add(topic)
            if ecma.is_valid({"timestamp": 5}):
                problems.append(f"{where}: the definition of {topic} refuses nothing")
        for name, validator in (("python-jsonschema", plain), ("ECMA-262 patterns", ecma)):
            for err in validator.iter_errors(m["payload"]):
                path = "/".join(map(str, err.absolute_path)) or "$"
                problems.append(f"{where} ({name}): {path}: {err.message}")
    return problems


@pytest.mark.parametrize("family", sorted(MODULES))
async def test_every_event_the_scenarios_store_validates_against_the_published_schema(
    family: str, tmp_path: Path
) -> None:
    module, env = MODULES[family]
    validated = 0
    problems: list[str] = []
    for i, (name, fn) in enumerate(scenarios(module)):
        events = await run_scenario(fn, env, tmp_path / f"nats-{i}")
        assert events, f"{name} stored no event"
        problems += [f"{name}: {p}" for p in invalid_events(events)]
        validated += len(events)
    assert not problems, "\n".join(problems)
    assert validated > AT_LEAST[family], validated
    print(f"{family}: {validated} stored events validated")
