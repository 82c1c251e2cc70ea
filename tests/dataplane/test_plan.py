"""Table tests of the pure planner: (desired, observed) → ops. No root, no I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from splice.agents.drivers.haproxy.plan import (
    DeleteBridge,
    DeleteLoadBalancer,
    EnsureBridge,
    EnsureVipLeg,
    KillStrayHaproxy,
    Observed,
    ObservedLB,
    Op,
    StartHaproxy,
    WriteConfigAndReload,
    desired_leg,
    plan,
)
from splice.agents.drivers.haproxy.render import LbPaths, digest, render
from splice.agents.model import HostLayout, LoadBalancerSpec
from splice.agents.netns import NamespaceLinks
from tests.dataplane.specs import build, tcp_mix

LAYOUT = HostLayout(state_dir="/var/lib/splice/lb", prefix="spl-")
SPEC = build(tcp_mix())
SHORT = LAYOUT.short_id(SPEC.id)
BRIDGE = LAYOUT.bridge(SPEC.network)
CONFIG = render(SPEC, LbPaths(LAYOUT.lb_dir(SHORT)))


def converged(spec: LoadBalancerSpec = SPEC) -> ObservedLB:
    """An LB slot exactly as ``spec`` wants it."""
    leg = desired_leg(spec, LAYOUT)
    short = LAYOUT.short_id(spec.id)
    return ObservedLB(
        short=short, namespace_exists=True,
        links=NamespaceLinks(inode=42, vip_if_up=True,
                             addresses=frozenset({f"{leg.address}/{leg.prefixlen}"}),
                             mac="fa:16:3e:00:00:01", default_gateway=leg.gateway),
        host_veth=True, host_veth_master=leg.bridge, haproxy_pid=1234,
        applied_digest=digest(render(spec, LbPaths(LAYOUT.lb_dir(short)))),
        state_dir=True, lb_id=spec.id,
    )


def world(*lbs: ObservedLB, bridges: dict[str, int] | None = None) -> Observed:
    ports = {BRIDGE: len(lbs)} if bridges is None else bridges
    return Observed(LAYOUT, frozenset(ports), ports, {lb.short: lb for lb in lbs})


def kinds(ops: list[Op]) -> list[str]:
    return [type(op).__name__ for op in ops]


def changed(**fields: Any) -> ObservedLB:
    return dataclasses.replace(converged(), **fields)


def same_short_id() -> LoadBalancerSpec:
    """Another LB whose id starts with the same 8 hex digits as SPEC's."""
    data = tcp_mix()
    data["id"] = SPEC.id[:8] + "-ffff-4000-8000-0000000000ff"
    return build(data)


CASES: list[tuple[str, Callable[[], tuple[dict[str, LoadBalancerSpec], Observed]], list[str]]] = [
    ("nothing wanted, nothing there", lambda: ({}, world(bridges={})), []),
    ("new LB on an empty host", lambda: ({SPEC.id: SPEC}, world(bridges={})),
     ["EnsureBridge", "EnsureNamespace", "EnsureVipLeg", "StartHaproxy"]),
    ("converged LB: nothing to do", lambda: ({SPEC.id: SPEC}, world(converged())), []),
    ("config changed: hitless reload",
     lambda: ({SPEC.id: SPEC}, world(changed(applied_digest="old"))), ["WriteConfigAndReload"]),
    ("haproxy died: start it again",
     lambda: ({SPEC.id: SPEC}, world(changed(haproxy_pid=None))), ["StartHaproxy"]),
    ("namespace deleted by hand while haproxy lives on",
     lambda: ({SPEC.id: SPEC}, world(changed(namespace_exists=False, links=None, haproxy_pid=None,
                                              stray_netns_inode=99, host_veth=True))),
     ["KillStrayHaproxy", "EnsureNamespace", "EnsureVipLeg", "StartHaproxy"]),
    ("VIP address drifted",
     lambda: ({SPEC.id: SPEC}, world(changed(links=dataclasses.replace(
         converged().links, addresses=frozenset({"10.77.7.99/24"}))))), ["EnsureVipLeg"]),
    ("VIP leg unplugged from the bridge",
     lambda: ({SPEC.id: SPEC}, world(changed(host_veth_master=None))), ["EnsureVipLeg"]),
    ("bridge missing (someone deleted it)",
     lambda: ({SPEC.id: SPEC}, world(changed(host_veth_master=None), bridges={})),
     ["EnsureBridge", "EnsureVipLeg"]),
    ("LB no longer desired: delete it, then its now-empty bridge",
     lambda: ({}, world(converged())), ["DeleteLoadBalancer", "DeleteBridge"]),
    ("orphan namespace of ours without state: removed",
     lambda: ({}, world(ObservedLB("0bad0bad", namespace_exists=True), bridges={})),
     ["RemoveOrphanNamespace"]),
    ("unneeded bridge that still carries foreign ports is kept",
     lambda: ({}, world(bridges={BRIDGE: 3})), []),
    ("same config already refused by haproxy -c: report, don't retry",
     lambda: ({SPEC.id: SPEC}, world(changed(applied_digest="old",
                                             rejected_digest=digest(CONFIG)))), ["ReportError"]),
    ("two LBs whose ids share 8 hex digits: the second is refused",
     lambda: ({SPEC.id: SPEC, same_short_id().id: same_short_id()},
              world(converged())), ["ReportError"]),
]


@pytest.mark.parametrize(("name", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan(name: str, make: Callable[[], tuple[dict[str, LoadBalancerSpec], Observed]],
              expected: list[str]) -> None:
    desired, observed = make()
    ops = plan(desired, observed)
    assert kinds(ops) == expected
    assert all(_names_carry_prefix(op) for op in ops), ops


def _names_carry_prefix(op: Op) -> bool:
    """Every interface, namespace or bridge an op names carries the host's prefix."""
    names = [getattr(op, attr) for attr in ("name", "namespace", "host_veth")
             if hasattr(op, attr)]
    if isinstance(op, EnsureVipLeg):
        names += [op.leg.namespace, op.leg.host_ifname, op.leg.bridge]
    return all(n.startswith(LAYOUT.prefix) for n in names)


def test_plan_orders_bridges_first_and_bridge_deletion_last() -> None:
    gone = ObservedLB("0bad0bad", namespace_exists=True, state_dir=True, lb_id=None,
                      host_veth=True, host_veth_master="spl-br-deadbee")
    observed = Observed(LAYOUT, frozenset({"spl-br-deadbee"}), {"spl-br-deadbee": 1},
                        {"0bad0bad": gone})
    ops = plan({SPEC.id: SPEC}, observed)
    assert isinstance(ops[0], EnsureBridge)
    assert isinstance(ops[-1], DeleteBridge) and ops[-1].name == "spl-br-deadbee"
    assert any(isinstance(op, DeleteLoadBalancer) for op in ops)
    # a bridge another driver of the host needs stays, empty or not
    kept = plan({SPEC.id: SPEC}, observed, keep={"spl-br-deadbee"})
    assert not any(isinstance(op, DeleteBridge) for op in kept)


def test_start_carries_the_rendered_config_and_reload_only_when_it_differs() -> None:
    (start,) = [op for op in plan({SPEC.id: SPEC}, world(changed(haproxy_pid=None)))]
    assert isinstance(start, StartHaproxy) and start.config == CONFIG
    (reload_op,) = plan({SPEC.id: SPEC}, world(changed(applied_digest="x")))
    assert isinstance(reload_op, WriteConfigAndReload) and reload_op.config == CONFIG


def test_a_converged_host_plans_nothing_and_one_changed_member_plans_one_reload() -> None:
    assert plan({SPEC.id: SPEC}, world(converged())) == []
    pool = next(iter(SPEC.state.pools.values()))
    member = msgspec.structs.replace(pool.members[0], weight=pool.members[0].weight + 1)
    state = msgspec.structs.replace(SPEC.state, pools={
        **SPEC.state.pools, pool.id: msgspec.structs.replace(pool, members=[member, *pool.members[1:]])})
    changed_spec = LoadBalancerSpec(SPEC.id, SPEC.network, state)
    (op,) = plan({SPEC.id: changed_spec}, world(converged()))
    assert isinstance(op, WriteConfigAndReload) and f"weight {member.weight}" in op.config


def test_op_keys_serialise_per_lb_and_per_bridge() -> None:
    ops = plan({SPEC.id: SPEC}, world(bridges={}))
    assert {op.key for op in ops} == {f"bridge:{BRIDGE}", f"lb:{SHORT}"}


def test_a_stray_haproxy_is_killed_before_its_slot_is_rebuilt() -> None:
    stray = changed(namespace_exists=False, haproxy_pid=None, stray_netns_inode=4242)
    ops = plan({SPEC.id: SPEC}, world(stray))
    assert kinds(ops)[:2] == ["KillStrayHaproxy", "EnsureNamespace"]
    assert isinstance(ops[0], KillStrayHaproxy) and ops[0].netns_inode == 4242
