"""Applying the plan's steps inside a network namespace: nft, then conntrack.

Blocking (subprocesses): the agent runs these off its event loop (``asyncio.to_thread``).
Every call names its namespace; ``None`` means the caller's own.

A replacement is one transaction: the batch goes through ``nft -c -j -f -`` (checked against
the kernel, nothing changes), then ``nft -j -f -``; the table is then read back with
``nft -j list table`` and compared with the rendering (a chain that came out without its hook,
a rule that nft changed, are errors, not successes). Only after that are the open flows that
the new ruleset refuses cut from conntrack, each by its exact original tuple.

Conntrack is read with the ``conntrack -L`` tool (about 40 ms for 1000 entries) and entries
are deleted over one pyroute2 netlink socket inside the namespace (about 1.2 ms each; one
``conntrack -D`` process per entry took 19 ms each, and pyroute2's own dump 0.8 s per 1000).
The socket is made and used within `splice.agents.netns.in_netns`, which puts the calling
thread back in its own namespace before it returns.
"""

from __future__ import annotations

import errno
import json
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from splice.agents.netns import in_netns

from .conntrack import Flow, Guard, flows_to_cut, parse_entries
from .plan import (
    DeleteTable,
    ObservedTable,
    Op,
    ReplaceTable,
    ReportError,
    TableKey,
    observe_tables,
)
from .render import Ruleset, canonical, delete_batch, owned_prefixes

NFT_TIMEOUT_S = 30.0


class NftError(RuntimeError):
    """nft refused a batch, or the table read back is not what was loaded."""


def _in(namespace: str | None, argv: Sequence[str]) -> list[str]:
    return [*(["ip", "netns", "exec", namespace] if namespace else []), *argv]


def run(namespace: str | None, argv: Sequence[str], stdin: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(_in(namespace, argv), input=stdin, capture_output=True, text=True,
                          timeout=NFT_TIMEOUT_S, check=False)
    if check and proc.returncode != 0:
        words = " ".join((proc.stderr or proc.stdout).split())[:500]
        raise NftError(f"{argv[0]} failed ({proc.returncode}): {words}")
    return proc


# --------------------------------------------------------------------------- nft


def load(namespace: str | None, batch: dict[str, Any]) -> None:
    """Check, then commit, one JSON batch (a single transaction)."""
    text = json.dumps(batch)
    run(namespace, ["nft", "-c", "-j", "-f", "-"], text)
    run(namespace, ["nft", "-j", "-f", "-"], text)


def list_ruleset(namespace: str | None) -> dict[str, Any]:
    out = run(namespace, ["nft", "-j", "list", "ruleset"]).stdout
    return json.loads(out) if out.strip() else {"nftables": []}


def list_table(namespace: str | None, family: str, name: str) -> dict[str, Any] | None:
    proc = run(namespace, ["nft", "-j", "list", "table", family, name], check=False)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise NftError(f"nft list table {family} {name}: {' '.join(proc.stderr.split())[:500]}")
    return json.loads(proc.stdout)


def observe(namespace: str | None, prefix: str) -> dict[TableKey, ObservedTable]:
    """The tables of this driver in the namespace (names with its owned prefixes only)."""
    owned = owned_prefixes(prefix)
    return {k: t for k, t in observe_tables(list_ruleset(namespace)).items()
            if k[1].startswith(owned)}


def confirm(namespace: str | None, ruleset: Ruleset) -> None:
    """The kernel holds exactly ``ruleset``: read it back and compare."""
    listing = list_table(namespace, ruleset.family, ruleset.name)
    if listing is None:
        raise NftError(f"table {ruleset.family} {ruleset.name} is missing after loading it")
    held = canonical(listing["nftables"], ruleset.family, ruleset.name)
    if held != ruleset.canonical():
        raise NftError(f"table {ruleset.family} {ruleset.name} read back differs from the "
                       f"rendering: {json.dumps(held, sort_keys=True)[:400]}")


def replace(namespace: str | None, ruleset: Ruleset,
            stale: Iterable[tuple[str, str]] = ()) -> None:
    load(namespace, ruleset.batch(stale))
    confirm(namespace, ruleset)


def delete(namespace: str | None, family: str, name: str) -> None:
    """Delete a table; one that is already gone is done."""
    try:
        load(namespace, delete_batch(family, name))
    except NftError:
        if list_table(namespace, family, name) is not None:
            raise


# --------------------------------------------------------------------------- conntrack


def local_addresses(namespace: str | None) -> frozenset[str]:
    out = run(namespace, ["ip", "-j", "-4", "addr", "show"]).stdout
    return frozenset(a["local"] for link in json.loads(out or "[]")
                     for a in link.get("addr_info", []) if "local" in a)


def list_flows(namespace: str | None) -> list[Flow]:
    return parse_entries(run(namespace, ["conntrack", "-L", "-f", "ipv4"]).stdout)


@dataclass(frozen=True, slots=True)
class Cut:
    listed: int  # entries seen
    cut: int  # entries deleted
    seconds: float


def original_tuple(flow: Flow) -> NFCTAttrTuple:
    """The netlink tuple that selects exactly this entry."""
    if flow.icmp is not None:
        kind, code, ident = flow.icmp
        return NFCTAttrTuple(saddr=flow.src, daddr=flow.dst, proto=flow.number,
                             icmp_type=kind, icmp_code=code, icmp_id=ident)
    return NFCTAttrTuple(saddr=flow.src, daddr=flow.dst, proto=flow.number,
                         sport=flow.sport, dport=flow.dport)


def delete_flows(namespace: str | None, flows: Sequence[Flow]) -> None:
    """Delete these entries; one that is gone already (ended, or cut meanwhile) is done."""
    if not flows:
        return

    def work() -> None:  # all of it inside the namespace: pyroute2 may open its socket late
        ct = Conntrack()
        try:
            for flow in flows:
                try:
                    ct.entry("del", tuple_orig=original_tuple(flow))
                except NetlinkError as e:
                    if e.code != errno.ENOENT:
                        raise
        finally:
            ct.close()

    if namespace:
        in_netns(namespace, work)
    else:
        work()


def cut_flows(namespace: str | None, guard: Guard) -> Cut:
    """Delete the conntrack entries of the flows ``guard`` refuses."""
    start = time.monotonic()
    flows = list_flows(namespace)
    doomed = flows_to_cut(flows, guard, local_addresses(namespace))
    delete_flows(namespace, doomed)
    return Cut(len(flows), len(doomed), time.monotonic() - start)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class Outcome:
    op: Op
    ok: bool
    reason: str = ""
    cut: Cut | None = None


def apply_op(namespace: str | None, op: Op) -> Outcome:
    try:
        if isinstance(op, ReplaceTable):
            replace(namespace, op.ruleset, op.stale)
            cut = cut_flows(namespace, op.guard) if op.guard is not None else None
            return Outcome(op, True, cut=cut)
        if isinstance(op, DeleteTable):
            delete(namespace, op.family, op.name)
            return Outcome(op, True)
        if isinstance(op, ReportError):
            return Outcome(op, False, op.reason)
    except (NftError, NetlinkError, OSError, subprocess.SubprocessError, ValueError) as e:
        return Outcome(op, False, str(e))
    raise TypeError(f"unknown step {op!r}")


def apply(namespace: str | None, ops: Iterable[Op]) -> list[Outcome]:
    """Every step, in order; one failing step does not stop the others (the next resync
    plans again from what is there)."""
    return [apply_op(namespace, op) for op in ops]
