"""A plain nats-py client: imports nothing from Splice.

    python examples/plain_client.py nats://127.0.0.1:PORT

Sends one command, prints the reply, finds the event in the stream, then sends a malformed
command and shows its structured error.
"""

import asyncio
import json
import sys
import uuid

import nats


async def main(url: str) -> None:
    nc = await nats.connect(url)
    command = {
        "command_id": str(uuid.uuid4()),
        "actor": "alice",
        "name": f"gold-{uuid.uuid4().hex[:6]}",
        "description": "haproxy load balancers",
        "providers": {"loadbalancer": "haproxy"},
    }
    msg = await nc.request(
        "splice.cmd._admin.servicetype.create", json.dumps(command).encode(), timeout=10
    )
    reply = json.loads(msg.data)
    print("reply:", json.dumps(reply))

    js = nc.jetstream()
    # the resource's newest event is at reply["seq"]; its creation is on its own subject
    newest = await js.get_msg("SPLICE_EVENTS", reply["seq"], direct=True)
    print("newest:", newest.subject)
    subject = f"splice.evt._admin.servicetype.{reply['id']}.ServiceTypeCreated"
    stored = await js.get_last_msg("SPLICE_EVENTS", subject, direct=True)
    print("event:", stored.subject, stored.headers["Splice-Topic"], stored.data.decode())

    msg = await nc.request("splice.cmd._admin.servicetype.create", b'{"name": 42}', timeout=10)
    print("error:", msg.data.decode())
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
