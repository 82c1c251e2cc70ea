"""`splice loadbalancer stats` where there are no counters to show: a load balancer no host
serves yet (no agent here: it stays PENDING_CREATE), and a name that is not there. Against a
real nats-server, `splice serve` and `splice projector` (test_cli_resources' world); the
counters themselves are shown in tests/dataplane/test_stats_e2e.py."""

from __future__ import annotations

from tests import test_cli_resources as world

env, made = world.env, world.made  # its module-scoped fixtures, one world for this module


def test_stats_of_a_load_balancer_no_host_serves_yet_say_why(
        env: dict[str, str], made: dict[str, str]) -> None:
    world.listed(env, "loadbalancer", made["loadbalancer"])
    res = world.run("loadbalancer", "stats", "lb1", env=env)
    assert res.returncode == 1, (res.stdout, res.stderr)
    said = " ".join(res.stderr.split())  # as wrapped to the terminal's width
    assert "not placed on a host yet" in said and made["loadbalancer"] in said
    res = world.run("loadbalancer", "stats", "nobody", "-o", "json", env=env)
    assert res.returncode == 2 and "no loadbalancer named 'nobody'" in res.stderr
    res = world.run("loadbalancer", "stats", "lb1", "-o", "xml", env=env)
    assert res.returncode == 2 and "'xml' is not one of" in res.stderr
