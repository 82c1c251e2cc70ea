"""Chains on the command side, over NATS: accepted means servable on the router's host.

A tap hop's copy is made on the host of the chain's router, so the tap must run there (and
the router be placed); a classifier's logical source port is matched where its traffic enters
the router, so it is a live port of the tenant on one of the router's networks. A refusal
names the field and appends no event; `chain.update` checks the values it is given.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import cmd, event_messages

from splice.natsserver import NatsServer
from splice.services.service import CommandService

pytestmark = pytest.mark.chains

T = "acme"
LSP = "$.classifier.logical_source_port"


@pytest.fixture
async def svc(fresh_nats: NatsServer) -> AsyncIterator[CommandService]:
    s = CommandService(fresh_nats.url)
    await s.start()
    yield s
    await s.stop()


async def refused(nc: Any, url: str, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    """The command's error; it appended no event."""
    before = len(await event_messages(url))
    reply = await cmd(nc, subject, body, ok=False)
    assert len(await event_messages(url)) == before, reply
    return dict(reply["error"])


async def base(nc: Any, router_host: bool = True) -> dict[str, str]:
    """Host h1 runs routers and taps (when `router_host`), h2 only taps; a network `net` the
    router has an interface on, a network `other` it has none on, a floating firewall."""
    await cmd(nc, "_host.host.register", {"host": "h1", "providers": (
        ["router", "tc-mirror"] if router_host else ["tc-mirror"])})
    await cmd(nc, "_host.host.register", {"host": "h2", "providers": ["tc-mirror"]})
    await cmd(nc, "_admin.servicetype.create", {"name": "full", "providers": {
        "loadbalancer": "haproxy", "firewall": "nftables", "tap": "tc-mirror"}})
    net = await cmd(nc, f"{T}.network.create", {"name": "web", "cidr": "10.20.0.0/24"})
    other = await cmd(nc, f"{T}.network.create", {"name": "db", "cidr": "10.30.0.0/24"})
    router = await cmd(nc, f"{T}.router.create", {"name": "r1"})
    await cmd(nc, f"{T}.router.add_interface", {"id": router["id"], "network_id": net["id"]})
    fw = await cmd(nc, f"{T}.firewall.create", {"name": "fw", "network_id": net["id"]})
    return {"net": net["id"], "other": other["id"], "router": router["id"], "fw": fw["id"]}


async def tap_on(nc: Any, b: dict[str, str], host: str) -> str:
    ports = [await cmd(nc, f"{T}.port.create", {"network_id": b["net"], "host": host}) for _ in range(2)]
    tap = await cmd(nc, f"{T}.tap.create", {"name": f"t-{host}", "port_id": ports[0]["id"],
                                            "monitor_port_id": ports[1]["id"]})
    return str(tap["id"])


def fw_hop(b: dict[str, str]) -> dict[str, str]:
    return {"service_id": b["fw"], "kind": "firewall", "insertion": "bump_in_the_wire"}


def tap_hop(tap: str) -> dict[str, str]:
    return {"service_id": tap, "kind": "tap", "insertion": "tap"}


def chain_body(b: dict[str, str], hops: list[dict[str, str]], **classifier: str) -> dict[str, Any]:
    return {"name": "c", "router_id": b["router"], "classifier": {"protocol": "tcp", **classifier},
            "hops": hops}


async def chain_values(url: str, chain: str) -> dict[str, Any]:
    """The chain's values as its last event set them."""
    mine = [m["payload"] for m in await event_messages(url)
            if f".chain.{chain}." in m["subject"]
            and m["headers"]["Splice-Topic"] in ("ServiceChainCreated", "ServiceChainUpdated")]
    return {k: mine[-1][k] for k in ("classifier", "hops", "priority", "symmetric")}


async def test_a_tap_hop_must_run_on_the_routers_host(svc: CommandService, nc: Any) -> None:
    b = await base(nc)
    elsewhere, here = await tap_on(nc, b, "h2"), await tap_on(nc, b, "h1")
    e = await refused(nc, svc.nats_url, f"{T}.chain.create", chain_body(b, [tap_hop(elsewhere)]))
    assert (e["code"], e["field"]) == ("invalid", "$.hops[0].service_id")
    assert "h2" in e["message"] and "h1" in e["message"], e
    chain = await cmd(nc, f"{T}.chain.create", chain_body(b, [tap_hop(here), fw_hop(b)]))
    assert (await chain_values(svc.nats_url, chain["id"]))["hops"][0]["service_id"] == here
    await cmd(nc, f"{T}.tap.delete", {"id": elsewhere})  # never a hop of any chain


async def test_a_tap_hop_is_refused_while_the_router_is_on_no_host(svc: CommandService, nc: Any) -> None:
    b = await base(nc, router_host=False)
    tap = await tap_on(nc, b, "h1")
    e = await refused(nc, svc.nats_url, f"{T}.chain.create", chain_body(b, [fw_hop(b), tap_hop(tap)]))
    assert (e["code"], e["field"]) == ("invalid", "$.hops[1].service_id")
    assert "not placed on a host yet" in e["message"], e
    await cmd(nc, f"{T}.chain.create", chain_body(b, [fw_hop(b)]))  # no tap: servable anywhere


async def test_a_logical_source_port_is_the_tenants_on_a_network_of_the_router(
    svc: CommandService, nc: Any
) -> None:
    b = await base(nc)
    theirs_net = await cmd(nc, "globex.network.create", {"name": "g", "cidr": "10.20.0.0/24"})
    theirs = await cmd(nc, "globex.port.create", {"network_id": theirs_net["id"]})
    off_router = await cmd(nc, f"{T}.port.create", {"network_id": b["other"]})
    gone = await cmd(nc, f"{T}.port.create", {"network_id": b["net"]})
    await cmd(nc, f"{T}.port.delete", {"id": gone["id"]})
    for port, code in [(str(uuid.uuid4()), "not_found"), (theirs["id"], "not_found"),
                       (gone["id"], "not_found"), (off_router["id"], "invalid")]:
        body = chain_body(b, [fw_hop(b)], logical_source_port=port)
        e = await refused(nc, svc.nats_url, f"{T}.chain.create", body)
        assert (e["code"], e["field"]) == (code, LSP), (port, e)
    on_router = await cmd(nc, f"{T}.port.create", {"network_id": b["net"]})
    chain = await cmd(nc, f"{T}.chain.create", chain_body(b, [fw_hop(b)], logical_source_port=on_router["id"]))
    got = await chain_values(svc.nats_url, chain["id"])
    assert got["classifier"]["logical_source_port"] == on_router["id"]


async def test_chain_update_with_a_bad_tap_hop_or_source_port_is_refused_and_keeps_its_values(
    svc: CommandService, nc: Any
) -> None:
    b = await base(nc)
    elsewhere, here = await tap_on(nc, b, "h2"), await tap_on(nc, b, "h1")
    src = await cmd(nc, f"{T}.port.create", {"network_id": b["net"]})
    off_router = await cmd(nc, f"{T}.port.create", {"network_id": b["other"]})
    chain = await cmd(nc, f"{T}.chain.create", chain_body(b, [fw_hop(b)], logical_source_port=src["id"]))
    kept = await chain_values(svc.nats_url, chain["id"])
    bad = [
        ({"hops": [fw_hop(b), tap_hop(elsewhere)]}, "$.hops[1].service_id"),
        ({"classifier": {"protocol": "udp", "logical_source_port": off_router["id"]}}, LSP),
        ({"classifier": {"logical_source_port": str(uuid.uuid4())}, "priority": 3}, LSP),
        ({"hops": [tap_hop(here)], "classifier": {"logical_source_port": off_router["id"]}}, LSP),
    ]
    for change, field in bad:
        e = await refused(nc, svc.nats_url, f"{T}.chain.update", {"id": chain["id"], **change})
        assert e["field"] == field, (change, e)
        assert await chain_values(svc.nats_url, chain["id"]) == kept
    # the tap that was refused is free; good values are accepted
    await cmd(nc, f"{T}.tap.delete", {"id": elsewhere})
    await cmd(nc, f"{T}.chain.update", {"id": chain["id"], "hops": [fw_hop(b), tap_hop(here)],
                                        "classifier": {"protocol": "udp"}})
    got = await chain_values(svc.nats_url, chain["id"])
    assert [h["service_id"] for h in got["hops"]] == [b["fw"], here]
    assert got["classifier"].get("logical_source_port") is None
