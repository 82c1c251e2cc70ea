"""The load-balancer part of `splice up --demo`: tenant machines in namespaces, traffic through
a VIP that Splice made from commands.

The demo plays the tenant: it asks Splice (over NATS, like any client) for a network and a load
balancer with three members, waits until the agent reports the load balancer ACTIVE, then makes
the tenant's machines itself — three member namespaces running web servers and a client
namespace, plugged into the network's bridge — and curls the VIP from the client. Addresses are
in 10.77.9.0/24, inside namespaces it made; it removes them on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from splice.agents.model import NetworkSpec

NET = "10.77.9"
VIP = f"{NET}.100"
TENANT = "demo"
MEMBERS = [("web-1", f"{NET}.11"), ("web-2", f"{NET}.12"), ("web-3", f"{NET}.13")]
CLIENT = ("spldemo-client", f"{NET}.50")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class LoadBalancerDemo:
    def __init__(self, nc: Any, out: Console) -> None:
        self.nc, self.out = nc, out
        self.procs: list[subprocess.Popen[bytes]] = []
        self.namespaces: list[str] = []
        self.veths: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="splice-demo-"))
        self.lb_id = ""

    async def cmd(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        msg = await self.nc.request(subject, json.dumps(body).encode(), timeout=15)
        reply = dict(json.loads(msg.data))
        self.out.print(f"[bold]>[/] {subject} {json.dumps(body)[:160]}", highlight=False)
        self.out.print(f"[bold]<[/] {json.dumps(reply)}", highlight=False)
        return reply

    async def wait_for(self, topic: str, deadline: float = 60) -> dict[str, Any]:
        js = self.nc.jetstream()
        subject = f"splice.evt.{TENANT}.loadbalancer.{self.lb_id}.{topic}"
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                m = await js.get_last_msg("SPLICE_EVENTS", subject, direct=True)
                return dict(json.loads(m.data))
            await asyncio.sleep(0.2)
        raise TimeoutError(f"no {topic} within {deadline}s")

    async def run(self, service_type_id: str | None) -> None:
        self.out.rule("demo: a load balancer with members, traffic through its VIP")
        net = await self.cmd(f"splice.cmd.{TENANT}.network.create", {
            "command_id": "demo-network", "actor": "demo", "name": "demo", "cidr": f"{NET}.0/24"})
        lb = await self.cmd(f"splice.cmd.{TENANT}.loadbalancer.create", {
            "command_id": "demo-lb", "actor": "demo", "name": "web", "vip_network_id": net["id"],
            "vip_address": VIP, "service_type_id": service_type_id,
            "pools": [{"name": "web", "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                       "members": [{"address": a, "protocol_port": 8080, "name": n} for n, a in MEMBERS],
                       "healthmonitor": {"type": "HTTP", "delay": 1, "timeout": 1, "url_path": "/"}}],
            "listeners": [{"name": "http", "protocol": "HTTP", "protocol_port": 80,
                           "default_pool": "web"}],
        })
        if not lb.get("ok"):
            return
        self.lb_id = lb["id"]
        active = await self.wait_for("LoadBalancerProvisioned")
        self.out.print(f"[green]the agent on {active['host']} reports generation "
                       f"{active['generation']} ACTIVE[/]")
        bridge = NetworkSpec(net["id"], f"{NET}.0/24", f"{NET}.1").bridge_name("spl-")
        await asyncio.get_running_loop().run_in_executor(None, self.tenant_machines, bridge)
        online = await self.members_online(len(MEMBERS))
        self.out.print(f"[green]health monitor: {online} member(s) ONLINE[/] (reported by the agent)")
        seen = await asyncio.get_running_loop().run_in_executor(None, self.curl, 6)
        self.out.print(f"[green]round robin over the members:[/] {', '.join(seen)}")
        self.out.print(f"  try it: ip netns exec {CLIENT[0]} curl http://{VIP}/")

    async def members_online(self, want: int, deadline: float = 60) -> int:
        """Follow the agent's operating-status reports until `want` members are ONLINE."""
        js = self.nc.jetstream()
        subject = f"splice.evt.{TENANT}.loadbalancer.{self.lb_id}.LoadBalancerOperatingStatusChanged"
        sub = await js.subscribe(subject, ordered_consumer=True)
        members: dict[str, str] = {}
        end = time.monotonic() + deadline
        try:
            while time.monotonic() < end:
                with contextlib.suppress(Exception):
                    m = await sub.next_msg(timeout=1)
                    members.update(json.loads(m.data).get("members", {}))
                online = sum(1 for s in members.values() if s == "ONLINE")
                if online >= want:
                    return online
        finally:
            await sub.unsubscribe()
        return sum(1 for s in members.values() if s == "ONLINE")

    def plug(self, ns: str, address: str, bridge: str) -> None:
        host_if = f"spldemo{len(self.veths)}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.veths.append(host_if)
        _ip("link", "set", host_if, "master", bridge, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def purge_leftovers() -> None:
        """Remove what an earlier demo left behind (it was killed before cleaning up)."""
        listed = _ip("netns", "list", check=False).stdout.split()
        for ns in listed:
            if ns.startswith("spldemo-"):
                for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                _ip("netns", "del", ns, check=False)
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith("spldemo"):
                _ip("link", "del", name, check=False)

    def tenant_machines(self, bridge: str) -> None:
        self.purge_leftovers()
        for name, address in MEMBERS:
            ns = f"spldemo-{name}"
            self.plug(ns, address, bridge)
            root = self.tmp / name
            root.mkdir()
            (root / "index.html").write_text(f"hello from {name}\n")
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "8080",
                 "--bind", address, "--directory", str(root)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.plug(CLIENT[0], CLIENT[1], bridge)

    def _get(self) -> str | None:
        r = subprocess.run(["ip", "netns", "exec", CLIENT[0], "curl", "-s", "--max-time", "2",
                            f"http://{VIP}/"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.startswith("hello from") else None

    def curl(self, n: int) -> list[str]:
        """Show `n` requests, once every member has answered through the VIP."""
        # haproxy starts members as UP and takes one down at its first failed check (a member
        # that came up a moment late): wait until each has answered through the VIP, twice.
        answered: Counter[str] = Counter()
        end = time.monotonic() + 45
        while min((answered[n] for n, _ in MEMBERS), default=0) < 2 and time.monotonic() < end:
            answer = self._get()
            if answer:
                answered[answer.split()[-1]] += 1
            time.sleep(0.1)
        seen: list[str] = []
        for _ in range(n):
            answer = self._get()
            if answer:
                seen.append(answer.split()[-1])
                self.out.print(f"  curl http://{VIP}/ from {CLIENT[0]} → {answer}")
        return seen

    async def cleanup(self) -> None:
        """Delete the demo's load balancer (the agent removes it) and the tenant machines."""
        if self.lb_id:
            with contextlib.suppress(Exception):
                await self.nc.request(f"splice.cmd.{TENANT}.loadbalancer.delete", json.dumps(
                    {"command_id": f"demo-lb-delete-{self.lb_id}", "actor": "demo",
                     "id": self.lb_id}).encode(), timeout=10)
                await self.wait_for("LoadBalancerDeleted", deadline=20)
        for p in self.procs:
            p.kill()
            p.wait(5)
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        for veth in self.veths:
            _ip("link", "del", veth, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

