"""Drift repair and deletion on a real host: killed haproxy, deleted namespace, orphans."""

# The tests are async only to drive the reconciler; a blocking stat() in a test is harmless.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from pyroute2 import netns

from splice.agents import netns as agent_netns
from splice.agents.drivers.haproxy import process as haproxy
from splice.agents.drivers.haproxy.driver import HaproxyDriver
from splice.agents.drivers.haproxy.render import LbPaths
from splice.agents.drivers.reports import ACTIVE, DELETED
from tests.dataplane.fabric import PREFIX, Fabric, Recorder, lb_spec, wait_until


def serving(net: Fabric, vip: str) -> bool:
    try:
        return net.get(vip, 80, timeout=1).status == 200
    except OSError:
        return False


def paths_of(reconciler: HaproxyDriver, lb_id: str) -> LbPaths:
    layout = reconciler.layout
    return LbPaths(layout.lb_dir(layout.short_id(lb_id)))


async def test_killed_haproxy_is_restarted_and_serves_after_resync(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    spec = lb_spec(net, vip_host=11)
    await reconciler.converge({spec.id: spec})
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    namespace = reconciler.layout.namespace(spec.id)
    for pid in agent_netns.pids_in_namespace(namespace):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not agent_netns.pids_in_namespace(namespace), 5, "haproxy to die")
    assert not serving(net, spec.vip_address)

    result = (await reconciler.resync())[spec.id]
    assert result.provisioning_status == ACTIVE, result.reason
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve again")


async def test_namespace_deleted_by_hand_is_recreated_and_serves(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    spec = lb_spec(net, vip_host=12)
    await reconciler.converge({spec.id: spec})
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    namespace = reconciler.layout.namespace(spec.id)
    old_master = haproxy.master_pid(paths_of(reconciler, spec.id))
    netns.remove(namespace)  # haproxy keeps the anonymous namespace (and the VIP) alive

    result = (await reconciler.resync())[spec.id]
    assert result.provisioning_status == ACTIVE, result.reason
    assert namespace in agent_netns.list_namespaces(PREFIX)
    assert old_master is not None
    wait_until(lambda: not agent_netns.process_alive(old_master), 5, "the old master to die")
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve again")


async def test_orphan_namespace_with_prefix_is_removed_and_others_are_left_alone(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    orphan = f"{PREFIX}lb-0bad0bad"
    foreign = "spltx-lb-0bad0bad"  # similar, but not our prefix: must survive
    netns.create(orphan)
    netns.create(foreign)
    try:
        spec = lb_spec(net, vip_host=13)
        await reconciler.converge({spec.id: spec})
        names = set(netns.listnetns())
        assert orphan not in names
        assert foreign in names
        assert reconciler.layout.namespace(spec.id) in names
    finally:
        agent_netns.delete_namespace(orphan)
        agent_netns.delete_namespace(foreign)


async def test_delete_removes_namespace_process_veth_and_files(
    net: Fabric, reconciler: HaproxyDriver, recorder: Recorder
) -> None:
    spec = lb_spec(net, vip_host=14)
    await reconciler.converge({spec.id: spec})
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    layout = reconciler.layout
    namespace = layout.namespace(spec.id)
    paths = paths_of(reconciler, spec.id)
    master = haproxy.master_pid(paths)
    assert master is not None

    results = await reconciler.converge({})
    assert results[spec.id].provisioning_status == DELETED
    assert namespace not in agent_netns.list_namespaces(PREFIX)
    wait_until(lambda: not agent_netns.process_alive(master), 5, "the master to die")
    assert not Path(paths.dir).exists()
    links = await asyncio.to_thread(agent_netns.observe_host, PREFIX)
    assert layout.host_veth(spec.id) not in links.veth_master
    assert recorder.reports[-1].result.provisioning_status == DELETED
    assert not serving(net, spec.vip_address)
    # the shared bridge still carries the fabric's namespaces, so it stays
    assert net.bridge in links.bridges


async def test_config_change_reloads_without_restarting_the_master(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    spec = lb_spec(net, vip_host=15, members=net.members[:1])
    await reconciler.converge({spec.id: spec})
    paths = paths_of(reconciler, spec.id)
    master = haproxy.master_pid(paths)
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    changed = lb_spec(net, vip_host=15, members=net.members[1:2], lb_id=spec.id, generation=2)
    result = (await reconciler.converge({spec.id: changed}))[spec.id]
    assert (result.provisioning_status, result.generation) == (ACTIVE, 2)
    assert haproxy.master_pid(paths) == master
    assert net.get(spec.vip_address, 80).body == net.members[1].name


async def test_second_converge_with_the_same_state_changes_nothing(
    net: Fabric, reconciler: HaproxyDriver, recorder: Recorder
) -> None:
    spec = lb_spec(net, vip_host=16)
    await reconciler.converge({spec.id: spec})
    paths = paths_of(reconciler, spec.id)
    config = Path(paths.config).stat().st_mtime_ns
    worker = haproxy.command(paths.stats_socket, "show info")
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
    reports = len(recorder.reports)
    await reconciler.converge({spec.id: spec})
    assert Path(paths.config).stat().st_mtime_ns == config
    pid_line = [x for x in worker.splitlines() if x.startswith("Pid:")]
    assert pid_line[0] in haproxy.command(paths.stats_socket, "show info")
    assert len(recorder.reports) == reports  # no transition, no report


async def test_back_to_back_reloads_right_after_start_each_get_a_new_worker(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    # A master that has just started or re-executed drops a SIGUSR2 that comes before its
    # handler is set: without waiting for its CLI, one of these reloads timed out.
    spec = lb_spec(net, vip_host=17)
    await reconciler.converge({spec.id: spec})
    paths = paths_of(reconciler, spec.id)
    workers = [haproxy.command(paths.stats_socket, "show info")]
    for _ in range(5):
        await asyncio.to_thread(haproxy.reload, paths, 5.0)
        workers.append(haproxy.command(paths.stats_socket, "show info"))
    pids = [next(x for x in w.splitlines() if x.startswith("Pid:")) for w in workers]
    assert len(set(pids)) == 6, pids
    assert haproxy.master_ready(paths, pids[-1].split(": ", 1)[1])
    wait_until(lambda: serving(net, spec.vip_address), 10, "the VIP to serve")
