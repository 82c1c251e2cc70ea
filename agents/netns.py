"""Netlink driver (pyroute2): bridges, LB namespaces, VIP legs — ensure, delete, observe.

Every function is idempotent and blocking (run it in a thread). "Already exists" on add and
"does not exist" on delete count as success, because the reconciler may repeat any step after
a crash or race with itself. Nothing here decides *whether* to act (that is ``plan.py``); and
nothing here touches an object whose name lacks the caller's prefix — the callers pass names
built by :class:`~splice.agents.model.HostLayout`, and the observers filter by prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

NETNS_DIR = "/var/run/netns"
_GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL)
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` with the calling thread inside the named namespace, then bring it back.

    setns(2) moves only the calling thread, and sockets stay in the namespace they were made
    in: about ten times cheaper than pyroute2's ``netns=`` (which forks the whole process to
    make each socket).
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(name)
        try:
            return fn()
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:  # pragma: no cover - cannot happen
                os._exit(70)  # a thread stranded in a tenant namespace must not go on
    finally:
        os.close(home)


def enter(name: str) -> None:
    """Move the calling thread into the named namespace (for good, unless `in_netns` brings
    it back): done first thing in a process (`splice agent --netns`), every thread made
    afterwards starts there, and so does every process it runs (``ip``, ``nft``, haproxy).
    Only the network namespace changes."""
    target = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(target)


class NetnsError(RuntimeError):
    """A netlink operation failed for a reason other than "already done"."""


@dataclass(frozen=True, slots=True)
class HostLinks:
    """What the host's root namespace holds with our prefix."""

    bridges: frozenset[str]
    bridge_ports: dict[str, int]  # bridge -> number of enslaved interfaces (any owner)
    veth_master: dict[str, str | None]  # host-side veth -> bridge it is plugged into
    namespaces: frozenset[str]


@dataclass(frozen=True, slots=True)
class NamespaceLinks:
    """The VIP leg as seen inside one LB namespace."""

    inode: int
    vip_if_up: bool
    addresses: frozenset[str]  # "addr/prefixlen" on the VIP interface
    mac: str | None
    default_gateway: str | None


# --------------------------------------------------------------------------- observe


def list_namespaces(prefix: str) -> frozenset[str]:
    return frozenset(n for n in netns.listnetns() if n.startswith(prefix))


def namespace_inode(name: str) -> int | None:
    try:
        return os.stat(f"{NETNS_DIR}/{name}").st_ino
    except FileNotFoundError:
        return None


def observe_host(prefix: str) -> HostLinks:
    """One netlink dump of the root namespace, filtered to names that carry ``prefix``."""
    with IPRoute() as ipr:
        links = list(ipr.get_links())
    by_index = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
    bridges: set[str] = set()
    ports: dict[str, int] = {}
    masters: dict[str, str | None] = {}
    for link in links:
        name = link.get_attr("IFLA_IFNAME")
        master = by_index.get(link.get_attr("IFLA_MASTER"))
        kind = _link_kind(link)
        if master is not None and not (kind == "vxlan" and name.startswith(prefix)):
            ports[master] = ports.get(master, 0) + 1  # our VXLAN device alone: unused
        if not name.startswith(prefix):
            continue
        if kind == "bridge":
            bridges.add(name)
        elif kind == "veth":
            masters[name] = master
    return HostLinks(
        bridges=frozenset(bridges),
        bridge_ports={b: ports.get(b, 0) for b in bridges},
        veth_master=masters,
        namespaces=list_namespaces(prefix),
    )


def _link_kind(link: object) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")  # type: ignore[attr-defined]
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def observe_namespace(name: str, vip_ifname: str) -> NamespaceLinks | None:
    """The VIP interface, its addresses and the default route inside an LB namespace."""
    inode = namespace_inode(name)
    if inode is None:
        return None
    def look() -> NamespaceLinks:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=vip_ifname)
            if not idx:
                return NamespaceLinks(inode, False, frozenset(), None, _gateway(ipr))
            (link,) = ipr.get_links(idx[0])
            addrs = frozenset(
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(index=idx[0])
                if a["scope"] == 0
            )
            up = bool(link["flags"] & 1)
            return NamespaceLinks(inode, up, addrs, link.get_attr("IFLA_ADDRESS"), _gateway(ipr))

    try:
        return in_netns(name, look)
    except (OSError, NetlinkError) as exc:
        if getattr(exc, "errno", None) in _GONE or getattr(exc, "code", None) in _GONE:
            return None
        raise


def _gateway(ipr: IPRoute) -> str | None:
    for family in (2, 10):
        for route in ipr.get_default_routes(family=family):
            gw = route.get_attr("RTA_GATEWAY")
            if gw:
                return str(gw)
    return None


def pids_in_namespace(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (by inode), found through /proc."""
    inode = namespace_inode(name)
    if inode is None:
        return []
    return pids_with_netns_inode(inode)


def pids_with_netns_inode(inode: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def process_alive(pid: int) -> bool:
    """Alive and not a zombie: daemons are reparented to pid 1, which may reap them late."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def process_netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


# --------------------------------------------------------------------------- ensure / delete


def ensure_bridge(name: str) -> None:
    """A Linux bridge, up, without STP (ports forward at once: no 30 s listening delay)."""
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=name):
            _ignore(errno.EEXIST, ipr.link, "add", ifname=name, kind="bridge", br_stp_state=0)
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            raise NetnsError(f"bridge {name} vanished while being created")
        ipr.link("set", index=idx[0], state="up")


def delete_unused_bridge(name: str) -> bool:
    """Delete our bridge ``name`` (``<prefix>br-<network>``) if nothing but our own VXLAN
    device is plugged into it now.

    A plan decides from an observation that may be a pass old: a port plugged in since (a
    tenant's machine, another driver's leg) keeps the bridge. Returns whether it went."""
    if observe_host(name[:name.rindex("br-")]).bridge_ports.get(name, 0):
        return False
    delete_link(name)
    return True


def delete_link(name: str) -> None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            _ignore(errno.ENODEV, ipr.link, "del", index=idx[0])


def ensure_namespace(name: str) -> None:
    """A named namespace with ``lo`` up (haproxy's health checks may use loopback)."""
    if namespace_inode(name) is None:
        # iproute2 makes a namespace four times faster than pyroute2 (which forks Python)
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                              check=False)
        if made.returncode != 0 and namespace_inode(name) is None:
            raise NetnsError(f"ip netns add {name}: {made.stderr.strip()}")
    def lo_up() -> None:
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    in_netns(name, lo_up)


def delete_namespace(name: str) -> None:
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass


def kill_namespace_processes(name: str, deadline_s: float = 5.0) -> None:
    """SIGTERM then SIGKILL everything in ``name``: a namespace is only freed (and its veth
    destroyed) when no process holds it, so deleting an LB starts here."""
    inode = namespace_inode(name)
    if inode is not None:
        kill_pids_with_inode(inode, deadline_s)


def kill_pids_with_inode(inode: int, deadline_s: float = 5.0) -> None:
    pids = pids_with_netns_inode(inode)
    _signal_all(pids, signal.SIGTERM)
    end = time.monotonic() + deadline_s
    while pids and time.monotonic() < end:
        time.sleep(0.02)
        pids = [p for p in pids if process_netns_inode(p) == inode]
    _signal_all(pids, signal.SIGKILL)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass(frozen=True, slots=True)
class VipLeg:
    """Everything needed to plug an LB namespace into its network."""

    namespace: str
    host_ifname: str
    ns_ifname: str
    bridge: str
    address: str
    prefixlen: int
    gateway: str
    mac: str | None


def ensure_vip_leg(leg: VipLeg) -> None:
    """veth pair (host end on the bridge, namespace end holding the VIP), default route.

    A host end whose peer is no longer in *our* namespace (the namespace was deleted by hand
    while a process kept it alive) is stale: delete it and start over.
    """
    with IPRoute() as ipr:
        host_idx = ipr.link_lookup(ifname=leg.host_ifname)
        if host_idx and not _peer_in_namespace(leg):
            _ignore(errno.ENODEV, ipr.link, "del", index=host_idx[0])
            host_idx = []
        if not host_idx:
            _ignore(
                errno.EEXIST, ipr.link, "add", ifname=leg.host_ifname, kind="veth",
                peer={"ifname": leg.ns_ifname, "net_ns_fd": leg.namespace},
            )
            host_idx = ipr.link_lookup(ifname=leg.host_ifname)
        bridge_idx = ipr.link_lookup(ifname=leg.bridge)
        if not bridge_idx:
            raise NetnsError(f"bridge {leg.bridge} missing")
        ipr.link("set", index=host_idx[0], master=bridge_idx[0], state="up")
    def configure() -> str:
        with IPRoute() as ns:
            return _configure_ns_side(ns, leg)

    mac = in_netns(leg.namespace, configure)
    if ":" not in leg.address:
        announce(leg.namespace, leg.ns_ifname, leg.address, mac)
        announce_later(leg.namespace, leg.ns_ifname, leg.address, mac)


REANNOUNCE_S = (1.2, 2.0)  # when the gratuitous ARP of a new or changed VIP leg is repeated


def announce_later(namespace: str, ifname: str, address: str, mac: str) -> None:
    """Repeat the gratuitous ARP past the neighbours' ``locktime`` (1 s): a client that talked to
    the VIP's previous owner (a deleted or re-created namespace, a moved VIP) within a second of
    the first announcement ignores it and keeps the old MAC until its entry goes stale (seen in
    the tests: a VIP silent for 10 s and more). Neutron repeats its arping the same way."""
    def again() -> None:
        with contextlib.suppress(OSError, NetnsError):
            announce(namespace, ifname, address, mac)

    for delay in REANNOUNCE_S:
        timer = threading.Timer(delay, again)
        timer.daemon = True
        timer.start()


def announce(namespace: str, ifname: str, address: str, mac: str) -> None:
    """Gratuitous ARP (request and reply) for the VIP, as Octavia does after plumbing it.

    Neighbours (clients, the router) may still cache the VIP's previous MAC — from a deleted or
    re-created namespace — and would send traffic into the void until their entry expires.
    """
    hw = bytes.fromhex(mac.replace(":", ""))
    ip = socket.inet_aton(address)
    sock = in_netns(namespace, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
    try:
        sock.bind((ifname, 0x0806))
        for op in (1, 2):  # request, then reply: some stacks honour only one of them
            arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, hw, ip, b"\0" * 6, ip)
            sock.send(b"\xff" * 6 + hw + struct.pack("!H", 0x0806) + arp)
    finally:
        sock.close()


def _peer_in_namespace(leg: VipLeg) -> bool:
    def look() -> bool:
        with IPRoute() as ns:
            return bool(ns.link_lookup(ifname=leg.ns_ifname))

    return in_netns(leg.namespace, look)


def _configure_ns_side(ns: IPRoute, leg: VipLeg) -> str:
    """Address, MAC, route inside the namespace; returns the interface's MAC."""
    idx = ns.link_lookup(ifname=leg.ns_ifname)
    if not idx:
        raise NetnsError(f"{leg.ns_ifname} missing in {leg.namespace}")
    index = idx[0]
    if leg.mac:
        (link,) = ns.get_links(index)
        if link.get_attr("IFLA_ADDRESS") != leg.mac:
            ns.link("set", index=index, address=leg.mac)
    ns.link("set", index=index, state="up")
    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    wanted = f"{leg.address}/{leg.prefixlen}"
    for addr in ns.get_addr(index=index):
        have = f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"
        if addr["scope"] == 0 and have != wanted:
            _ignore(errno.EADDRNOTAVAIL, ns.addr, "del", index=index,
                    address=addr.get_attr("IFA_ADDRESS"), prefixlen=addr["prefixlen"])
    _ignore(errno.EEXIST, ns.addr, "add", index=index, address=leg.address,
            prefixlen=leg.prefixlen)
    family = socket.AF_INET6 if ":" in leg.gateway else socket.AF_INET
    ns.route("replace", family=family, dst="default", gateway=leg.gateway, oif=index)
    (link,) = ns.get_links(index)
    return str(link.get_attr("IFLA_ADDRESS"))


def _ignore(code: int, fn: object, *args: object, **kwargs: object) -> None:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except NetlinkError as exc:
        if exc.code != code:
            raise
