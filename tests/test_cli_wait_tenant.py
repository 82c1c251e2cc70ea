"""`--wait` with a tenant's credentials against a real `splice up` (the bus's accounts and
permissions): the tenant may read only its own tenant's events (its consumer filter is pinned),
so the wait follows those and picks its load balancer's out; it still says why the load
balancer waits, and times out with that reason. The provider `f5` is one no host offers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SPLICE = str(Path(sys.executable).parent / "splice")


@pytest.fixture
def state() -> Iterator[Path]:
    """A `splice up` without the demo; its state directory."""
    state = Path(tempfile.mkdtemp(prefix="spw-", dir="/tmp"))  # short: haproxy socket paths
    env = {**os.environ, "SPLICE_STATE_DIR": str(state)}
    for key in ("SPLICE_CREDS", "SPLICE_NATS_URL", "SPLICE_TENANT"):
        env.pop(key, None)
    proc = subprocess.Popen([SPLICE, "up", "--port", "0"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (state / "splice-up.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "splice up did not start"
            time.sleep(0.05)
        yield state
    finally:
        proc.terminate()
        proc.wait(15)
        subprocess.run(["rm", "-rf", str(state)], check=False)


def cli(state: Path, *args: str, creds: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPLICE_STATE_DIR": str(state), "COLUMNS": "200"}
    for key in ("SPLICE_CREDS", "SPLICE_NATS_URL", "SPLICE_TENANT"):
        env.pop(key, None)
    if creds is not None:
        env["SPLICE_CREDS"] = str(creds)
    return subprocess.run([SPLICE, *args], env=env, capture_output=True, text=True, timeout=90)


def test_a_tenants_wait_follows_its_own_events_and_times_out_with_the_reason(
    state: Path,
) -> None:
    made = cli(state, "servicetype", "create", "appliance", "-p", "loadbalancer=f5", "-o", "value")
    assert made.returncode == 0, made.stdout + made.stderr
    assert cli(state, "credentials", "issue", "tenant", "acme").returncode == 0
    acme = state / "credentials" / "tenant-acme.json"
    net = cli(state, "network", "create", "--name", "web", "--cidr", "10.34.0.0/24", "-o", "value",
              creds=acme)
    assert net.returncode == 0, net.stdout + net.stderr
    res = cli(state, "loadbalancer", "create", "--name", "lb", "--vip-network-id",
              net.stdout.strip(), "--service-type-id", made.stdout.strip(), "--wait", "--timeout", "4",
              "-o", "json", creds=acme)
    assert res.returncode == 4, (res.stdout, res.stderr)
    assert json.loads(res.stdout)["ok"] is True
    assert "loadbalancer lb: PENDING_CREATE / OFFLINE — waiting for a host that offers f5" in \
        res.stderr
    assert "timed out: loadbalancer lb: still PENDING_CREATE" in res.stderr
