"""Property-based: random command sequences, sent concurrently, never break an invariant.

Hypothesis draws a sequence of steps; each step is a handful of commands sent at the same time
to the real command service over NATS (so they race on the server's concurrency checks). Each
example works in a tenant of its own; service types are global and shared by all examples.
After each example the raw stream is folded independently of the domain code and checked:

* an address is never allocated twice on one network while it is held;
* a VXLAN segment id (VNI) is never held by two networks, of any tenants, at once, and each
  network's `NetworkCreated` carries the VNI the pool gave it in the same commit;
* exactly one service type is the default (once any exists), and the default's history is a
  chain (each change names the previous default: no lost update);
* a chain's hops are live services of the chain's tenant, a service is a hop of one live chain
  at most, and a service is never deleted while a live chain uses it;
* every provisioning status move of a load balancer is a legal one;
* replaying the stored events through the aggregates rebuilds the state the fold sees.

Run with `--hypothesis-show-statistics` to see how many examples ran (`./dev test` does).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splice.natsserver import NatsServer
from splice.services.domain import public_id
from splice.services.handlers import SpliceApplication
from splice.services.lbaas import LEGAL_MOVES
from splice.services.service import CommandService, app_env


class Running:
    """A nats-server and a command service on a loop of their own, for synchronous tests."""

    def __init__(self, store: Path) -> None:
        self.server = NatsServer(store_dir=store).start()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = CommandService(self.server.url, env={"SPLICE_QUOTAS": "port=40"})
        self.call(self.service.start())
        self.nc: Any = self.call(nats.connect(self.server.url))

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.call(self.nc.close())
        self.call(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.server.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = Running(tmp_path_factory.mktemp("props"))
    yield r
    r.close()


# -- the command alphabet ---------------------------------------------------------------------

ST_NAMES = ["alpha", "beta", "gamma"]
PROVIDERS = {"loadbalancer": "haproxy", "firewall": "nftables", "nat": "nftables", "tap": "tc-mirror"}

step_cmd = st.one_of(
    st.tuples(st.just("st_create"), st.sampled_from(ST_NAMES), st.booleans()),
    st.tuples(st.just("st_default"), st.integers(0, 5)),
    st.tuples(st.just("st_delete"), st.integers(0, 5)),
    st.tuples(st.just("net"), st.sampled_from(["10.0.0.0/29", "10.0.1.0/28"])),
    st.tuples(st.just("port"), st.integers(0, 3), st.one_of(st.none(), st.integers(1, 6))),
    st.tuples(st.just("port_del"), st.integers(0, 10)),
    st.tuples(st.just("host"), st.sampled_from(["h1", "h2"])),
    st.tuples(st.just("lb"), st.integers(0, 3)),
    st.tuples(st.just("lb_update"), st.integers(0, 3)),
    st.tuples(st.just("lb_del"), st.integers(0, 3)),
    st.tuples(st.just("report"), st.integers(0, 3), st.integers(0, 4),
              st.sampled_from(["ACTIVE", "ERROR", "DELETED"])),
    st.tuples(st.just("expire"), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("fw"), st.integers(0, 3)),
    st.tuples(st.just("fw_del"), st.integers(0, 3)),
    st.tuples(st.just("chain"), st.lists(st.integers(0, 7), min_size=1, max_size=3)),
    st.tuples(st.just("chain_del"), st.integers(0, 3)),
    st.tuples(st.just("router"), st.just(0)),
    st.tuples(st.just("net_del"), st.integers(0, 3)),
    st.tuples(st.just("chain_update"), st.integers(0, 3), st.lists(st.integers(0, 7), min_size=1, max_size=3),
              st.integers(0, 2)),
)
steps = st.lists(st.lists(step_cmd, min_size=1, max_size=4), min_size=1, max_size=8)


def pick(items: list[str], i: int) -> str | None:
    return items[i % len(items)] if items else None


class Example:
    def __init__(self, r: Running) -> None:
        self.r = r
        self.t = "p" + uuid.uuid4().hex[:10]
        self.ids: dict[str, list[str]] = {k: [] for k in ("st", "net", "port", "lb", "fw", "chain", "router")}
        self.gen: dict[str, int] = {}

    def body(self, op: tuple[Any, ...]) -> tuple[str, dict[str, Any], str | None] | None:
        t, ids, kind = self.t, self.ids, op[0]
        if kind == "st_create":
            return "_admin.servicetype.create", {"name": op[1], "providers": PROVIDERS, "default": op[2]}, "st"
        if kind == "st_default" and (s := pick(ids["st"], op[1])):
            return "_admin.servicetype.set_default", {"id": s}, None
        if kind == "st_delete" and (s := pick(ids["st"], op[1])):
            return "_admin.servicetype.delete", {"id": s}, None
        if kind == "net":
            return f"{t}.network.create", {"name": "n", "cidr": op[1]}, "net"
        if kind == "net_del" and (n := pick(ids["net"], op[1])):
            return f"{t}.network.delete", {"id": n}, None
        if kind == "port" and (n := pick(ids["net"], op[1])):
            b: dict[str, Any] = {"network_id": n}
            if op[2] is not None:
                b["ip_address"] = f"10.0.0.{op[2]}"
            return f"{t}.port.create", b, "port"
        if kind == "port_del" and (p := pick(ids["port"], op[1])):
            return f"{t}.port.delete", {"id": p}, None
        if kind == "host":
            return "_host.host.register", {"host": op[1], "providers": ["haproxy", "nftables"]}, None
        if kind == "lb" and (n := pick(ids["net"], op[1])):
            return f"{t}.loadbalancer.create", {"name": "lb", "vip_network_id": n}, "lb"
        if kind == "lb_update" and (lb := pick(ids["lb"], op[1])):
            return f"{t}.loadbalancer.update", {"id": lb, "description": uuid.uuid4().hex[:8]}, None
        if kind == "lb_del" and (lb := pick(ids["lb"], op[1])):
            return f"{t}.loadbalancer.delete", {"id": lb}, None
        if kind == "report" and (lb := pick(ids["lb"], op[1])):
            return "_host.loadbalancer.report", {"tenant": t, "loadbalancer_id": lb, "host": "h1",
                                                  "generation": op[2], "status": op[3]}, None
        if kind == "expire" and (lb := pick(ids["lb"], op[1])):
            return f"{t}.loadbalancer.expire_pending", {"id": lb, "generation": op[2]}, None
        if kind == "fw" and (n := pick(ids["net"], op[1])):
            return f"{t}.firewall.create", {"name": "fw", "network_id": n}, "fw"
        if kind == "fw_del" and (f := pick(ids["fw"], op[1])):
            return f"{t}.firewall.delete", {"id": f}, None
        if kind == "router":
            return f"{t}.router.create", {"name": "r"}, "router"
        if kind in ("chain", "chain_update"):
            services = [("firewall", "bump_in_the_wire", x) for x in ids["fw"]] + [
                ("loadbalancer", "l3", x) for x in ids["lb"]]
            if services and ids["router"]:
                hops = [services[i % len(services)] for i in op[-2 if kind == "chain_update" else 1]]
                hops = list({h[2]: h for h in hops}.values())
                body = {"classifier": {"protocol": "tcp"}, "hops": [
                    {"service_id": s, "kind": k, "insertion": ins} for k, ins, s in hops]}
                if kind == "chain":
                    return f"{t}.chain.create", {"name": "c", "router_id": ids["router"][0], **body}, "chain"
                if c := pick(ids["chain"], op[1]):
                    return f"{t}.chain.update", {"id": c, "priority": op[3], **body}, None
        if kind == "chain_del" and (c := pick(ids["chain"], op[1])):
            return f"{t}.chain.delete", {"id": c}, None
        return None

    async def send(self, subject: str, body: dict[str, Any], keep: str | None) -> None:
        body = {"command_id": str(uuid.uuid4()), "actor": "prop", **body}
        msg = await self.r.nc.request(f"splice.cmd.{subject}", json.dumps(body).encode(), timeout=30)
        reply = json.loads(msg.data)
        assert reply["ok"] or reply["error"]["code"] not in ("internal", "unavailable"), reply
        if reply["ok"] and keep:
            self.ids[keep].append(reply["id"])

    async def run(self, plan: list[list[tuple[Any, ...]]]) -> None:
        for step in plan:
            sends = [b for op in step if (b := self.body(op)) is not None]
            await asyncio.gather(*(self.send(*s) for s in sends))


async def stream(url: str) -> list[dict[str, Any]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    out: list[dict[str, Any]] = []
    sub = await js.subscribe("splice.evt.>", ordered_consumer=True)
    try:
        info = await js.stream_info("SPLICE_EVENTS")
        while True:
            try:
                m = await sub.next_msg(timeout=2)
            except Exception:
                break
            out.append({"subject": m.subject, "type": m.headers["Splice-Topic"], "p": json.loads(m.data),
                        "seq": m.metadata.sequence.stream})
            if m.metadata.sequence.stream >= info.state.last_seq or m.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()  # stops its heartbeat and flow-control tasks (close does not)
        await nc.close()
    return out


def check_invariants(events: list[dict[str, Any]], tenant: str, app: SpliceApplication) -> None:
    held: dict[str, dict[str, str]] = {}
    defaults: set[str] = set()
    types: set[str] = set()
    current = ""
    live: dict[str, set[str]] = {}  # service agg id -> live chains
    deleted: set[str] = set()
    lb_events: dict[str, list[str]] = {}
    vnis: dict[int, str] = {}  # VNI -> the network holding it
    for i, e in enumerate(events):
        tok = e["subject"].split(".")
        ten, agg, ident, typ, p = tok[2], tok[3], tok[4], e["type"], e["p"]
        agg_id = f"{ten}.{agg}.{ident}"
        if typ == "AddressAllocated":
            net = held.setdefault(agg_id, {})
            assert p["ip_address"] not in net, f"{p['ip_address']} handed out twice"
            net[p["ip_address"]] = p["port_id"]
        elif typ == "AddressReleased":
            assert held[agg_id].pop(p["ip_address"]) == p["port_id"]
        elif typ == "SegmentAllocated":
            assert p["segmentation_id"] not in vnis, f"VNI {p['segmentation_id']} handed out twice"
            vnis[p["segmentation_id"]] = p["network_id"]
        elif typ == "SegmentReleased":
            assert vnis.pop(p["segmentation_id"]) == p["network_id"]
        elif typ == "NetworkCreated":
            assert vnis.get(p["segmentation_id"]) == agg_id, "a network without its pool's VNI"
        elif typ == "ServiceTypeCreated":
            types.add(agg_id)
        elif typ == "ServiceTypeDeleted":
            types.discard(agg_id)
            assert agg_id not in defaults
        elif typ == "ServiceTypeDefaultSet":
            defaults.add(agg_id)
        elif typ == "ServiceTypeDefaultCleared":
            defaults.discard(agg_id)
        elif typ == "DefaultServiceTypeChanged":
            assert p["previous_id"] == current, "a default change was lost"
            current = p["service_type_id"]
        elif typ in ("ServiceChainCreated", "ServiceChainUpdated"):
            for h in p["hops"]:
                sid = f"{ten}.{h['kind']}.{h['service_id']}"
                assert sid not in deleted, "a chain references a deleted service"
        elif typ == "ServiceChainAttached":
            live.setdefault(agg_id, set()).add(p["chain_id"])
            assert len(live[agg_id]) == 1, "a service is a hop of two chains"
            assert p["chain_id"].startswith(f"{ten}."), "a chain uses another tenant's service"
        elif typ == "ServiceChainDetached":
            live[agg_id].discard(p["chain_id"])
        elif typ in ("FirewallDeleted", "LoadBalancerDeleteRequested"):
            assert not live.get(agg_id), "a service was deleted while a chain uses it"
            deleted.add(agg_id)
        if agg == "loadbalancer" and ten == tenant:
            lb_events.setdefault(agg_id, []).append(typ)
        # one command is one atomic commit: check the default between commits, not inside one
        last_of_commit = i + 1 == len(events) or events[i + 1]["p"]["command_id"] != p["command_id"]
        if last_of_commit and current:
            assert defaults == {current}, (defaults, current)
    if types:
        assert len(defaults & types) == 1

    # replay through the aggregates: the same allocations and legal status moves
    for net_id, allocations in held.items():
        if net_id.startswith(f"{tenant}."):
            assert app.repository.get(net_id).allocations == allocations
    for lb_id in lb_events:
        statuses = []
        agg = None
        for stored in app.recorder.select_events(lb_id):
            agg = app.mapper.to_domain_event(stored).mutate(agg)
            statuses.append(agg.provisioning_status)  # type: ignore[union-attr]
        for before, after in itertools.pairwise(statuses):
            assert after in LEGAL_MOVES[before] | {before}, f"{before} -> {after}"
        assert public_id(lb_id)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(plan=steps)
def test_random_concurrent_command_sequences_keep_every_invariant(
    running: Running, plan: list[list[tuple[Any, ...]]]
) -> None:
    ex = Example(running)
    running.call(ex.run(plan))
    events = running.call(stream(running.server.url))
    app = SpliceApplication(env=app_env(running.server.url))
    try:
        check_invariants(events, ex.t, app)
    finally:
        app.close()
