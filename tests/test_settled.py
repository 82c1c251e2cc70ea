"""`settled(nc)`: once it returns, the server routes other connections' requests to a subscription
made just before on `nc` (nats-py's own `flush()` alone let 2% of such requests find no responders).

Real nats-server: a fresh responder connection subscribes in a queue group, settles, and another
connection's request must reach it at once, 300 times.
"""

from __future__ import annotations

from typing import Any

import nats

from splice.events.natsio import settled
from splice.natsserver import NatsServer

TRIES = 300


async def test_a_request_reaches_a_queue_subscription_made_just_before_settled(
    fresh_nats: NatsServer, nc: Any
) -> None:
    async def answer(msg: Any) -> None:
        await msg.respond(b"here")

    unreached = []
    for i in range(TRIES):
        responder = await nats.connect(fresh_nats.url)
        try:
            await responder.subscribe("splice.cmd.>", queue="splice-cmd", cb=answer)
            await settled(responder)
            try:
                reply = await nc.request("splice.cmd.t.ping", b"{}", timeout=5)
                assert reply.data == b"here"
            except nats.errors.NoRespondersError:
                unreached.append(i)
        finally:
            await responder.close()
    assert unreached == [], f"{len(unreached)} of {TRIES} requests found no responders"
