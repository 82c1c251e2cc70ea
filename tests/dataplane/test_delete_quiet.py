"""A load balancer's delete, through the whole loop (command service, agent, haproxy), logs no
warning: the agent reports nothing for what is gone, and nothing it sends is refused."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from tests.dataplane.test_agent_e2e import (  # noqa: F401 - `world` is a fixture
    T,
    cmd,
    create_body,
    lb_namespaces,
    off_loop,
    provisioned,
    stop_agent,
    wait_event,
    world,
)

LOUD = ("warning", "error", "critical", "exception")


async def test_a_load_balancer_delete_logs_no_warning(
    world: dict[str, Any],  # noqa: F811 - the fixture imported above
) -> None:
    nc, fab, url = world["nc"], world["fab"], world["url"]
    lb = (await cmd(nc, f"{T}.loadbalancer.create", create_body(fab, world["net"])))["id"]
    await wait_event(url, lb, provisioned(1))
    await wait_event(url, lb, lambda e: any(t == "LoadBalancerOperatingStatusChanged" for t, _ in e))
    with capture_logs() as logged:
        await cmd(nc, f"{T}.loadbalancer.delete", {"id": lb})
        await wait_event(url, lb, lambda e: e[-1][0] == "LoadBalancerDeleted")
        assert not await off_loop(lb_namespaces)
        # stopping the agent awaits every report it still had to send: all of them are in
        await stop_agent(world["agent"])
    loud = [e for e in logged if e.get("log_level") in LOUD]
    assert loud == [], loud
