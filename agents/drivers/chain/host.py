"""The chain driver's I/O: observe the hop namespaces, the chain things in the router
namespaces and the tap hops' copy legs in the root namespace, apply the plan's steps. ``ip -j``
for links, addresses, rules, routes and neighbours, ``tc -j`` for the copies (argv, never a
shell), /proc/sys through setns for sysctls, the nftables driver's apply for tables.
"ENOENT on delete" and "EEXIST on add" count as done."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from splice.agents import netns

from ..nftables import apply as napply
from ..nftables.plan import ObservedTable, observe_tables
from ..router.model import RouterLayout
from ..steps import Outcome, apply_each
from .model import BRIDGE, HOP_IFNAME, MIRROR_IFNAME, OUT_IFNAME, ChainLayout, owns_mark, owns_table
from .plan import (
    SYSCTL_PATHS,
    AddRule,
    DeleteClassifier,
    DeleteHop,
    DeleteNeighbour,
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
    SetNeighbour,
    SetRedirect,
    SetRoute,
    VethSeen,
    hop_sysctls,
)

ROUTER_IF_SYSCTLS = (("rp_filter", "0"), ("send_redirects", "0"))


def ip(namespace: str | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    head = ["ip", *(["-n", namespace] if namespace else [])]
    return napply.run(None, [*head, *argv], check=check)


def tc(namespace: str | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    head = ["tc", *(["-n", namespace] if namespace else [])]
    return napply.run(None, [*head, *argv], check=check)


def _json(run: Any, namespace: str | None, *argv: str) -> list[dict[str, Any]]:
    proc = run(namespace, "-j", *argv, check=False)
    out = proc.stdout if proc.returncode == 0 else ""
    return list(json.loads(out)) if out.strip() else []


def _veths(namespace: str | None, prefix: str) -> dict[str, VethSeen]:
    """Every link of `namespace` whose name starts with `prefix`: up, IPv4 addresses, MAC."""
    out = {}
    for link in _json(ip, namespace, "-d", "addr", "show"):
        name = link.get("ifname", "")
        if name.startswith(prefix):
            addrs = tuple(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                          if a.get("family") == "inet")
            out[name] = VethSeen("UP" in link.get("flags", []), addrs, link.get("address", ""))
    return out


def _mirred(namespace: str | None, dev: str) -> str | None:
    """The device the one mirred action on `dev`'s tc ingress sends to, if there is one."""
    for f in _json(tc, namespace, "filter", "show", "dev", dev, "ingress"):
        for action in f.get("options", {}).get("actions", []):
            if action.get("kind") == "mirred":
                return str(action.get("to_dev"))
    return None


def _sysctl(namespace: str, path: str) -> str:
    def read() -> str:
        try:
            with open(f"/proc/sys/{path}") as f:
                return f.read().strip()
        except OSError:
            return ""
    return netns.in_netns(namespace, read)


def _set_sysctl(namespace: str | None, path: str, value: str) -> None:
    def write() -> None:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)
    if namespace is None:
        write()
    else:
        netns.in_netns(namespace, write)


# --------------------------------------------------------------------------- observe


def observe_hop(namespace: str, prefix: str) -> HopSeen:
    links = {link["ifname"]: link for link in _json(ip, namespace, "-d", "link", "show")}
    route = None
    for r in _json(ip, namespace, "-4", "route", "show", "default"):
        route = (r.get("gateway"), str(r.get("dev")))
    veth = _veths(namespace, HOP_IFNAME).get(HOP_IFNAME)
    address = veth.addresses[0] if veth and veth.up and len(veth.addresses) == 1 else None
    bridge: tuple[tuple[str, bool], ...] = ()
    if "UP" in links.get(BRIDGE, {}).get("flags", []):
        bridge = tuple(sorted(
            (name, bool(link["linkinfo"]["info_slave_data"].get("learning")))
            for name, link in links.items()
            if link.get("master") == BRIDGE and "UP" in link.get("flags", [])))
    mirror = None
    if HOP_IFNAME in links and "UP" in links.get(MIRROR_IFNAME, {}).get("flags", []):
        mirror = _mirred(namespace, HOP_IFNAME)
    sysctls = {p: _sysctl(namespace, p) for p in SYSCTL_PATHS}
    return HopSeen(address, route, sysctls, napply.observe(namespace, prefix), bridge, mirror)


def observe_router(namespace: str, prefix: str) -> RouterSeen:
    veth_prefix = f"{prefix}c"
    veths = _veths(namespace, veth_prefix)
    rules = set()
    for r in _json(ip, namespace, "rule", "show"):
        mark, table = r.get("fwmark"), r.get("table")
        if mark is None or not str(table).isdigit():
            continue
        m, t = int(str(mark), 0), int(str(table))
        if owns_mark(m) and owns_table(t):
            rules.add((m, t))
    routes: dict[int, tuple[str, str]] = {}
    for r in _json(ip, namespace, "-4", "route", "show", "table", "all"):
        table = r.get("table")
        if str(table).isdigit() and owns_table(int(str(table))) and r.get("dst") == "default":
            routes[int(str(table))] = (str(r.get("gateway")), str(r.get("dev")))
    neighbours = frozenset(
        (str(n["dev"]), str(n["dst"]), str(n.get("lladdr", "")))
        for n in _json(ip, namespace, "-4", "neigh", "show", "nud", "permanent")
        if str(n.get("dev", "")).startswith(veth_prefix))
    tables = observe_tables(napply.list_ruleset(namespace))
    name = f"{prefix}ch-"
    found = [t for k, t in tables.items() if k[0] == "ip" and k[1].startswith(name)]
    classifier: ObservedTable | None = found[0] if found else None
    return RouterSeen(veths, frozenset(rules), routes, classifier, neighbours)


def observe(prefix: str) -> Observed:
    layout = ChainLayout(prefix)
    hops = {}
    for ns in netns.list_namespaces(layout.namespace_prefix):
        try:
            hops[ns] = observe_hop(ns, prefix)
        except (OSError, napply.NftError, KeyError):
            continue  # deleted meanwhile
    routers = {}
    for ns in netns.list_namespaces(RouterLayout(prefix).namespace_prefix):
        try:
            routers[ns] = observe_router(ns, prefix)
        except (OSError, napply.NftError):
            continue
    mirrors = {name: _mirred(None, name) for name in _veths(None, layout.mirror_prefix)}
    return Observed(hops, routers, mirrors)


# --------------------------------------------------------------------------- apply


def _no_ipv6(namespace: str | None, *devs: str) -> None:
    """Our legs carry only the chain's IPv4: no router solicitations or MLD of their own."""
    for dev in devs:
        _set_sysctl(namespace, f"net/ipv6/conf/{dev}/disable_ipv6", "1")


def ensure_hop(op: EnsureHop) -> None:
    """The hop built again from nothing: whatever of it was there goes first."""
    hop, router = op.hop, op.router_namespace
    netns.kill_namespace_processes(hop.namespace)
    netns.delete_namespace(hop.namespace)
    for dev in (hop.router_if, hop.out_if):
        if dev:
            ip(router, "link", "del", dev, check=False)
    netns.ensure_namespace(hop.namespace)
    ip(hop.namespace, "link", "set", "lo", "up")
    legs = [(hop.router_if, HOP_IFNAME, hop.router_mac)]
    if hop.bridged:
        legs.append((hop.out_if, OUT_IFNAME, hop.out_mac))
    for router_if, hop_if, mac in legs:
        ip(router, "link", "add", router_if, *(["address", mac] if mac else []), "type", "veth",
           "peer", "name", hop_if, "netns", hop.namespace)
        for key, value in ROUTER_IF_SYSCTLS:
            _set_sysctl(router, f"net/ipv4/conf/{router_if}/{key}", value)
        _no_ipv6(router, router_if)
        _no_ipv6(hop.namespace, hop_if)
    for path, value in hop_sysctls(hop):
        _set_sysctl(hop.namespace, path, value)
    if hop.bridged:
        learning = "on" if hop.insertion == "l2" else "off"
        ip(hop.namespace, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0")
        _no_ipv6(hop.namespace, BRIDGE)
        for hop_if in (HOP_IFNAME, OUT_IFNAME):
            ip(hop.namespace, "link", "set", hop_if, "master", BRIDGE)
            ip(hop.namespace, "link", "set", hop_if, "type", "bridge_slave", "learning", learning)
            ip(hop.namespace, "link", "set", hop_if, "up")
        ip(hop.namespace, "link", "set", BRIDGE, "up")
        ip(hop.namespace, "route", "replace", "default", "dev", BRIDGE)  # a reject's way out
        for dev, address in ((hop.router_if, hop.router_address), (hop.out_if, hop.out_address)):
            ip(router, "addr", "add", address, "dev", dev)
            ip(router, "link", "set", dev, "up")
        return
    for ns, ifname, address in ((router, hop.router_if, hop.router_address),
                                (hop.namespace, HOP_IFNAME, hop.hop_address)):
        ip(ns, "addr", "add", address, "dev", ifname)
        ip(ns, "link", "set", ifname, "up")
    ip(hop.namespace, "route", "replace", "default", "via", hop.router_address.split("/")[0],
       "dev", HOP_IFNAME)
    if hop.insertion == "tap":
        ip(None, "link", "add", hop.mirror_if, "type", "veth", "peer", "name", MIRROR_IFNAME,
           "netns", hop.namespace)
        _no_ipv6(None, hop.mirror_if)
        _no_ipv6(hop.namespace, MIRROR_IFNAME)
        ip(None, "link", "set", hop.mirror_if, "up")
        ip(hop.namespace, "link", "set", MIRROR_IFNAME, "up")
        tc(hop.namespace, "qdisc", "replace", "dev", HOP_IFNAME, "clsact")
        tc(hop.namespace, "filter", "add", "dev", HOP_IFNAME, "ingress", "pref", "10",
           "protocol", "all", "u32", "match", "u32", "0", "0",
           "action", "mirred", "egress", "mirror", "dev", MIRROR_IFNAME)


def set_redirect(op: SetRedirect) -> None:
    """What the tap hop copies to its root end goes on to the monitor port's interface."""
    tc(None, "qdisc", "replace", "dev", op.mirror_if, "clsact")
    tc(None, "filter", "del", "dev", op.mirror_if, "ingress", check=False)
    tc(None, "filter", "add", "dev", op.mirror_if, "ingress", "pref", "10", "protocol", "all",
       "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
       "dev", op.monitor_if)


def _apply(op: Op) -> None:
    if isinstance(op, EnsureHop):
        ensure_hop(op)
    elif isinstance(op, HopTables):
        failed = [o for o in napply.apply(op.namespace, op.ops) if not o.ok]
        if failed:
            raise napply.NftError(failed[0].reason)
    elif isinstance(op, SetRoute):
        ip(op.namespace, "route", "replace", "default", "via", op.via, "dev", op.dev, "onlink",
           "table", str(op.table))
    elif isinstance(op, SetNeighbour):
        ip(op.namespace, "neigh", "replace", op.address, "lladdr", op.mac, "dev", op.dev,
           "nud", "permanent")
    elif isinstance(op, DeleteNeighbour):
        ip(op.namespace, "neigh", "del", op.address, "dev", op.dev, check=False)
    elif isinstance(op, SetRedirect):
        set_redirect(op)
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
    return apply_each(ops, _apply)
