"""The shared bridges on a real host: a bridge a plan found unused goes only if it still is.

A plan decides from an observation a pass old. A tenant's machine (or another driver's leg)
plugged in since must keep the bridge: deleting it would silently unplug that port for good.
Names carry the test prefix and a per-process tag; everything is removed even on failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from splice.agents import netns as agent_netns
from tests.dataplane.fabric import PREFIX

TAG = format(os.getpid() % 0xFFF, "x")
BRIDGE = f"{PREFIX}br-b{TAG}"
PORT, VXLAN = f"{PREFIX}bp{TAG}", f"{PREFIX}bx{TAG}"


def exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def plug(name: str, **kind: object) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, **kind)
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0],
                 master=ipr.link_lookup(ifname=BRIDGE)[0])


@pytest.fixture
def bridge() -> Iterator[str]:
    agent_netns.ensure_bridge(BRIDGE)
    try:
        yield BRIDGE
    finally:
        for name in (PORT, VXLAN, BRIDGE):
            agent_netns.delete_link(name)


def test_a_port_plugged_in_since_the_plan_keeps_the_bridge(bridge: str) -> None:
    plug(PORT, kind="veth", peer=f"{PORT}p")
    assert agent_netns.delete_unused_bridge(bridge) is False
    assert exists(bridge) and exists(PORT)
    agent_netns.delete_link(PORT)
    assert agent_netns.delete_unused_bridge(bridge) is True
    assert not exists(bridge)


def test_a_bridge_with_only_our_vxlan_device_is_unused(bridge: str) -> None:
    plug(VXLAN, kind="vxlan", vxlan_id=4000 + os.getpid() % 1000, vxlan_port=4789)
    assert agent_netns.delete_unused_bridge(bridge) is True
    assert not exists(bridge)
