"""A create answers the ids of the children it made: `loadbalancer.create` its listeners, pools,
members, L7 policies and rules; `pool.create`, `member.batch_update`, `listener.create` and
`l7policy.create` theirs. A command sent again with its command id gets the same ids, also from
a restarted service (the stored answer, completed from the load balancer at that version).

Real nats-server (`fresh_nats`), the command service in this process, plain NATS requests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest
from helpers import cmd, request

from splice.events.contracts import Ok
from splice.natsserver import NatsServer
from splice.services.service import CommandService

T = "kids"
ENV = {"SPLICE_MONITORS": "off"}
POOLS = [
    {"name": "web", "protocol": "HTTP",
     "members": [{"address": "10.9.0.11", "protocol_port": 8080, "name": "m1"},
                 {"address": "10.9.0.12", "protocol_port": 8080}],
     "healthmonitor": {"type": "HTTP"}},
    {"name": "api", "protocol": "HTTP"},
]
LISTENERS = [{
    "name": "http", "protocol": "HTTP", "protocol_port": 80, "default_pool": "web",
    "l7policies": [{"action": "REDIRECT_TO_POOL", "redirect_pool": "api", "name": "to-api",
                    "rules": [{"type": "PATH", "compare_type": "STARTS_WITH", "value": "/api"}]}],
}]


@pytest.fixture
async def nc(fresh_nats: NatsServer) -> AsyncIterator[Any]:
    conn = await nats.connect(fresh_nats.url)
    yield conn
    await conn.close()


async def started(url: str) -> CommandService:
    service = CommandService(url, env=ENV)
    await service.start()
    return service


async def lb_create(nc: Any, net: str, command_id: str) -> dict[str, Any]:
    body = {"command_id": command_id, "actor": "it", "name": "lb", "vip_network_id": net,
            "pools": POOLS, "listeners": LISTENERS}
    return await request(nc, f"splice.cmd.{T}.loadbalancer.create", body)


async def test_a_load_balancer_create_answers_every_child_id_and_the_same_ids_when_repeated(
    fresh_nats: NatsServer, nc: Any
) -> None:
    service = await started(fresh_nats.url)
    try:
        await cmd(nc, "_admin.servicetype.create",
                  {"name": "gold", "providers": {"loadbalancer": "haproxy"}, "default": True})
        net = (await cmd(nc, f"{T}.network.create", {"name": "n", "cidr": "10.9.0.0/24"}))["id"]
        command_id = str(uuid.uuid4())
        reply = await lb_create(nc, net, command_id)
        assert reply["ok"], reply
        msgspec.convert(reply, Ok)  # the reply's contract holds
        (listener,) = reply["listeners"]
        web, api = reply["pools"]
        assert (web["name"], api["name"]) == ("web", "api")
        assert [(m["name"], m["address"]) for m in web["members"]] == [
            ("m1", "10.9.0.11"), (None, "10.9.0.12")]
        assert (web["healthmonitor"], api["healthmonitor"], api["members"]) == ("HTTP", None, [])
        assert (listener["name"], listener["default_pool_id"]) == ("http", web["id"])
        (policy,) = listener["l7policies"]
        assert policy["name"] == "to-api" and policy["rules"][0]["value"] == "/api"
        ids = {web["id"], api["id"], listener["id"], policy["id"], policy["rules"][0]["id"],
               *(m["id"] for m in web["members"])}
        assert len(ids) == 7 and all(uuid.UUID(i) for i in ids)

        # the ids are the stored tree's: the pool's own reply names the same members
        lb = reply["id"]
        pool = await cmd(nc, f"{T}.pool.create", {"loadbalancer_id": lb, "pool": {
            "name": "more", "protocol": "TCP",
            "members": [{"address": "10.9.0.20", "protocol_port": 22}]}})
        assert [m["address"] for m in pool["members"]] == ["10.9.0.20"]
        batch = await cmd(nc, f"{T}.member.batch_update", {
            "loadbalancer_id": lb, "pool_id": web["id"],
            "members": [{"address": "10.9.0.11", "protocol_port": 8080},
                        {"address": "10.9.0.13", "protocol_port": 8080}]})
        assert batch["id"] == lb and [m["address"] for m in batch["members"]] == [
            "10.9.0.11", "10.9.0.13"]
        assert batch["members"][0]["id"] == web["members"][0]["id"]  # kept: same address
        li = await cmd(nc, f"{T}.listener.create", {"loadbalancer_id": lb, "listener": {
            "name": "alt", "protocol": "HTTP", "protocol_port": 8080,
            "l7policies": [{"action": "REJECT"}]}})
        assert [p["action"] for p in li["l7policies"]] == ["REJECT"]
        pol = await cmd(nc, f"{T}.l7policy.create", {
            "loadbalancer_id": lb, "listener_id": li["id"], "policy": {
                "action": "REJECT", "position": 2,
                "rules": [{"type": "HOST_NAME", "compare_type": "EQUAL_TO", "value": "a.b"}]}})
        assert [r["value"] for r in pol["rules"]] == ["a.b"]
        # commands that make no children answer as before
        plain = await cmd(nc, f"{T}.loadbalancer.update", {"id": lb, "description": "x"})
        assert set(plain) == {"ok", "id", "version", "seq", "command_id"}

        # sent again (after other changes): the same answer, from this replica …
        assert await lb_create(nc, net, command_id) == reply
        # … and from a restarted one, which completes the stored answer from the log
        await service.stop()
        service = await started(fresh_nats.url)
        again = await lb_create(nc, net, command_id)
        assert again == reply
    finally:
        await service.stop()
