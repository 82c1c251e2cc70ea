"""The overlay driver's I/O: observe our VXLAN devices and their forwarding entries, apply the
plan's steps, with ``ip -j -d link`` and ``bridge -j fdb`` (argv, never a shell) in the agent's
root namespace (the host's: `splice agent --netns` puts the whole agent there). "Exists" on
add and "does not exist" on delete count as done."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from splice.agents import netns

from ..nftables import apply as napply
from ..steps import Outcome, apply_each
from .plan import (
    FLOOD,
    VXLAN_PORT,
    Attach,
    CreateVxlan,
    DeleteFdb,
    DeleteVxlan,
    EnsureBridge,
    Observed,
    Op,
    SetFdb,
    Underlay,
    VxlanSeen,
)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return napply.run(None, list(argv), check=check)


def _json(*argv: str) -> list[dict[str, Any]]:
    proc = run(*argv, check=False)
    return list(json.loads(proc.stdout)) if proc.returncode == 0 and proc.stdout.strip() else []


def underlay_of(address: str) -> Underlay | None:
    """The interface of this namespace that holds `address` (None: none does)."""
    for link in _json("ip", "-j", "-4", "addr", "show"):
        if any(a.get("local") == address for a in link.get("addr_info", [])):
            return Underlay(address, str(link["ifname"]))
    return None


def observe(prefix: str) -> Observed:
    links = _json("ip", "-j", "-d", "link", "show")
    bridges = frozenset(str(link["ifname"]) for link in links
                        if link["ifname"].startswith(prefix)
                        and link.get("linkinfo", {}).get("info_kind") == "bridge")
    vxlans = {}
    for link in links:
        info = link.get("linkinfo", {})
        if not link["ifname"].startswith(prefix) or info.get("info_kind") != "vxlan":
            continue
        data = info.get("info_data", {})
        floods, macs = set(), {}
        for entry in _json("bridge", "-j", "fdb", "show", "dev", link["ifname"]):
            dst = entry.get("dst")
            if dst is None:  # entries with a destination are the device's own
                continue
            if entry.get("mac") == FLOOD:
                floods.add(str(dst))
            else:
                macs[str(entry["mac"])] = str(dst)
        vxlans[link["ifname"]] = VxlanSeen(
            int(data.get("id", 0)), str(data.get("local", "")),
            str(data.get("link", "")), int(data.get("port", 0)),
            bool(data.get("learning", True)), link.get("master"), "UP" in link.get("flags", []),
            frozenset(floods), macs)
    return Observed(bridges, vxlans)


def fence(prefix: str) -> None:
    for name, seen in observe(prefix).vxlans.items():
        if seen.up:
            run("ip", "link", "set", name, "down", check=False)


def _apply(op: Op) -> None:
    if isinstance(op, EnsureBridge):
        netns.ensure_bridge(op.name)
    elif isinstance(op, CreateVxlan):
        seg, under = op.segment, op.underlay
        run("ip", "link", "del", seg.vxlan, check=False)
        run("ip", "link", "add", seg.vxlan, "type", "vxlan", "id", str(seg.vni), "local",
            under.address, "dstport", str(VXLAN_PORT), "nolearning", "dev", under.dev)
        run("ip", "link", "set", seg.vxlan, "master", seg.bridge)
        run("ip", "link", "set", seg.vxlan, "up")
    elif isinstance(op, Attach):
        run("ip", "link", "set", op.vxlan, "master", op.bridge)
        run("ip", "link", "set", op.vxlan, "up")
    elif isinstance(op, SetFdb):
        verb = "append" if op.mac == FLOOD else "replace"
        run("bridge", "fdb", verb, op.mac, "dev", op.vxlan, "dst", op.remote, "self",
            "permanent")
    elif isinstance(op, DeleteFdb):
        run("bridge", "fdb", "del", op.mac, "dev", op.vxlan, "dst", op.remote, "self",
            check=False)
    elif isinstance(op, DeleteVxlan):
        run("ip", "link", "del", op.vxlan, check=False)
    else:
        raise TypeError(f"unknown step {op!r}")


def apply(ops: list[Op]) -> list[Outcome]:
    return apply_each(ops, _apply)
