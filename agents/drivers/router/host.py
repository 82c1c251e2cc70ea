"""The host side of the router driver: observe what the host holds, and apply one step.

Blocking (pyroute2, ``nft``): run it off the event loop. Every step is idempotent: "already
exists" on add and "does not exist" on delete count as done. Nothing here decides whether to
act (that is `plan`), and nothing touches a name without the agent's prefix: the names come
from `RouterLayout`, and observing filters by its prefixes. Inside a router namespace all
links belong to the router.
"""

from __future__ import annotations

import contextlib
import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from splice.agents import netns

from ..nftables import apply as napply
from ..ops import DeleteBridge, EnsureBridge
from ..steps import STEP_ERRORS, Outcome
from .model import LEG_SYSCTLS, NAMESPACE_SYSCTLS, Leg, RouterLayout
from .plan import (
    DeleteDefaultRoute,
    DeleteLeg,
    DeleteNamespace,
    EnsureLeg,
    EnsureNamespace,
    LinkSeen,
    NamespaceSeen,
    Observed,
    Op,
    ReportError,
    SetDefaultRoute,
    SetSysctls,
    Tables,
)

_GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL)


# --------------------------------------------------------------------------- observe


MAIN_TABLE = 254


def observe(prefix: str) -> Observed:
    layout = RouterLayout(prefix)
    links = netns.observe_host(prefix)
    legs = {n: m for n, m in links.veth_master.items() if n.startswith(layout.leg_prefix)}
    spaces = {ns: observe_namespace(ns, prefix)
              for ns in netns.list_namespaces(layout.namespace_prefix)}
    return Observed(links.bridges, links.bridge_ports, legs, spaces)


def observe_namespace(namespace: str, prefix: str) -> NamespaceSeen | None:
    def look() -> tuple[dict[str, LinkSeen], tuple[str, str] | None, dict[str, str]]:
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            seen: dict[str, LinkSeen] = {}
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                if name == "lo":
                    continue
                addrs = frozenset(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                                  for a in ipr.get_addr(index=link["index"]) if a["scope"] == 0)
                conf = {k: _read(f"net/ipv4/conf/{name}/{k}") for k, _ in LEG_SYSCTLS}
                seen[name] = LinkSeen(bool(link["flags"] & 1), addrs, conf)
            route = None
            for r in ipr.get_default_routes(family=2):
                gw = r.get_attr("RTA_GATEWAY")
                if gw and (r.get_attr("RTA_TABLE") or r["table"]) == MAIN_TABLE:  # not a chain's
                    route = (str(gw), str(names.get(r.get_attr("RTA_OIF"))))
            sysctls = {k: _read(k) for k, _ in NAMESPACE_SYSCTLS}
            return seen, route, sysctls

    try:
        links, route, sysctls = netns.in_netns(namespace, look)
        tables = napply.observe(namespace, prefix)
    except (OSError, NetlinkError, napply.NftError) as exc:
        if getattr(exc, "errno", None) in _GONE or getattr(exc, "code", None) in _GONE:
            return None  # deleted meanwhile: planned as missing
        raise
    return NamespaceSeen(links, route, sysctls, tables)


def _read(path: str) -> str:
    """A sysctl of the calling thread's network namespace ('' when absent)."""
    try:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


# --------------------------------------------------------------------------- apply


def apply(ops: list[Op]) -> list[Outcome]:
    """Every step in order; a failing step does not stop the others (resync plans again)."""
    return [apply_op(op) for op in ops]


def apply_op(op: Op) -> Outcome:
    try:
        _apply(op)
    except STEP_ERRORS as e:
        return Outcome(op, False, f"{type(op).__name__}: {e}")
    if isinstance(op, ReportError):
        return Outcome(op, False, op.reason)
    if isinstance(op, Tables):
        failed = [o.reason for o in napply.apply(op.namespace, op.ops) if not o.ok]
        if failed:
            return Outcome(op, False, "; ".join(failed))
    return Outcome(op, True)


def _apply(op: Op) -> None:
    if isinstance(op, EnsureBridge):
        netns.ensure_bridge(op.name)
    elif isinstance(op, EnsureNamespace):
        netns.ensure_namespace(op.namespace)
    elif isinstance(op, SetSysctls):
        def write() -> None:
            for k, v in op.values:
                _write(k, v)
        netns.in_netns(op.namespace, write)
    elif isinstance(op, EnsureLeg):
        ensure_leg(op.namespace, op.leg)
    elif isinstance(op, SetDefaultRoute):
        def route() -> None:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=op.ifname)
                if not idx:
                    raise netns.NetnsError(f"{op.ifname} missing in {op.namespace}")
                ipr.route("replace", dst="default", gateway=op.via, oif=idx[0])
        netns.in_netns(op.namespace, route)
    elif isinstance(op, DeleteDefaultRoute):
        def unroute() -> None:
            with IPRoute() as ipr:
                _ignore(ipr.route, "del", dst="default")
        netns.in_netns(op.namespace, unroute)
    elif isinstance(op, DeleteLeg):
        netns.delete_link(op.host_ifname)
    elif isinstance(op, DeleteBridge):
        netns.delete_unused_bridge(op.name)
    elif isinstance(op, DeleteNamespace):
        netns.kill_namespace_processes(op.namespace)
        netns.delete_namespace(op.namespace)


def ensure_leg(namespace: str, leg: Leg) -> None:
    """The veth (host end on the bridge, up), the namespace end up with exactly its address
    and the leg's sysctls; then a gratuitous ARP, as the address may have moved here."""
    with IPRoute() as ipr:
        host = ipr.link_lookup(ifname=leg.host_ifname)
        if host and not _in_namespace(namespace, leg.ns_ifname):
            _ignore(ipr.link, "del", index=host[0])  # its peer is elsewhere: start over
            host = []
        if not host:
            try:
                ipr.link("add", ifname=leg.host_ifname, kind="veth",
                         peer={"ifname": leg.ns_ifname, "net_ns_fd": namespace})
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            host = ipr.link_lookup(ifname=leg.host_ifname)
        bridge = ipr.link_lookup(ifname=leg.bridge)
        if not bridge:
            raise netns.NetnsError(f"bridge {leg.bridge} missing")
        ipr.link("set", index=host[0], master=bridge[0], state="up")

    def configure() -> str:
        for k, v in LEG_SYSCTLS:
            _write(f"net/ipv4/conf/{leg.ns_ifname}/{k}", v)
        with IPRoute() as ns:
            idx = ns.link_lookup(ifname=leg.ns_ifname)
            if not idx:
                raise netns.NetnsError(f"{leg.ns_ifname} missing in {namespace}")
            ns.link("set", index=idx[0], state="up")
            for a in ns.get_addr(index=idx[0]):
                have = f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                if a["scope"] == 0 and have not in leg.addresses:
                    _ignore(ns.addr, "del", index=idx[0], address=a.get_attr("IFA_ADDRESS"),
                            prefixlen=a["prefixlen"])
            for address in (leg.address, *leg.vips):  # the leg's own address first: primary
                ip, plen = address.split("/")
                try:
                    ns.addr("add", index=idx[0], address=ip, prefixlen=int(plen))
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
            (link,) = ns.get_links(idx[0])
            return str(link.get_attr("IFLA_ADDRESS"))

    mac = netns.in_netns(namespace, configure)
    for address in (leg.address, *leg.vips):
        netns.announce(namespace, leg.ns_ifname, address.split("/")[0], mac)


def announce_again(namespace: str, leg: Leg) -> None:
    """Another gratuitous ARP for a leg's address. A neighbour ignores one that comes within
    its ``locktime`` (1 s) of its entry's last update, so a client that was talking to the
    address's previous owner (a rebuilt namespace, a moved router) keeps the old MAC until its
    entry goes stale, unless the announcement is repeated later (as Neutron's arping -c 3 does)."""
    def mac() -> str | None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=leg.ns_ifname)
            return str(ipr.get_links(idx[0])[0].get_attr("IFLA_ADDRESS")) if idx else None
    with contextlib.suppress(OSError, NetlinkError):
        address = netns.in_netns(namespace, mac)
        if address is not None:
            for ip in (leg.address, *leg.vips):
                netns.announce(namespace, leg.ns_ifname, ip.split("/")[0], address)


def _in_namespace(namespace: str, ifname: str) -> bool:
    def look() -> bool:
        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=ifname))
    try:
        return netns.in_netns(namespace, look)
    except OSError:
        return False


def _ignore(fn: object, *args: object, **kwargs: object) -> None:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except NetlinkError as e:
        if e.code not in _GONE:  # "does not exist" on delete counts as done
            raise


__all__ = ["Outcome", "announce_again", "apply", "observe"]
