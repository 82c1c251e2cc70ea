"""examples/node/client.mjs — a nats.js client written from the documents only — against a real
nats-server, a real `splice serve` and a real `splice projector` (processes of their own)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from helpers import event_messages

from splice.documents import asyncapi
from splice.events.documents import json_schema
from splice.natsserver import NatsServer

SPLICE = str(Path(sys.executable).parent / "splice")
NODE_DIR = Path(__file__).parent.parent / "examples" / "node"


async def _answers(url: str, subject: str) -> bool:
    """Whether something answers a request on `subject` (any reply will do)."""
    try:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
    except Exception:
        return False
    try:
        await nc.request(subject, b"{}", timeout=1)
        return True
    except Exception:
        return False
    finally:
        await nc.close()


def _wait_until_answering(url: str, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    waiting = {
        "splice serve": "splice.cmd._admin.servicetype.delete",  # refused, but answered
        "splice projector": "splice.qry._admin.servicetypes",
    }
    while waiting:
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        for name, subject in list(waiting.items()):
            if asyncio.run(_answers(url, subject)):
                del waiting[name]
        assert time.monotonic() < deadline, f"not answering: {sorted(waiting)}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def splice_stack(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    """nats-server, `splice serve` and `splice projector`; stopped afterwards, failed or not."""
    server = NatsServer(store_dir=tmp_path / "nats")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = dict(os.environ, SPLICE_STATE_DIR=str(tmp_path / "state"), SPLICE_MONITORS="off")
    env.pop("SPLICE_NATS_URL", None)
    try:
        server.start()
        for name, args in {
            "splice serve": ["serve", "--nats-url", server.url],
            "splice projector": [
                "projector", "--nats-url", server.url, "--db", str(tmp_path / "readmodels.sqlite")
            ],
        }.items():
            log = (tmp_path / f"{name.split()[1]}.log").open("wb")
            procs[name] = subprocess.Popen(
                [SPLICE, *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        _wait_until_answering(server.url, procs)
        yield server, tmp_path
    finally:
        for proc in procs.values():
            _stop(proc)
        server.stop()


def test_the_node_client_drives_splice_from_the_documents_alone(
    splice_stack: tuple[NatsServer, Path],
) -> None:
    server, tmp = splice_stack
    assert server.registry is not None
    node = shutil.which("node")
    assert node, "node is missing: ./dev setup installs Debian's nodejs"
    assert (NODE_DIR / "node_modules" / "nats").is_dir(), "Node packages missing: ./dev setup"
    schema, api = tmp / "schema.json", tmp / "asyncapi.json"
    schema.write_text(json.dumps(json_schema()))
    api.write_text(json.dumps(asyncapi()))
    creds = server.registry.path_of("admin", "admin")  # the operator's, as `splice up` keeps it
    res = subprocess.run(
        [node, str(NODE_DIR / "client.mjs"), server.public_url, str(schema), str(api),
         "nodeclient"],
        capture_output=True, text=True, timeout=60, cwd=NODE_DIR,
        env={**os.environ, "SPLICE_CREDS": str(creds)},
    )
    logs = "".join(p.read_text()[-3000:] for p in sorted(tmp.glob("*.log")))
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{logs}"
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True

    # what the client saw, seen in the stream: the repeat and the refused commands wrote nothing
    events = asyncio.run(event_messages(server.url))  # the services' own view of the stream
    by_command: dict[str, list[str]] = {}
    for ev in events:
        by_command.setdefault(ev["payload"]["command_id"], []).append(ev["subject"])
    weight = [c for c in by_command if c.startswith("weight-")]
    assert len(weight) == 1 and len(by_command[weight[0]]) == 1, by_command
    assert by_command[weight[0]][0].endswith(".MemberUpdated")
    assert not [c for c in by_command if c.startswith(("bad-", "typo-"))], by_command
    lb = summary["loadbalancer"]
    assert any(ev["subject"].startswith(f"splice.evt.nodeclient.loadbalancer.{lb}.") for ev in events)
