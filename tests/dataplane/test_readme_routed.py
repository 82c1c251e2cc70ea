"""The README's walk-through of routers, firewalls, port forwards and both load-balancer
providers, run as it is written against a real `splice up` (embedded nats-server, command
service, projector, local agent), then checked from the machines it made, then removed with
the README's own clean-up block.

The walk-through's names are the README's: machines `acme-*`, networks 10.77.30-32.0/24 on
bridges of the agent's prefix `spl-`. Whatever happens, the test removes them and stops Splice.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from splice.agents import netns as agent_netns

pytestmark = pytest.mark.routed

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEADING = "### A router, a firewall, a port forward, and a load balancer of each provider"
MACHINES = ("acme-s1", "acme-s2", "acme-c1", "acme-x1")


def readme_blocks(heading: str = HEADING) -> tuple[str, str]:
    """The walk-through and its clean-up: the first two ```sh blocks under the heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) + len(heading):]
    section = section[:min(section.index("\n## "), section.find("\n### ") % len(section))]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the README's walk-through lost its blocks"
    return blocks[0], blocks[1]


def spl_objects() -> set[str]:
    names = {f"ns:{n}" for n in agent_netns.list_namespaces("spl")}
    names |= {f"ns:{n}" for n in agent_netns.list_namespaces("acme-")}
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(": ")[1].split("@")[0]
        if name.startswith(("spl-", "acme-")):
            names.add(f"link:{name}")
    return names


def sweep() -> None:
    """What the walk-through made, should a step fail before its clean-up ran."""
    for m in MACHINES:
        agent_netns.kill_namespace_processes(m)
        agent_netns.delete_namespace(m)
        agent_netns.delete_link(m)
        shutil.rmtree(f"/tmp/{m}", ignore_errors=True)
        Path(f"/tmp/{m}.log").unlink(missing_ok=True)


@pytest.fixture
def splice_up() -> Iterator[dict[str, str]]:
    """A `splice up` of its own (short state path: haproxy's sockets live under it)."""
    tmp = Path(tempfile.mkdtemp(prefix="splrd-", dir="/tmp"))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", SPLICE_STATE_DIR=str(tmp / "state"),
               SPLICE_LOG_LEVEL="WARNING", TMPDIR=str(tmp))
    for key in ("SPLICE_NATS_URL", "SPLICE_TENANT", "SPLICE_CREDS"):
        env.pop(key, None)
    log = open(tmp / "up.log", "w")
    proc = subprocess.Popen([str(BIN / "splice"), "up"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while "Serving commands" not in (tmp / "up.log").read_text():
            assert proc.poll() is None and time.monotonic() < end, (tmp / "up.log").read_text()
            time.sleep(0.1)
        yield env
    finally:
        sweep()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


class Shell:
    """One bash, as the README's reader has one shell: the walk-through runs, the shell waits
    while the test checks the world it built, then the clean-up runs in the same shell."""

    def __init__(self, walk: str, clean: str, env: dict[str, str]) -> None:
        script = f"{walk}\necho WALKED\nread -r _\n{clean}\necho CLEANED\n"
        self.proc = subprocess.Popen(["bash", "-eu", "-c", script], env=env, cwd="/tmp",
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []

    def until(self, marker: str) -> list[str]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == marker:
                return self.lines
        raise AssertionError(f"the shell ended (exit {self.proc.wait()}) before {marker}:\n"
                             + "\n".join(self.lines))

    def go_on(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def get(machine: str, url: str) -> str:
    return subprocess.run(["ip", "netns", "exec", machine, "curl", "-s", "--max-time", "2", url],
                          capture_output=True, text=True, check=False).stdout.strip()


def test_the_readme_walk_through_builds_serves_and_cleans_up(splice_up: dict[str, str]) -> None:
    walk, clean = readme_blocks()
    before = spl_objects()
    shell = Shell(walk, clean, splice_up)
    try:
        lines = shell.until("WALKED")
        assert "acme-x1" in lines  # out through the gateway
        assert any(x.startswith("10.77.30.2 - -") for x in lines), lines  # x1 saw the router
        assert "acme-s2" in lines  # the port forward
        # the world it built, checked from its machines
        assert get("acme-c1", "http://10.77.31.11:8080/") == "acme-s1"  # routed, allowed
        ping = subprocess.run(["ip", "netns", "exec", "acme-c1", "ping", "-c1", "-W1",
                               "10.77.31.11"], capture_output=True, check=False)
        assert ping.returncode != 0  # the firewall drops ICMP
        assert get("acme-x1", "http://10.77.30.2:8022/") == "acme-s2"  # the port forward
        for vip in ("10.77.32.100", "10.77.31.100"):  # haproxy in the router; nftables-l4
            answers = {get("acme-c1", f"http://{vip}/") for _ in range(6)}
            assert answers == {"acme-s1", "acme-s2"}, (vip, answers)
        shell.go_on()
        shell.until("CLEANED")
        assert shell.proc.wait(30) == 0
    finally:
        shell.kill()
    left = spl_objects() - before
    assert not left, left
