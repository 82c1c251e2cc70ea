"""What a `splice up` that could not clean up (SIGKILL, a power cut) left behind, removed by the
next start from the same state directory.

The state file says which `splice up` runs from a state directory; one whose pid is dead did not
stop cleanly. What it may have left is all named: the local agent's namespaces and links (its
prefix), the demo's namespaces and veths (its own prefix), and the processes in those
namespaces (haproxy, the demo's web servers). haproxy and nats-server processes started for that
state directory (their command lines name it) go too; the demo's files live under it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    return done.stdout


def namespaces(prefixes: Iterable[str]) -> list[str]:
    """Network namespaces whose names start with one of `prefixes`."""
    wanted = tuple(prefixes)
    return [line.split()[0] for line in _ip("netns", "list").splitlines()
            if line.split() and line.split()[0].startswith(wanted)]


def links(prefixes: Iterable[str]) -> list[str]:
    """Links of this namespace whose names start with one of `prefixes`."""
    wanted = tuple(prefixes)
    names = [line.split(": ")[1].split("@")[0] for line in _ip("-o", "link", "show").splitlines()
             if ": " in line]
    return [n for n in names if n.startswith(wanted)]


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def processes_of(state_dir: Path, programs: Iterable[str]) -> list[int]:
    """Live processes of `programs` (haproxy, nats-server) whose command line names
    `state_dir`: what a run from that state directory started."""
    wanted, mark, found = set(programs), str(state_dir), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            text = [a.decode(errors="replace") for a in argv if a]
            if text and Path(text[0]).name in wanted and any(mark in a for a in text[1:]):
                found.append(int(entry.name))
    return found


def sweep(state_dir: Path, ns_prefixes: Iterable[str], link_prefixes: Iterable[str]) -> list[str]:
    """Remove what a dead run left; returns what was removed (for the operator)."""
    removed: list[str] = []
    for pid in processes_of(state_dir, ("haproxy", "nats-server")):
        if _kill(pid):
            removed.append(f"process {pid}")
    for ns in namespaces(ns_prefixes):
        for inside in _ip("netns", "pids", ns).split():
            if inside.isdigit() and _kill(int(inside)):
                removed.append(f"process {inside} (in {ns})")
        _ip("netns", "del", ns)
        removed.append(f"namespace {ns}")
    for link in links(link_prefixes):  # what is left once the namespaces took their veths along
        _ip("link", "del", link)
        removed.append(f"link {link}")
    return removed
