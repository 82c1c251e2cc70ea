"""A plain nats-py client: imports nothing from Splice.

    python examples/plain_client.py nats://127.0.0.1:PORT CREDENTIALS_FILE

As the operator (`<state dir>/credentials/admin-admin.json` of `splice up`): sends one command,
prints the reply, finds the event in the stream, then sends a malformed command and shows its
structured error. Everyone but Splice's own services reads the stream through the JetStream API
that their account imports under the prefix `JS.SPLICE.API`.
"""

import asyncio
import json
import sys
import uuid

import nats


async def main(url: str, me: dict[str, str]) -> None:
    nc = await nats.connect(url, user=me["user"], password=me["password"])
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

    js = nc.jetstream(prefix="JS.SPLICE.API")
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
    with open(sys.argv[2]) as f:
        credentials = json.load(f)
    asyncio.run(main(sys.argv[1], credentials))
