"""The CLI's read verbs and names: `<kind> list|show`, `loadbalancer status`, names where ids
are, errors that name the option. Against a real nats-server, `splice serve` and
`splice projector` (no agent: load balancers stay PENDING_CREATE)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from splice.natsserver import NatsServer
from tests.helpers import SPLICE
from tests.helpers import splice_json as ok
from tests.helpers import splice_run as run

TENANT = "clires"
POOLS = json.dumps([{
    "name": "web", "protocol": "HTTP",
    "members": [{"address": "10.66.0.11", "protocol_port": 8080}],
    "healthmonitor": {"type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 3},
}])
LISTENERS = json.dumps([{"name": "http", "protocol": "HTTP", "protocol_port": 80,
                         "default_pool": "web"}])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("clires")
    server = NatsServer(store_dir=base / "nats")
    server.start()
    env = dict(os.environ, SPLICE_NATS_URL=server.url, SPLICE_STATE_DIR=str(base / "st"),
               SPLICE_ACTOR="cli-test", SPLICE_LOG_LEVEL="WARNING", SPLICE_TENANT=TENANT,
               COLUMNS="80")
    procs = [subprocess.Popen([SPLICE, part], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for part in ("serve", "projector")]
    try:
        deadline = time.monotonic() + 30
        while run("servicetype", "create", "clires-all", "-p", "loadbalancer=haproxy",
                  "-p", "firewall=nftables", "--default", env=env).returncode != 0:
            assert time.monotonic() < deadline, "the command service did not answer"
            time.sleep(0.2)
        yield env
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        server.stop()




def listed(env: dict[str, str], kind: str, ident: str, *args: str) -> list[dict[str, Any]]:
    """`<kind> list -o json` once the projector has the resource `ident` (polls)."""
    deadline = time.monotonic() + 20
    while True:
        res = run(kind, "list", "-o", "json", *args, env=env)
        assert res.returncode == 0, res.stderr
        items: list[dict[str, Any]] = json.loads(res.stdout)
        if any(ident in (i.get("id"), i.get("pool_id")) for i in items):
            return items
        assert time.monotonic() < deadline, (kind, items)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def made(env: dict[str, str]) -> dict[str, str]:
    """One of each kind, made by commands that name their parents by name."""
    ids = {"network": ok(env, "network", "create", "--name", "front", "--cidr", "10.66.0.0/24")["id"]}
    listed(env, "network", ids["network"])
    ids["port"] = ok(env, "port", "create", "--network-id", "front", "--ip-address", "10.66.0.7",
                     "--name", "vm1")["id"]
    ids["router"] = ok(env, "router", "create", "--name", "edge",
                       "--service-type-id", "clires-all")["id"]
    listed(env, "router", ids["router"])
    ok(env, "router", "add-interface", "edge", "--network-id", "front")
    ids["firewall"] = ok(env, "firewall", "create", "--name", "fw", "--router-id", "edge",
                         "--rules", '[{"action": "allow", "protocol": "tcp"}]')["id"]
    ids["loadbalancer"] = ok(env, "loadbalancer", "create", "--name", "lb1", "--vip-network-id",
                             "front", "--pools", POOLS, "--listeners", LISTENERS)["id"]
    return ids


def test_list_and_show_every_kind_by_id_or_name_as_tables_json_yaml_and_values(
    env: dict[str, str], made: dict[str, str]
) -> None:
    for kind in ("network", "port", "router", "firewall", "loadbalancer"):
        items = listed(env, kind, made[kind])
        name = next(i["name"] for i in items if i["id"] == made[kind])
        assert ok(env, kind, "show", name)["id"] == made[kind]
        assert ok(env, kind, "show", made[kind])["name"] == name
        table = run(kind, "list", env=env)
        assert table.returncode == 0 and made[kind][:8] in table.stdout
        assert max(len(line) for line in table.stdout.splitlines()) <= 80
        shown = run(kind, "show", name, env=env)
        assert shown.returncode == 0 and max(map(len, shown.stdout.splitlines())) <= 80
        assert "{" not in shown.stdout  # no JSON trees in cells
        parsed = yaml.safe_load(run(kind, "show", name, "-o", "yaml", env=env).stdout)
        assert parsed["id"] == made[kind]
    lb = made["loadbalancer"]
    pools = json.loads(run("pool", "list", "--loadbalancer", "lb1", "-o", "json", env=env).stdout)
    assert [p["name"] for p in pools] == ["web"] and pools[0]["loadbalancer_id"] == lb
    listeners = json.loads(run("listener", "list", "-o", "json", env=env).stdout)
    assert [li["name"] for li in listeners if li["loadbalancer_id"] == lb] == ["http"]
    members = run("member", "list", "--pool", "web", "--loadbalancer", "lb1", "-o", "value",
                  "-c", "address", "-c", "protocol_port", env=env)
    assert members.stdout.split() == ["10.66.0.11", "8080"]
    monitor = ok(env, "healthmonitor", "show", "web", "--loadbalancer", "lb1")
    assert monitor["type"] == "HTTP" and monitor["pool_id"] == pools[0]["id"]
    assert run("network", "show", "front", "-o", "value", "-c", "cidr", env=env).stdout == \
        "10.66.0.0/24\n"
    assert run("network", "list", "-o", "xml", env=env).returncode == 2


def test_loadbalancer_status_shows_the_tree_with_both_statuses(
    env: dict[str, str], made: dict[str, str]
) -> None:
    listed(env, "loadbalancer", made["loadbalancer"])
    tree = ok(env, "loadbalancer", "status", "lb1")["loadbalancer"]
    assert tree["id"] == made["loadbalancer"]
    listener = tree["listeners"][0]
    pool = listener["pools"][0]
    assert (listener["name"], pool["name"]) == ("http", "web")
    assert pool["members"][0]["address"] == "10.66.0.11"
    shown = run("loadbalancer", "status", "lb1", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("loadbalancer lb1") and "PENDING_CREATE / OFFLINE" in lines[0]
    order = ["listener http", "pool web", "healthmonitor HTTP", "member 10.66.0.11:8080"]
    at = [next(i for i, line in enumerate(lines) if part in line) for part in order]
    assert at == sorted(at) and all(len(line) <= 80 for line in lines)


def test_names_are_resolved_in_the_tenant_and_an_unknown_or_ambiguous_one_names_the_option(
    env: dict[str, str], made: dict[str, str]
) -> None:
    for _ in range(2):
        ok(env, "network", "create", "--name", "twin", "--cidr", "10.67.0.0/24")
    twins = [n["id"] for n in listed(env, "network", made["network"]) if n["name"] == "twin"]
    deadline = time.monotonic() + 20
    while len(twins) < 2 and time.monotonic() < deadline:
        twins = [n["id"] for n in json.loads(run("network", "list", "-o", "json", env=env).stdout)
                 if n["name"] == "twin"]
    amb = run("port", "create", "--network-id", "twin", "--ip-address", "10.67.0.9", env=env)
    assert amb.returncode == 2
    assert "--network-id" in amb.stderr and "ambiguous name, 2 matches" in amb.stderr
    assert all(t in amb.stderr.replace("\n", "").replace("│", "").replace(" ", "")
               for t in twins)
    missing = run("loadbalancer", "create", "--name", "x", "--vip-network-id", "nowhere", env=env)
    assert missing.returncode == 2 and "--vip-network-id" in missing.stderr
    assert "no network named 'nowhere'" in missing.stderr
    other = run("network", "show", "front", "--tenant", "someone-else", env=env)
    assert other.returncode == 2  # another tenant's names do not resolve
    gone = ok(env, "network", "delete", twins[0])
    assert gone["id"] == twins[0]
    deadline = time.monotonic() + 20
    while run("network", "show", "twin", "-o", "json", env=env).returncode != 0:
        assert time.monotonic() < deadline  # one twin left: the name is no longer ambiguous
        time.sleep(0.1)
    assert ok(env, "network", "delete", "twin")["id"] == twins[1]


def test_refusals_name_the_option_list_the_allowed_values_and_explain_patterns(
    env: dict[str, str], made: dict[str, str]
) -> None:
    taken = run("loadbalancer", "create", "--name", "lb2", "--vip-network-id", made["network"],
                "--vip-address", "10.66.0.7", env=env)
    assert taken.returncode == 1
    assert "address_in_use" in taken.stdout and "(--vip-address)" in taken.stdout
    assert "$.ip_address" not in taken.stdout
    enum = run("loadbalancer", "create", "--name", "lb2", "--vip-network-id", made["network"],
               "--pools", '[{"name": "x", "protocol": "HTTPX"}]', env=env)
    assert enum.returncode == 1
    assert "allowed: HTTP, HTTPS, TCP" in enum.stdout and "--pools" in enum.stdout
    cidr = run("network", "create", "--name", "bad", "--cidr", "10.0.0.0/33", env=env)
    assert cidr.returncode == 1 and "regex" not in cidr.stdout
    assert "CIDR" in cidr.stdout and "(--cidr)" in cidr.stdout
    choice = run("firewall", "create", "--name", "f2", "--router-id", "edge",
                 "--default-action", "maybe", env=env)
    assert choice.returncode == 2 and "'allow', 'deny'" in choice.stderr
    required = run("network", "create", "--name", "n", env=env)
    assert required.returncode == 2 and "--cidr" in required.stderr
    assert "[required]" in run("network", "create", "--help", env=env).stdout
    raw = run("network", "create", "--name", "bad", "--cidr", "10.0.0.0/33", "-o", "json",
              env=env)
    assert json.loads(raw.stdout)["error"]["field"] == "$.cidr"  # the wire reply, unchanged
