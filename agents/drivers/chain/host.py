"""The chain driver's I/O: observe the hop namespaces and the chain things in the router
namespaces, apply the plan's steps. ``ip -j`` for links, addresses, rules and routes (argv,
never a shell), /proc/sys through setns for sysctls, the nftables driver's apply for tables.
"ENOENT on delete" and "EEXIST on add" count as done."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from splice.agents import netns

from ..nftables import apply as napply
from ..nftables.plan import ObservedTable, observe_tables
from ..router.model import RouterLayout
from .model import HOP_IFNAME, ChainLayout, owns_mark, owns_table
from .plan import (
    AddRule,
    DeleteClassifier,
    DeleteHop,
    DeleteRule,
    EnsureHop,
    FlushTable,
    HopSeen,
    HopTables,
    Observed,
    Op,
    ReplaceClassifier,
    ReportError,
    RouterSeen,
    SetRoute,
)

HOP_SYSCTLS = (("net/ipv4/ip_forward", "1"), ("net/ipv4/conf/all/rp_filter", "0"),
               ("net/ipv4/conf/all/send_redirects", "0"),
               ("net/ipv4/conf/default/rp_filter", "0"),
               (f"net/ipv4/conf/{HOP_IFNAME}/rp_filter", "0"))
ROUTER_IF_SYSCTLS = (("rp_filter", "0"), ("send_redirects", "0"))


def ip(namespace: str | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    head = ["ip", *(["-n", namespace] if namespace else [])]
    return napply.run(None, [*head, *argv], check=check)


def _json(namespace: str, *argv: str) -> list[dict[str, Any]]:
    out = ip(namespace, "-j", *argv).stdout
    return list(json.loads(out)) if out.strip() else []


def _addr(namespace: str, ifname: str) -> str | None:
    """The interface's IPv4 "ip/plen" when it is up with exactly one, else None."""
    proc = ip(namespace, "-j", "-4", "addr", "show", "dev", ifname, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    (link,) = json.loads(proc.stdout)
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])]
    return addrs[0] if "UP" in link.get("flags", []) and len(addrs) == 1 else None


def _sysctl(namespace: str, path: str) -> str:
    def read() -> str:
        try:
            with open(f"/proc/sys/{path}") as f:
                return f.read().strip()
        except OSError:
            return ""
    return netns.in_netns(namespace, read)


def _set_sysctl(namespace: str, path: str, value: str) -> None:
    def write() -> None:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)
    netns.in_netns(namespace, write)


# --------------------------------------------------------------------------- observe


def observe_hop(namespace: str, prefix: str) -> HopSeen:
    via = None
    for r in _json(namespace, "-4", "route", "show", "default"):
        via = r.get("gateway")
    forwarding = all(_sysctl(namespace, p) == v for p, v in HOP_SYSCTLS)
    return HopSeen(_addr(namespace, HOP_IFNAME), via, forwarding,
                   napply.observe(namespace, prefix))


def observe_router(namespace: str, prefix: str) -> RouterSeen:
    veth_prefix = f"{prefix}c"
    veths = {link["ifname"]: _addr(namespace, link["ifname"])
             for link in _json(namespace, "link", "show")
             if link.get("ifname", "").startswith(veth_prefix)}
    rules = set()
    for r in _json(namespace, "rule", "show"):
        mark, table = r.get("fwmark"), r.get("table")
        if mark is None or not str(table).isdigit():
            continue
        m, t = int(str(mark), 0), int(str(table))
        if owns_mark(m) and owns_table(t):
            rules.add((m, t))
    routes: dict[int, tuple[str, str]] = {}
    for r in _json(namespace, "-4", "route", "show", "table", "all"):
        table = r.get("table")
        if str(table).isdigit() and owns_table(int(str(table))) and r.get("dst") == "default":
            routes[int(str(table))] = (str(r.get("gateway")), str(r.get("dev")))
    tables = observe_tables(napply.list_ruleset(namespace))
    name = f"{prefix}ch-"
    found = [t for k, t in tables.items() if k[0] == "ip" and k[1].startswith(name)]
    classifier: ObservedTable | None = found[0] if found else None
    return RouterSeen(veths, frozenset(rules), routes, classifier)


def observe(prefix: str) -> Observed:
    hops = {}
    for ns in netns.list_namespaces(ChainLayout(prefix).namespace_prefix):
        try:
            hops[ns] = observe_hop(ns, prefix)
        except (OSError, napply.NftError):
            continue  # deleted meanwhile
    routers = {}
    for ns in netns.list_namespaces(RouterLayout(prefix).namespace_prefix):
        try:
            routers[ns] = observe_router(ns, prefix)
        except (OSError, napply.NftError):
            continue
    return Observed(hops, routers)


# --------------------------------------------------------------------------- apply


def ensure_hop(op: EnsureHop) -> None:
    hop, router = op.hop, op.router_namespace
    netns.ensure_namespace(hop.namespace)
    if _addr(router, hop.router_if) is None or _addr(hop.namespace, HOP_IFNAME) is None:
        # one end missing or not as it must be: start over (deleting one end deletes both)
        ip(router, "link", "del", hop.router_if, check=False)
        ip(hop.namespace, "link", "del", HOP_IFNAME, check=False)
        ip(router, "link", "add", hop.router_if, "type", "veth", "peer", "name", HOP_IFNAME,
           "netns", hop.namespace)
    for key, value in ROUTER_IF_SYSCTLS:
        _set_sysctl(router, f"net/ipv4/conf/{hop.router_if}/{key}", value)
    for key, value in HOP_SYSCTLS:
        _set_sysctl(hop.namespace, key, value)
    for ns, ifname, address in ((router, hop.router_if, hop.router_address),
                                (hop.namespace, HOP_IFNAME, hop.hop_address)):
        ip(ns, "addr", "flush", "dev", ifname)
        ip(ns, "addr", "add", address, "dev", ifname)
        ip(ns, "link", "set", ifname, "up")
    ip(hop.namespace, "route", "replace", "default", "via", hop.router_address.split("/")[0],
       "dev", HOP_IFNAME)


@dataclass(frozen=True, slots=True)
class Outcome:
    op: Op
    ok: bool
    reason: str = ""


def _apply(op: Op) -> None:
    if isinstance(op, EnsureHop):
        ensure_hop(op)
    elif isinstance(op, HopTables):
        failed = [o for o in napply.apply(op.namespace, op.ops) if not o.ok]
        if failed:
            raise napply.NftError(failed[0].reason)
    elif isinstance(op, SetRoute):
        ip(op.namespace, "route", "replace", "default", "via", op.via, "dev", op.dev,
           "table", str(op.table))
    elif isinstance(op, FlushTable):
        ip(op.namespace, "route", "flush", "table", str(op.table), check=False)
    elif isinstance(op, AddRule):
        ip(op.namespace, "rule", "add", "pref", str(op.pref), "fwmark", hex(op.mark),
           "lookup", str(op.table))
    elif isinstance(op, DeleteRule):
        ip(op.namespace, "rule", "del", "pref", str(op.pref), "fwmark", hex(op.mark),
           "lookup", str(op.table), check=False)
    elif isinstance(op, ReplaceClassifier):
        napply.replace(op.namespace, op.ruleset, op.stale)
    elif isinstance(op, DeleteClassifier):
        napply.delete(op.namespace, op.family, op.name)
    elif isinstance(op, DeleteHop):
        netns.kill_namespace_processes(op.namespace)
        netns.delete_namespace(op.namespace)
    elif isinstance(op, ReportError):
        raise ValueError(op.reason)
    else:
        raise TypeError(f"unknown step {op!r}")


def apply(ops: list[Op]) -> list[Outcome]:
    """Every step in order; one failing does not stop the others (the next resync plans again)."""
    out = []
    for op in ops:
        try:
            _apply(op)
            out.append(Outcome(op, True))
        except (napply.NftError, OSError, ValueError, subprocess.SubprocessError) as e:
            out.append(Outcome(op, False, str(e)))
    return out
