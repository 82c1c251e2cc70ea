"""The README's "A load balancer by hand", run as it is written against a real `splice up`
(embedded nats-server, command service, projector, local agent with haproxy): `loadbalancer
create … --wait` ends ACTIVE on the agent's report, `list`, `show` and `status` print what the
README shows (ids, times, sequence numbers and the host's name aside), the VIP answers, and the
clean-up block's `delete --wait` returns once the agent removed it, leaving nothing behind.

Before the walk-through the test makes what `./dev up`'s demo makes first: `gold` (haproxy), the
default service type.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from splice.agents import netns as agent_netns
from tests.dataplane.test_readme_routed import ROOT, Shell, spl_objects
from tests.dataplane.test_readme_routed import splice_up as _splice_up

HEADING = "### A load balancer by hand"
MACHINES = ("acme-m1", "acme-cl")
splice_up = _splice_up

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z")


def section() -> str:
    text = (ROOT / "README.md").read_text()
    rest = text[text.index(HEADING) + len(HEADING):]
    return rest[:rest.index("\n### ")]


def blocks() -> tuple[str, str, str]:
    """The walk-through, what it printed (as the README shows it), and the clean-up."""
    sh = re.findall(r"```sh\n(.*?)```", section(), re.S)
    shown = re.findall(r"```console\n(.*?)```", section(), re.S)
    assert len(sh) == 2 and len(shown) == 1, "the README's section lost its blocks"
    return sh[0], shown[0], sh[1]


def normal(lines: list[str], host: str) -> list[str]:
    """Lines as compared: ids, times, versions, sequence numbers, durations, the host's name and
    operating statuses (the agent reports them apart from ACTIVE, a moment later) masked, runs of blanks and of box lines collapsed (a masked value changes a column's
    padding); the README's `$ command` lines and the `--wait` progress lines (one or none,
    as fast as the agent was) left out."""
    kept = []
    for line in lines:
        if line.startswith("$ ") or re.match(r"^loadbalancer lb: ", line):
            continue
        line = TIME.sub("TIME", UUID.sub("ID", line))
        line = re.sub(r"\b(version|seq)=[0-9]+", r"\1=N", line)
        line = re.sub(r"\([0-9.]+ s\)", "(N s)", line)
        line = re.sub(rf"(?<![A-Za-z0-9]){re.escape(host)}(?![A-Za-z0-9])", "HOST", line)
        line = re.sub(r"│ (version|generation|converged) +│ [0-9]+ ", r"│ \1 │ N ", line)
        line = re.sub(r"\b(ONLINE|OFFLINE)\b", "OPERATING", line)
        line = re.sub(r"[━─]+", "─", re.sub(r" +", " ", line)).rstrip()
        if line:
            kept.append(line)
    return kept


def sweep() -> None:
    for m in MACHINES:
        agent_netns.kill_namespace_processes(m)
        agent_netns.delete_namespace(m)
        agent_netns.delete_link(m)
    subprocess.run(["rm", "-rf", "/tmp/acme-m1", "/tmp/acme-m1.log"], check=False)


@pytest.fixture
def up(splice_up: dict[str, str]) -> Iterator[dict[str, str]]:
    env = dict(splice_up, COLUMNS="100")
    made = subprocess.run(["splice", "servicetype", "create", "gold", "-p", "loadbalancer=haproxy",
                           "--default"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    try:
        yield env
    finally:
        sweep()


def test_the_readme_load_balancer_by_hand_waits_lists_shows_and_cleans_up(
    up: dict[str, str]
) -> None:
    walk, shown, clean = blocks()
    before = spl_objects()
    shell = Shell(walk, clean, up)
    try:
        lines = shell.until("WALKED")[:-1]
        assert lines[-1] == "hello from acme-m1"  # through the VIP, from the client
        assert "ACTIVE: loadbalancer lb" in "\n".join(lines)
        host = socket.gethostname().split(".")[0]
        assert normal(lines, host) == normal(shown.splitlines(), "vm")
        shell.go_on()
        cleaned = shell.until("CLEANED")
        assert any(x.startswith("DELETED: loadbalancer lb") for x in cleaned)
        assert shell.proc.wait(30) == 0
    finally:
        shell.kill()
    # the agent removes the network's bridge, and the kernel a deleted namespace's veth peers,
    # a moment after the commands returned
    deadline = time.monotonic() + 20
    while left := spl_objects() - before:
        assert time.monotonic() < deadline, left
        time.sleep(0.1)
