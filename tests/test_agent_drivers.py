"""An agent offers exactly the providers it has drivers for, and never serves another's services."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from splice.agents.drivers import drivers
from splice.agents.runtime import Agent
from splice.events.lbaas_fold import LoadBalancerState
from splice.events.wire import InsertionState

LB = "demo.loadbalancer.11111111-0000-4000-8000-000000000001"
NET = "22222222-0000-4000-8000-000000000002"


def test_an_agent_refuses_to_offer_a_provider_it_has_no_driver_for(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="f5-bigip"):
        Agent("nats://127.0.0.1:1", "h1", tmp_path, providers=["haproxy", "f5-bigip"])
    assert set(drivers()) == {"haproxy", "nftables-l4", "tc-mirror"}


class Recording(Agent):
    """The agent, with its reports kept instead of sent (no NATS in this test)."""

    reports: list[tuple[str, int, str, str]]

    async def _report(self, agg_id: str, generation: int, status: str, reason: str) -> None:
        self.reports.append((agg_id, generation, status, reason))


async def test_a_service_of_a_provider_without_a_driver_here_is_reported_error_not_served(
    tmp_path: Path,
) -> None:
    agent = Recording("nats://127.0.0.1:1", "h1", tmp_path, providers=["haproxy"])
    agent.reports = []
    agent.networks[f"demo.network.{NET}"] = ("10.1.0.0/24", "10.1.0.1")
    for provider, suffix in (("nftables-l4", "1"), ("haproxy", "2")):
        agent.lbs[LB[:-1] + suffix] = LoadBalancerState(
            vip_network_id=NET, vip_address="10.1.0.10", host="h1", generation=3,
            insertion=InsertionState(mode="floating", service_type_id=NET, provider=provider))
    desired = agent.desired()
    await asyncio.sleep(0)  # the report is sent from a task
    assert {p: sorted(d) for p, d in desired.items()} == {
        "haproxy": ["11111111-0000-4000-8000-000000000002"]}
    assert agent.reports == [(LB, 3, "ERROR", "host h1 has no driver for provider 'nftables-l4'")]
    for driver in agent.drivers.values():
        driver.close()


async def test_deleted_is_reported_only_for_what_the_converge_removed(tmp_path: Path) -> None:
    """A delete that arrives while a converge still serves the load balancer is reported by the
    next converge, the one that removes it (not by the one in flight)."""
    agent = Recording("nats://127.0.0.1:1", "h1", tmp_path, providers=["haproxy"])
    agent.reports = []
    agent.lbs[LB] = LoadBalancerState(host="h1", generation=4,
                                      provisioning_status="PENDING_DELETE")
    lb = LB.rsplit(".", 1)[1]
    await agent._report_results({lb}, {})  # in flight: it still served the load balancer
    assert agent.reports == []
    await agent._report_results(set(), {})  # the next one, without it
    assert agent.reports == [(LB, 4, "DELETED", "")]
    for driver in agent.drivers.values():
        driver.close()


def test_a_reason_in_haproxys_own_words_is_one_line_the_report_contract_takes() -> None:
    import msgspec

    from splice.agents.runtime import one_line
    from splice.events.wire import Description

    words = "haproxy failed to start: [NOTICE] x\n[ALERT]\t(1) : socket path too long\r\n"
    assert one_line(words) == "haproxy failed to start: [NOTICE] x [ALERT] (1) : socket path too long"
    assert msgspec.convert(one_line(words), Description)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(words, Description)  # what the agent used to send, and was refused
