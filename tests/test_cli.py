"""`splice up`, the CLI finding it without flags, `splice events`, `splice schema`, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SPLICE = str(Path(sys.executable).parent / "splice")


def run(
    args: list[str], env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPLICE, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def splice_up() -> Iterator[tuple[subprocess.Popen[str], dict[str, str], Path]]:
    # a short path: haproxy's sockets live under the state directory (at most 97 bytes)
    state = Path(tempfile.mkdtemp(prefix="splcli-", dir="/tmp")) / "state"
    env = dict(os.environ, SPLICE_STATE_DIR=str(state), SPLICE_ACTOR="cli-test")
    env.pop("SPLICE_NATS_URL", None)
    proc = subprocess.Popen(
        [SPLICE, "up", "--demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state_file = state / "splice-up.json"
    deadline = time.monotonic() + 30
    try:
        while not state_file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "splice up did not start"
            time.sleep(0.05)
        yield proc, env, state_file
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)  # the demo deletes its load balancer on the way out
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(state.parent, ignore_errors=True)


def test_splice_up_serves_the_cli_without_flags_and_stops_cleanly_on_ctrl_c(
    splice_up: tuple[subprocess.Popen[str], dict[str, str], Path],
) -> None:
    proc, env, state_file = splice_up
    url = json.loads(state_file.read_text())["nats_url"]
    port = int(url.rsplit(":", 1)[1])

    created = run(
        [
            "servicetype",
            "create",
            "cli-gold",
            "-p",
            "loadbalancer=haproxy",
            "--description",
            "from the CLI",
            "-o",
            "json",
        ],
        env,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    reply = json.loads(created.stdout)
    assert reply["ok"] is True

    bad = run(
        ["servicetype", "create", "bad name", "-p", "loadbalancer=haproxy", "-o", "json"], env
    )
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"]["field"] == "$.name"

    deadline = time.monotonic() + 20
    while True:  # the demo's commands run concurrently with ours; wait for ours in the log
        listed = run(["events", "-t", "_admin", "-o", "json"], env)  # the operator's own
        assert listed.returncode == 0, listed.stderr
        events = [json.loads(line) for line in listed.stdout.splitlines()]
        mine = [e for e in events if e["aggregate_id"] == reply["id"]]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mine[0]["type"] == "ServiceTypeCreated"
    assert mine[0]["payload"]["actor"] == "cli-test"
    assert mine[0]["payload"]["description"] == "from the CLI"

    later = run(["events", "--all-tenants", "-o", "json", "--from-seq", str(reply["seq"])], env)
    assert json.loads(later.stdout.splitlines()[0])["seq"] == reply["seq"]

    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert "Splice is up" in output and url in output
    assert "ServiceTypeCreated" in output  # the demo printed the log
    assert not state_file.exists()
    with socket.socket() as s:  # the embedded server is gone: its port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_cli_without_a_running_splice_says_how_to_start_one(tmp_path: Path) -> None:
    env = dict(os.environ, SPLICE_STATE_DIR=str(tmp_path / "none"))
    env.pop("SPLICE_NATS_URL", None)
    res = run(["servicetype", "delete", "00000000-0000-0000-0000-000000000001"], env)
    assert res.returncode == 2
    assert "splice up" in res.stderr


def test_schema_lists_every_command_reply_and_event(tmp_path: Path) -> None:
    from splice.events.contracts import COMMANDS, EVENT_TYPES, scope_of

    out = tmp_path / "schema.json"
    res = run(["schema", "--out", str(out)], dict(os.environ))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    tenant = {"admin": "_admin", "host": "_host", "tenant": "<tenant>"}
    commands = doc["$defs"]["commands"]["$defs"]
    assert set(commands) == {f"{a}.{v}" for a, v in COMMANDS}
    for a, v in COMMANDS:
        assert f"splice.cmd.{tenant[scope_of(a, v)]}.{a}.{v}" in commands[f"{a}.{v}"]["description"]
    assert set(doc["$defs"]["events"]["$defs"]) == set(EVENT_TYPES)
    assert set(doc["$defs"]["replies"]["$defs"]) == {"Ok", "Failed"}
    create = doc["$defs"]["CreateServiceType"]
    assert "name" in create["required"] and "providers" in create["required"]
    assert create["properties"]["name"]["maxLength"] == 64


def test_a_plain_nats_client_script_gets_the_documented_reply_and_finds_the_event(
    splice_up: tuple[subprocess.Popen[str], dict[str, str], Path],
) -> None:
    _, env, state_file = splice_up
    url = json.loads(state_file.read_text())["nats_url"]
    script = Path(__file__).parent.parent / "examples" / "plain_client.py"
    admin = state_file.parent / "credentials" / "admin-admin.json"
    res = subprocess.run(
        [sys.executable, str(script), url, str(admin)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert res.returncode == 0, res.stderr
    lines = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in res.stdout.splitlines()
    }
    reply = json.loads(lines["reply"])
    assert reply["ok"] is True and reply["version"] >= 1 and reply["seq"] >= 1
    assert lines["newest"].startswith(f"splice.evt._admin.servicetype.{reply['id']}.")
    subject, topic, payload = lines["event"].split(" ", 2)
    assert subject.startswith(f"splice.evt._admin.servicetype.{reply['id']}.")
    assert topic == "ServiceTypeCreated"
    assert json.loads(payload)["actor"] == "alice"
    error = json.loads(lines["error"])
    assert error["ok"] is False and error["error"]["code"] == "invalid"
    assert error["error"]["field"] == "$.name"


def test_asyncapi_document_covers_every_command_and_event(tmp_path: Path) -> None:
    from splice.events.contracts import COMMANDS, EVENT_TYPES

    out = tmp_path / "asyncapi.json"
    res = run(["asyncapi", "--out", str(out)], dict(os.environ))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["asyncapi"].startswith("3.")
    for agg, verb in COMMANDS:
        assert f"send_{agg}_{verb}" in doc["operations"]
        assert doc["channels"][f"cmd_{agg}_{verb}"]["address"].endswith(f".{agg}.{verb}")
    assert set(EVENT_TYPES) <= set(doc["components"]["messages"])
    assert set(EVENT_TYPES) <= set(doc["components"]["schemas"])


def test_generated_cli_verbs_send_every_family_of_commands(
    splice_up: tuple[subprocess.Popen[str], dict[str, str], Path],
) -> None:
    _, env, _ = splice_up
    env = dict(env, SPLICE_TENANT="clitest")

    def ok(*args: str) -> dict[str, str]:
        res = run([*args, "-o", "json"], env)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return dict(json.loads(res.stdout))

    net = ok("network", "create", "--name", "n1", "--cidr", "10.88.0.0/24")
    port = ok("port", "create", "--network-id", net["id"], "--ip-address", "10.88.0.7")
    st = ok("servicetype", "create", "clitest-full", "-p", "loadbalancer=haproxy", "-p",
            "firewall=nftables")
    router = ok("router", "create", "--name", "r1", "--service-type-id", st["id"])
    ok("router", "add-interface", router["id"], "--network-id", net["id"])
    lb = ok("loadbalancer", "create", "--name", "lb1", "--vip-network-id", net["id"],
            "--pools", '[{"name": "web", "protocol": "HTTP"}]',
            "--listeners", '[{"name": "http", "protocol": "HTTP", "protocol_port": 80, "default_pool": "web"}]')
    pool = ok("pool", "create", "--loadbalancer-id", lb["id"], "--pool", '{"name": "tcp", "protocol": "TCP"}')
    ok("member", "create", "--loadbalancer-id", lb["id"], "--pool-id", pool["id"],
       "--member", '{"address": "10.88.0.20", "protocol_port": 9000}')
    fw = ok("firewall", "create", "--name", "fw", "--router-id", router["id"],
            "--rules", '[{"action": "allow", "protocol": "tcp", "destination_port": "80"}]')
    ok("firewall", "insert-rule", fw["id"], "--rule", '{"action": "deny"}')
    chain = ok("chain", "create", "--name", "c1", "--classifier", '{"protocol": "tcp"}', "--router-id", router["id"],
               "--hops", json.dumps([{"service_id": lb["id"], "kind": "loadbalancer", "insertion": "l3"}]))
    ok("chain", "update", chain["id"], "--priority", "3")
    bad = run(["port", "create", "--network-id", net["id"], "--ip-address", "10.88.0.7", "-o", "json"], env)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == "address_in_use"
    assert port["id"]


def _stop_with_sigint(proc: subprocess.Popen[str], within: float = 10) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"still running {within}s after SIGINT:\n{output}")
    return output


def test_standalone_projector_answers_queries_on_a_command_it_saw_and_stops_on_sigint(
    fresh_nats, tmp_path: Path
) -> None:
    env = dict(os.environ, SPLICE_NATS_URL=fresh_nats.url, SPLICE_STATE_DIR=str(tmp_path / "st"),
               SPLICE_ACTOR="cli-test", SPLICE_LOG_LEVEL="WARNING")
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([SPLICE, *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        return proc

    try:
        service = start("serve")
        projector = start("projector")  # --db: the state dir's readmodels.sqlite
        created: subprocess.CompletedProcess[str] | None = None
        deadline = time.monotonic() + 30
        while created is None or created.returncode != 0:  # until the service answers
            assert service.poll() is None and time.monotonic() < deadline, created
            created = run(["servicetype", "create", "proj-gold", "-p", "loadbalancer=haproxy",
                           "-o", "json"], env)
        made = json.loads(created.stdout)["id"]
        listed: list[dict[str, object]] = []
        while not any(item["id"] == made for item in listed):  # until the projector has it
            assert projector.poll() is None and time.monotonic() < deadline, listed
            res = run(["servicetype", "list", "-o", "json"], env)
            listed = json.loads(res.stdout) if res.returncode == 0 else []
        assert [item["name"] for item in listed if item["id"] == made] == ["proj-gold"]
        assert (tmp_path / "st" / "readmodels.sqlite").exists()

        output = _stop_with_sigint(projector)
        assert projector.returncode == 0, output
        assert "queries on splice.qry" in output
        gone = run(["servicetype", "list", "-o", "json"], env)
        assert gone.returncode == 1 and "unavailable" in gone.stderr  # nobody answers queries
        assert _stop_with_sigint(service) is not None and service.returncode == 0
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def test_root_stops_parts_in_reverse_order_and_cancels_one_past_its_deadline() -> None:
    import asyncio

    from splice import root

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stopped: list[str] = []

    async def polite(stop: asyncio.Event) -> None:
        await stop.wait()
        stopped.append("polite")

    async def stubborn(_stop: asyncio.Event) -> None:
        try:
            await asyncio.Event().wait()  # ignores its stop event
        finally:
            stopped.append("stubborn cancelled")

    try:
        began = time.monotonic()
        async with root.Root() as r:
            r.stack.callback(stopped.append, "first in, last out")
            r.start_parts([polite])
            r.start_parts([stubborn], deadline=0.2)
            r.stop.set()  # as SIGINT would
            await r.until_stopped()
        assert stopped == ["stubborn cancelled", "polite", "first in, last out"]
        assert time.monotonic() - began < 2
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


async def test_root_of_a_single_part_process_ends_with_the_error_of_a_part_that_fails() -> None:
    import asyncio

    from splice import root

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    async def failing(_stop: asyncio.Event) -> None:
        raise RuntimeError("no NATS")

    try:
        with pytest.raises(RuntimeError, match="no NATS"):
            async with root.Root() as r:
                r.start_parts([failing])
                await asyncio.wait_for(r.until_stopped(or_a_part_ends=True), 5)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
