"""The README's chain of all four insertion types (``l3``, ``l2``, ``bump_in_the_wire``,
``tap``), run as it is written against a real `splice up`, its output checked for what each
hop saw, the chain's flow checked again from the client, then removed with the README's own
clean-up block. Machines ``acme-cc``, ``acme-cs`` and ``acme-mon``; networks
10.77.35-36.0/24 on bridges of the agent's prefix ``spl-``."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from splice.agents import netns as agent_netns
from tests.dataplane.test_readme_routed import Shell, get, readme_blocks, spl_objects
from tests.dataplane.test_readme_routed import splice_up as splice_up  # the fixture

pytestmark = pytest.mark.chains

HEADING = "### A chain of all four insertion types"
MACHINES = ("acme-cc", "acme-cs", "acme-mon")


@pytest.fixture
def swept() -> Iterator[None]:
    """The walk-through's machines, should a step fail before its clean-up ran."""
    try:
        yield
    finally:
        for m in MACHINES:
            agent_netns.kill_namespace_processes(m)
            agent_netns.delete_namespace(m)
            agent_netns.delete_link(m)


def after(lines: list[str], label: str) -> list[str]:
    """The lines a step printed after its label, until the next label."""
    i = lines.index(label)
    out = []
    for line in lines[i + 1:]:
        if re.match(r"^(l3 hop|l2 hop|bump|tap):", line):
            break
        out.append(line)
    return out


def test_the_readme_chain_crosses_every_hop_and_cleans_up(
        splice_up: dict[str, str], swept: None) -> None:
    walk, clean = readme_blocks(HEADING)
    before = spl_objects()
    shell = Shell(walk, clean, splice_up)
    try:
        lines = shell.until("WALKED")
        assert lines.count("acme-cs") >= 2, lines  # direct, then through the chain
        l3 = [x for x in after(lines, "l3 hop:") if "dport=8080" in x]
        assert l3 and all("ASSURED" in x for x in l3), lines  # both directions crossed it
        learned = after(lines, "l2 hop:")
        assert {x.split()[2] for x in learned if x.startswith("02:5c:")} == {"hop0", "hop1"}, lines
        assert any("dport=8080" in x for x in after(lines, "bump:")), lines
        copies = next(int(x.split()[1]) for x in lines if x.startswith("tap: "))
        assert copies >= 10, lines  # a TCP exchange, both ways, copied
        assert "ICMP: not classified, direct" in lines
        assert get("acme-cc", "http://10.77.36.11:8080/") == "acme-cs"
        shell.go_on()
        shell.until("CLEANED")
        assert shell.proc.wait(30) == 0
    finally:
        shell.kill()
    left = spl_objects() - before
    assert not left, left
