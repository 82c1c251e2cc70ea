"""`--wait` on the load balancer's commands: it follows the load balancer's events until ACTIVE,
ERROR, or gone, shows why it waits, and exits non-zero on ERROR (with the reason) and on
`--timeout`. Children's ids in the create's reply, printed by the CLI.

Against a real nats-server, `splice serve` and `splice projector`. The host here is a client
of the bus that registers as `h1` and reports as an agent does (`loadbalancer.report`): what
a host says, on the wire, is the input. (An agent converging a real haproxy under `--wait` is
tests/dataplane/test_readme_lb.py.) Hosts are not declared lost here (SPLICE_HOST_TIMEOUT):
h1 sends no heartbeats.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from splice.cli.wait import EXIT_ERROR, Progress
from splice.natsserver import NatsServer
from tests.helpers import SPLICE
from tests.helpers import splice_json as ok
from tests.helpers import splice_run as run

TENANT = "cliwait"
POOLS = json.dumps([{"name": "web", "protocol": "HTTP",
                     "members": [{"address": "10.67.0.11", "protocol_port": 8080}]}])
LISTENERS = json.dumps([{"name": "http", "protocol": "HTTP", "protocol_port": 80,
                         "default_pool": "web"}])
REASON = "waiting for a host that offers nftables-l4"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("cliwait")
    server = NatsServer(store_dir=base / "nats")
    server.start()
    env = dict(os.environ, SPLICE_NATS_URL=server.url, SPLICE_STATE_DIR=str(base / "st"),
               SPLICE_ACTOR="cli-test", SPLICE_LOG_LEVEL="WARNING", SPLICE_TENANT=TENANT,
               SPLICE_HOST_TIMEOUT="3600", COLUMNS="100")
    procs = [subprocess.Popen([SPLICE, part], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for part in ("serve", "projector")]
    try:
        deadline = time.monotonic() + 30
        while run("servicetype", "create", "w-l4", "-p", "loadbalancer=nftables-l4",
                  env=env).returncode != 0:
            assert time.monotonic() < deadline, "the command service did not answer"
            time.sleep(0.2)
        ok(env, "servicetype", "create", "w-haproxy", "-p", "loadbalancer=haproxy", "--default")
        ok(env, "host", "register", "--host", "h1", "--providers", '["haproxy"]')
        net = ok(env, "network", "create", "--name", "wnet", "--cidr", "10.67.0.0/24")["id"]
        until(lambda: run("network", "show", net, env=env).returncode == 0, "the network's row")
        yield env
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        server.stop()




def until(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def row(env: dict[str, str], name: str) -> dict[str, Any] | None:
    res = run("loadbalancer", "show", name, "-o", "json", env=env)
    return dict(json.loads(res.stdout)) if res.returncode == 0 else None


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([SPLICE, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def report(env: dict[str, str], lb: dict[str, Any], status: str, reason: str = "") -> None:
    """What an agent on h1 says of the load balancer's newest generation."""
    ok(env, "loadbalancer", "report", "--tenant", TENANT, "--loadbalancer-id", lb["id"],
       "--host", "h1", "--generation", str(lb["generation"]), "--status", status,
       *(["--reason", reason] if reason else []))


def placed(env: dict[str, str], name: str, status: str) -> dict[str, Any]:
    return dict(until(lambda: (r := row(env, name)) and r["host"] == "h1"
                      and r["provisioning_status"] == status and r, f"{name} {status} on h1"))


def test_create_wait_on_a_type_no_host_serves_times_out_with_the_reason(
    env: dict[str, str]
) -> None:
    started = time.monotonic()
    res = run("loadbalancer", "create", "--name", "nohost", "--vip-network-id", "wnet",
              "--service-type-id", "w-l4", "--wait", "--timeout", "3", env=env)
    assert res.returncode == 4, (res.stdout, res.stderr)
    assert 3 <= time.monotonic() - started < 30
    assert "ok id=" in res.stdout  # accepted: the wait is what timed out
    assert f"loadbalancer nohost: PENDING_CREATE / OFFLINE — {REASON}" in res.stderr
    assert "timed out" in res.stderr and "after 3 s" in res.stderr
    assert res.stderr.count(REASON) == 2  # once as progress (off a TTY: plain lines), once at the end


def test_create_wait_ends_active_when_the_host_reports_it_and_prints_the_children(
    env: dict[str, str]
) -> None:
    proc = start(env, "loadbalancer", "create", "--name", "good", "--vip-network-id", "wnet",
                 "--pools", POOLS, "--listeners", LISTENERS, "--wait")
    try:
        lb = placed(env, "good", "PENDING_CREATE")
        assert proc.poll() is None  # still waiting: nothing reported yet
        report(env, lb, "ACTIVE")
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, (out, err)
    assert "loadbalancer good: PENDING_CREATE / OFFLINE — on h1, converging" in err
    assert "ACTIVE: loadbalancer good" in err
    pool_id = row(env, "good")["status_tree"]["loadbalancer"]["pools"][0]["id"]  # type: ignore[index]
    assert "created" in out and pool_id in out  # the children, with their ids
    assert "listener http HTTP:80" in out and "member 10.67.0.11:8080" in out


def test_an_update_wait_exits_non_zero_with_the_reason_when_the_host_reports_error(
    env: dict[str, str]
) -> None:
    ok(env, "loadbalancer", "create", "--name", "bad", "--vip-network-id", "wnet")
    report(env, placed(env, "bad", "PENDING_CREATE"), "ACTIVE")
    placed(env, "bad", "ACTIVE")
    proc = start(env, "pool", "create", "--loadbalancer-id", "bad", "--pool",
                 '{"name": "p", "protocol": "TCP"}', "--wait", "-o", "json")
    try:
        lb = placed(env, "bad", "PENDING_UPDATE")
        report(env, lb, "ERROR", "haproxy -c refused the configuration")
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 1, (out, err)
    assert json.loads(out)["members"] == []  # stdout is the reply alone; progress is stderr's
    assert "ERROR: loadbalancer bad: haproxy -c refused the configuration" in err


def test_delete_wait_returns_once_the_host_removed_it(env: dict[str, str]) -> None:
    ok(env, "loadbalancer", "create", "--name", "gone", "--vip-network-id", "wnet")
    report(env, placed(env, "gone", "PENDING_CREATE"), "ACTIVE")
    placed(env, "gone", "ACTIVE")
    proc = start(env, "loadbalancer", "delete", "gone", "--wait")
    try:
        lb = placed(env, "gone", "PENDING_DELETE")
        assert proc.poll() is None  # PENDING_DELETE is not gone
        report(env, lb, "DELETED")
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, (out, err)
    assert "loadbalancer gone: PENDING_DELETE" in err and "DELETED: loadbalancer gone" in err
    assert run("loadbalancer", "show", "gone", env=env).returncode != 0  # by name: no live one


def test_only_commands_a_host_converges_have_wait(env: dict[str, str]) -> None:
    for args in (("loadbalancer", "create"), ("member", "delete"), ("l7rule", "create"),
                 ("healthmonitor", "set")):
        assert "--wait" in run(*args, "--help", env=env).stdout, args
    for args in (("router", "create"), ("firewall", "create"), ("loadbalancer", "report")):
        assert "--wait" not in run(*args, "--help", env=env).stdout, args


@pytest.mark.parametrize(("row", "deleting", "finished", "word", "line"), [
    ({"provisioning_status": "PENDING_CREATE", "operating_status": "OFFLINE",
      "status_reason": REASON}, False, False, None, f"PENDING_CREATE / OFFLINE — {REASON}"),
    ({"provisioning_status": "PENDING_UPDATE", "operating_status": "ONLINE", "host": "h1"},
     False, False, None, "PENDING_UPDATE / ONLINE — on h1, converging"),
    ({"provisioning_status": "ACTIVE", "operating_status": "ONLINE", "host": "h1"},
     False, True, None, "ACTIVE / ONLINE"),
    ({"provisioning_status": "ACTIVE", "operating_status": "ONLINE"}, True, False, None,
     "ACTIVE / ONLINE"),  # a delete waits for the end, not for ACTIVE
    ({"provisioning_status": "ERROR", "operating_status": "OFFLINE", "error": "boom"},
     False, True, "ERROR", "ERROR / OFFLINE"),
    ({"provisioning_status": "DELETED", "operating_status": "OFFLINE", "deleted": True},
     True, True, None, "DELETED / OFFLINE"),
    ({"provisioning_status": "DELETED", "operating_status": "OFFLINE", "deleted": True},
     False, True, "DELETED", "DELETED / OFFLINE"),  # gone while an update waited: not a success
])
def test_what_each_row_means_to_a_wait(row: dict[str, Any], deleting: bool, finished: bool,
                                       word: str | None, line: str) -> None:
    progress = Progress(row)
    done, failure = progress.outcome(deleting)
    assert (done, failure.word if failure else None, progress.line()) == (finished, word, line)
    if failure is not None:
        assert failure.code == EXIT_ERROR
    if word == "ERROR":
        assert str(failure) == "boom"
