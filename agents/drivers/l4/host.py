"""The host side of the nftables-l4 driver: observe, apply one step, probe a member.

Blocking (pyroute2, ``nft``, ``conntrack``), except `probe`: run the rest off the event loop.
Every step is idempotent ("exists" on add and "gone" on delete are done). Nothing here
decides whether to act (that is `plan`), and nothing touches a name without this driver's
prefixes: the names come from `L4Layout`, and observing filters by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import subprocess
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from splice.agents import netns

from ..nftables import apply as napply
from ..nftables.plan import observe_tables
from ..steps import Outcome
from .model import L4Layout
from .plan import (
    CutFlows,
    DeleteBridge,
    DeleteSlot,
    EnsureBridge,
    EnsureNamespace,
    EnsureVipLeg,
    Observed,
    Op,
    ReportError,
    SetSysctls,
    SlotSeen,
    Tables,
    flows_to_cut,
)

_GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL, errno.EINVAL)


class StepError(RuntimeError):
    """A step that could not be carried out (its reason is reported)."""


# --------------------------------------------------------------------------- observe


def observe_host(layout: L4Layout) -> tuple[netns.HostLinks, set[str]]:
    """Our bridges and legs in the root namespace, and the short ids of every slot found
    by its namespace or its leg."""
    host = netns.observe_host(layout.prefix)
    shorts = {n[len(layout.namespace_prefix):]
              for n in netns.list_namespaces(layout.namespace_prefix)}
    shorts |= {v[len(layout.leg_prefix):] for v in host.veth_master
               if v.startswith(layout.leg_prefix)}
    return host, shorts


def observe_slot(layout: L4Layout, host: netns.HostLinks, short: str) -> SlotSeen:
    namespace, leg = layout.namespace_of(short), layout.leg_of(short)
    master = host.veth_master.get(leg)
    base = SlotSeen(short, host_leg=leg in host.veth_master, host_leg_master=master)
    if netns.namespace_inode(namespace) is None:
        return base
    try:
        links = netns.observe_namespace(namespace, layout.ns_ifname)
        sysctls = netns.in_netns(namespace, lambda: {k: _read(k) for k, _ in layout.sysctls()})
        listing = napply.list_ruleset(namespace)
    except (OSError, NetlinkError, napply.NftError) as exc:
        if getattr(exc, "errno", None) in _GONE or getattr(exc, "code", None) in _GONE:
            return base  # deleted meanwhile (or not mounted yet): planned as missing
        raise
    tables = {k: t for k, t in observe_tables(listing).items()
              if k[1].startswith(layout.table_prefix)}
    return SlotSeen(short, True, links, base.host_leg, master, sysctls, tables)


def observe(layout: L4Layout, map_: Callable[..., Any] = map) -> Observed:
    host, shorts = observe_host(layout)
    found = list(map_(lambda s: observe_slot(layout, host, s), sorted(shorts)))
    return Observed(host.bridges, host.bridge_ports, {s.short: s for s in found})


def _read(path: str) -> str:
    """A sysctl of the calling thread's namespace ('' when absent)."""
    try:
        return Path(f"/proc/sys/{path}").read_text().strip()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    Path(f"/proc/sys/{path}").write_text(value)


# --------------------------------------------------------------------------- apply


def apply_op(op: Op) -> Outcome:
    try:
        _apply(op)
    except (OSError, NetlinkError, netns.NetnsError, subprocess.SubprocessError,
            napply.NftError, StepError, ValueError) as e:
        return Outcome(op, False, f"{type(op).__name__}: {e}")
    return Outcome(op, True)


def _apply(op: Op) -> None:
    match op:
        case EnsureBridge(name=name):
            netns.ensure_bridge(name)
        case DeleteBridge(name=name):
            netns.delete_unused_bridge(name)
        case EnsureNamespace(namespace=namespace):
            netns.ensure_namespace(namespace)
        case EnsureVipLeg(leg=leg):
            netns.ensure_vip_leg(leg)
        case SetSysctls(namespace=namespace, values=values):
            def write() -> None:
                for k, v in values:
                    _write(k, v)

            netns.in_netns(namespace, write)
        case Tables(namespace=namespace, ops=steps):
            failed = [o.reason for o in napply.apply(namespace, steps) if not o.ok]
            if failed:
                raise StepError("; ".join(failed))
        case CutFlows(namespace=namespace, vip=vip, keep=keep):
            flows = napply.list_flows(namespace)
            napply.delete_flows(namespace, flows_to_cut(flows, vip, dict(keep)))
        case DeleteSlot(namespace=namespace, host_leg=leg):
            netns.kill_namespace_processes(namespace)
            netns.delete_namespace(namespace)
            netns.delete_link(leg)  # gone with the namespace, unless something holds it
        case ReportError(reason=reason):
            raise StepError(reason)
        case _:
            raise TypeError(f"unknown step {op!r}")


# --------------------------------------------------------------------------- probe


def _socket_in(namespace: str) -> socket.socket:
    def make() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    sock = netns.in_netns(namespace, make)
    sock.setblocking(False)
    return sock


async def probe(namespace: str, address: str, port: int, timeout: float,
                executor: Executor | None = None) -> bool | None:
    """One TCP health check from inside ``namespace``: True when the connect succeeds
    within ``timeout``, False when it is refused or times out, None when the namespace is
    not there (no verdict: the LB is being built or deleted)."""
    loop = asyncio.get_running_loop()
    try:
        sock: socket.socket = await loop.run_in_executor(executor, _socket_in, namespace)
    except OSError:
        return None
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout)
        return True
    except (OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
