"""What `splice up --demo` shows: commands sent over NATS, their replies, the events they made.

The demo's command ids are fixed, so running it again is answered from the log (the same
replies, no new events): idempotency, visibly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from splice.events.eventlog import read_events

DEMO_COMMANDS: list[tuple[str, dict[str, Any]]] = [
    (
        "splice.cmd._admin.servicetype.create",
        {
            "command_id": "demo-create-silver",
            "actor": "demo",
            "name": "silver",
            "description": "in-kernel L4 load balancing",
            "providers": {"loadbalancer": "nftables-l4", "tap": "tc-mirror"},
        },
    ),
    (
        "splice.cmd._admin.servicetype.create",
        {
            "command_id": "demo-create-gold",
            "actor": "demo",
            "name": "gold",
            "description": "L7 load balancing with haproxy",
            "providers": {"loadbalancer": "haproxy", "firewall": "nftables"},
        },
    ),
    (
        "splice.cmd._admin.servicetype.create",
        {
            "command_id": "demo-bad",
            "actor": "demo",
            "name": "bad\nname",
            "providers": {"loadbalancer": "haproxy"},
        },
    ),
]


# The demo's service types, the one to make the default first: haproxy serves every listener
# the demo makes (HTTP, health monitors); nftables-l4 is L4 only.
PREFERRED_DEFAULTS = ("gold", "silver")


def default_choice(served: Sequence[str]) -> str:
    """The demo's service type to make the default: the first preferred one whose load-balancer
    provider the local agent offers (`served`), so that a load balancer created without a
    service type is one this machine serves; `gold` (haproxy) when there is no local agent."""
    providers = {b["name"]: b["providers"].get("loadbalancer") for _, b in DEMO_COMMANDS}
    return next((n for n in PREFERRED_DEFAULTS if providers.get(n) in served), "gold")


async def run_demo(nc: Any, url: str, out: Console, served: Sequence[str] = ()) -> str | None:
    """Send the demo's commands; returns the id of the service type it made the default.

    `silver` (nftables-l4) comes first, so it is the default at first; then the first demo
    type whose load-balancer provider the local agent offers (`served`: haproxy, so `gold`) is
    made the default, so a load balancer created without a service type is one this machine
    can serve.
    """
    choice = default_choice(served)
    ids: dict[str, str] = {}
    out.rule("demo: commands over NATS request/reply")

    async def send(subject: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = dict(json.loads((await nc.request(subject, json.dumps(body).encode(),
                                                  timeout=10)).data))
        out.print(f"[bold]>[/] {subject} {json.dumps(body)}")
        out.print(f"[bold]<[/] {json.dumps(reply)}", highlight=False)
        return reply

    for subject, body in DEMO_COMMANDS:
        reply = await send(subject, body)
        if reply.get("ok"):
            ids[body["name"]] = reply["id"]
    default_id = ids.get(choice)
    if default_id:
        await send("splice.cmd._admin.servicetype.set_default",
                   {"command_id": f"demo-default-{choice}", "actor": "demo", "id": default_id})
        provider = next(b["providers"]["loadbalancer"] for _, b in DEMO_COMMANDS
                        if b["name"] == choice)
        served_here = (f"the local agent serves {provider}, so a load balancer created without "
                       f"a service type runs on this host" if provider in served
                       else "no local agent serves it here")
        out.print(f"[green]default service type: {choice}[/] (loadbalancer: {provider}; "
                  f"{served_here})")
    out.rule("demo: the event log (stream SPLICE_EVENTS)")

    def show(ev: dict[str, Any]) -> None:
        p = ev["payload"]
        out.print(
            f"{ev['seq']:>5} [bold]{ev['type']:<26}[/] {ev['aggregate']}/{ev['aggregate_id'][:8]} "
            f"v{ev['version']} actor={p.get('actor')} command={p.get('command_id')}",
            highlight=False,
        )

    await read_events(url, show, nc=nc)
    out.rule()
    return default_id
