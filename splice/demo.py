"""What `splice up --demo` shows: commands sent over NATS, their replies, the events they made.

The demo's command ids are fixed, so running it again is answered from the log (the same
replies, no new events): idempotency, visibly.
"""

from __future__ import annotations

import json
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


async def run_demo(nc: Any, url: str, out: Console) -> str | None:
    """Send the demo's commands; returns the id of the haproxy service type (`gold`).

    `silver` (nftables-l4) comes first, so it is the default at first; `gold` (haproxy, which
    the local agent serves) is then made the default, so a load balancer created without a
    service type is one this machine can serve.
    """
    gold_id = None
    out.rule("demo: commands over NATS request/reply")

    async def send(subject: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = dict(json.loads((await nc.request(subject, json.dumps(body).encode(),
                                                  timeout=10)).data))
        out.print(f"[bold]>[/] {subject} {json.dumps(body)}")
        out.print(f"[bold]<[/] {json.dumps(reply)}", highlight=False)
        return reply

    for subject, body in DEMO_COMMANDS:
        reply = await send(subject, body)
        if body.get("name") == "gold" and reply.get("ok"):
            gold_id = reply["id"]
    if gold_id:
        await send("splice.cmd._admin.servicetype.set_default",
                   {"command_id": "demo-default-gold", "actor": "demo", "id": gold_id})
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
    return gold_id
