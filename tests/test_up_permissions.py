"""Against a real `splice up`: a client without credentials can do nothing; the credentials
`splice up` writes (the operator's, the demo tenant's) and those `splice credentials` issues
work, each within its own reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from splice.auth import Credentials
from splice.events import subjects

pytestmark = pytest.mark.trust

SPLICE = str(Path(sys.executable).parent / "splice")


up_info: dict[str, dict[str, str]] = {}  # state dir -> splice up's state file


@pytest.fixture
def up() -> Iterator[tuple[Path, str]]:
    """A `splice up` without the demo; its state directory and its (bare) NATS URL."""
    state = Path(tempfile.mkdtemp(prefix="spu-", dir="/tmp"))  # short: haproxy socket paths
    env = {**os.environ, "SPLICE_STATE_DIR": str(state)}
    env.pop("SPLICE_CREDS", None)
    proc = subprocess.Popen([SPLICE, "up", "--port", "0"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        state_file = state / "splice-up.json"
        deadline = time.monotonic() + 30
        while not state_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "splice up did not start"
            time.sleep(0.05)
        info = json.loads(state_file.read_text())
        up_info[str(state)] = info
        yield state, info["nats_url"]
    finally:
        proc.terminate()
        proc.wait(15)
        subprocess.run(["rm", "-rf", str(state)], check=False)


def cli(state: Path, *args: str, creds: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPLICE_STATE_DIR": str(state)}
    env.pop("SPLICE_CREDS", None)
    if creds is not None:
        env["SPLICE_CREDS"] = str(creds)
    return subprocess.run([SPLICE, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_without_credentials_nothing_works(up: tuple[Path, str]) -> None:
    state, url = up
    assert "@" not in url  # the state file names no password
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
    # the stream is still there and whole, read with the services' own credentials
    svc = Credentials.load(state / "credentials" / "service-splice.json")
    nc = await nats.connect(svc.url(url))
    try:
        info = await nc.jetstream().stream_info(subjects.STREAM)
        assert info.config.name == subjects.STREAM
    finally:
        await nc.close()


def test_the_cli_finds_the_operators_credentials_and_issues_a_tenants(
    up: tuple[Path, str],
) -> None:
    state, _ = up
    made = cli(state, "servicetype", "create", "gold", "--provider", "loadbalancer=haproxy")
    assert made.returncode == 0, made.stdout + made.stderr
    demo = state / "credentials" / "tenant-demo.json"
    assert demo.exists() and oct(demo.stat().st_mode & 0o777) == "0o600"
    net = cli(state, "network", "create", "--name", "web", "--cidr", "10.30.0.0/24", creds=demo)
    assert net.returncode == 0, net.stdout + net.stderr
    issued = cli(state, "credentials", "issue", "tenant", "acme")
    assert issued.returncode == 0, issued.stdout + issued.stderr
    acme = state / "credentials" / "tenant-acme.json"
    mine = cli(state, "network", "create", "--name", "a", "--cidr", "10.31.0.0/24", creds=acme)
    assert mine.returncode == 0, mine.stdout + mine.stderr
    theirs = cli(state, "network", "create", "--name", "b", "--cidr", "10.32.0.0/24",
                 "--tenant", "demo", creds=acme)
    assert theirs.returncode == 1 and "forbidden" in theirs.stdout, theirs.stdout
    events = cli(state, "events", "-o", "json", creds=acme)
    assert events.returncode == 0, events.stderr
    seen = [json.loads(line)["subject"] for line in events.stdout.splitlines()]
    assert seen and all(s.startswith("splice.evt.acme.") for s in seen), seen
    not_theirs = cli(state, "events", "--all-tenants", creds=acme)
    assert not_theirs.returncode == 2 and "--all-tenants" in not_theirs.stderr, not_theirs.stderr
    # the operator reads every tenant's, when asked
    everything = cli(state, "events", "--all-tenants", "-o", "json")
    assert {".demo.", ".acme.", "._admin."} <= {
        t for line in everything.stdout.splitlines() for t in (".demo.", ".acme.", "._admin.")
        if t in json.loads(line)["subject"]
    }
    kept = state / "kept-acme.json"  # a copy of the file revoking removes
    kept.write_text(acme.read_text())
    revoked = cli(state, "credentials", "revoke", "tenant", "acme")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    gone = cli(state, "network", "create", "--name", "c", "--cidr", "10.33.0.0/24", creds=kept)
    assert gone.returncode == 3 and "Authorization Violation" in gone.stdout + gone.stderr


def test_splice_up_serves_its_metrics_with_command_latency_and_projector_lag(
    up: tuple[Path, str],
) -> None:
    state, _ = up
    url = up_info[str(state)]["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    made = cli(state, "servicetype", "create", "metal", "--provider", "loadbalancer=haproxy")
    assert made.returncode == 0, made.stderr
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        if 'splice_command_seconds_count{command="servicetype.create",outcome="ok"} 1.0' in text:
            break
        assert time.monotonic() < deadline, text[:2000]
        time.sleep(0.1)
    assert "splice_projector_lag " in text and "splice_events_appended_total" in text
