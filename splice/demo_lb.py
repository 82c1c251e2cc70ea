"""The load-balancer part of `splice up --demo`: tenant machines in namespaces, traffic through
a VIP that Splice made from commands.

The demo plays the tenant: it asks Splice (over NATS, like any client) for a network and a load
balancer with three members, waits until the agent reports the load balancer ACTIVE, then makes
the tenant's machines itself — three member namespaces running web servers and a client
namespace, plugged into the network's bridge — and curls the VIP from the client. Addresses are
in 10.77.9.0/24, inside namespaces it made.

Everything it waits on is cancellable: every child process (``ip``, ``curl``) is an asyncio
subprocess that is killed when the task is cancelled, so Ctrl-C at any point stops it at once.
On the way out it removes its tenant machines first, then deletes its load balancer and its
network by command, so that the agent, finding nothing else on the bridge, removes that too.

It keeps its files in a directory of `splice up`'s state directory: the web servers' roots, and
a record of the resources it asked for (`resources.json`). A run that was killed leaves that
record; the next one deletes those resources by command before it makes its own (the
namespaces and links of the killed run are swept by `splice up` before it starts).
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
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from splice.agents.model import NetworkSpec
from splice.events import subjects

NET = "10.77.9"
VIP = f"{NET}.100"
TENANT = "demo"
MEMBERS = [("web-1", f"{NET}.11"), ("web-2", f"{NET}.12"), ("web-3", f"{NET}.13")]
CLIENT = ("spldemo-client", f"{NET}.50")
NS_PREFIX = "spldemo-"
VETH_PREFIX = "spldemo"
LINK_PREFIX = VETH_PREFIX  # the demo's links in the host's namespace
EARLIER_DELETE_S = 30.0  # for the agent to remove an earlier run's load balancer


async def run(*argv: str, timeout: float = 10) -> tuple[int, str]:
    """Run a child to completion; it is killed if the caller is cancelled or it overstays."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(BaseException):
            await asyncio.shield(proc.wait())
        raise
    return proc.returncode or 0, out.decode(errors="replace")


async def ip(*args: str, check: bool = True) -> str:
    code, out = await run("ip", *args)
    if check and code != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.strip()}")
    return out


class LoadBalancerDemo:
    def __init__(self, nc: Any, out: Console, workdir: Path, run_id: str | None = None) -> None:
        self.nc, self.out = nc, out
        # fresh resources per run; the log keeps the old ones
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.servers: list[asyncio.subprocess.Process] = []
        self.namespaces: list[str] = []
        self.veths: list[str] = []
        self.workdir = workdir
        self.record_file = workdir / "resources.json"
        self.tmp = workdir / f"www-{self.run_id}"
        self.net_id = ""
        self.lb_id = ""
        self.net_sent = self.lb_sent = False
        self.service_type_id: str | None = None

    def record(self) -> None:
        """Write down what this run asked for, before it asks (a killed run leaves it)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.record_file.write_text(json.dumps({
            "run_id": self.run_id, "net_sent": self.net_sent, "lb_sent": self.lb_sent,
            "net_id": self.net_id, "lb_id": self.lb_id,
            "service_type_id": self.service_type_id}))

    async def delete_earlier(self) -> None:
        """Delete what a killed run asked for, as its own clean-up would have."""
        try:
            rec = json.loads(self.record_file.read_text())
        except (OSError, ValueError):
            return
        if rec.get("run_id") == self.run_id:
            return
        earlier = LoadBalancerDemo(self.nc, self.out, self.workdir, run_id=str(rec["run_id"]))
        earlier.net_sent, earlier.lb_sent = bool(rec["net_sent"]), bool(rec["lb_sent"])
        earlier.net_id, earlier.lb_id = str(rec["net_id"]), str(rec["lb_id"])
        earlier.service_type_id = rec.get("service_type_id")
        self.out.print(f"[yellow]deleting what the demo of an earlier run left[/] "
                       f"(network {earlier.net_id or '-'}, load balancer {earlier.lb_id or '-'})")
        try:
            await earlier._delete_resources(time.monotonic() + EARLIER_DELETE_S)
        except Exception as e:  # kept on record: the next run tries again
            self.out.print(f"[red]could not delete them:[/] {e!r}")
            return
        self.record_file.unlink(missing_ok=True)

    def _ids(self, what: str) -> str:
        return f"demo-{what}-{self.run_id}"

    async def request(self, subject: str, body: dict[str, Any], timeout: float = 15) -> Any:
        msg = await self.nc.request(subject, json.dumps(body).encode(), timeout=timeout)
        return json.loads(msg.data)

    async def cmd(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = dict(await self.request(subject, body))
        self.out.print(f"[bold]>[/] {subject} {json.dumps(body)[:160]}", highlight=False)
        self.out.print(f"[bold]<[/] {json.dumps(reply)}", highlight=False)
        return reply

    def network_body(self) -> dict[str, Any]:
        return {"command_id": self._ids("network"), "actor": "demo", "name": "demo",
                "cidr": f"{NET}.0/24"}

    def lb_body(self, service_type_id: str | None) -> dict[str, Any]:
        return {
            "command_id": self._ids("lb"), "actor": "demo", "name": "web",
            "vip_network_id": self.net_id, "vip_address": VIP, "service_type_id": service_type_id,
            "pools": [{"name": "web", "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                       "members": [{"address": a, "protocol_port": 8080, "name": n}
                                   for n, a in MEMBERS],
                       "healthmonitor": {"type": "HTTP", "delay": 1, "timeout": 1,
                                         "url_path": "/"}}],
            "listeners": [{"name": "http", "protocol": "HTTP", "protocol_port": 80,
                           "default_pool": "web"}],
        }

    async def wait_for(self, topic: str, deadline: float = 60) -> dict[str, Any]:
        js = self.nc.jetstream()
        subject = subjects.event(TENANT, "loadbalancer", self.lb_id, topic)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                m = await js.get_last_msg(subjects.STREAM, subject, direct=True)
                return dict(json.loads(m.data))
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no {topic} within {deadline}s")

    async def run(self, service_type_id: str | None) -> None:
        self.out.rule("demo: a load balancer with members, traffic through its VIP")
        await self.purge_leftovers()
        await self.delete_earlier()
        self.net_sent = True
        self.record()
        net = await self.cmd(f"splice.cmd.{TENANT}.network.create", self.network_body())
        if not net.get("ok"):
            return
        self.net_id = net["id"]
        self.lb_sent, self.service_type_id = True, service_type_id
        self.record()
        lb = await self.cmd(f"splice.cmd.{TENANT}.loadbalancer.create",
                            self.lb_body(service_type_id))
        if not lb.get("ok"):
            return
        self.lb_id = lb["id"]
        self.record()
        active = await self.wait_for("LoadBalancerProvisioned")
        self.out.print(f"[green]the agent on {active['host']} reports generation "
                       f"{active['generation']} ACTIVE[/]")
        bridge = NetworkSpec(self.net_id, f"{NET}.0/24", f"{NET}.1").bridge_name("spl-")
        await self.tenant_machines(bridge)
        online = await self.members_online(len(MEMBERS))
        self.out.print(f"[green]health monitor: {online} member(s) ONLINE[/] (reported by the agent)")
        seen = await self.curl(6)
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
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    m = await sub.next_msg(timeout=1)
                    members.update(json.loads(m.data).get("members", {}))
                online = sum(1 for s in members.values() if s == "ONLINE")
                if online >= want:
                    return online
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return sum(1 for s in members.values() if s == "ONLINE")

    async def plug(self, ns: str, address: str, bridge: str) -> None:
        host_if = f"{VETH_PREFIX}{len(self.veths)}"
        self.namespaces.append(ns)  # recorded first: a cancelled plug is still cleaned up
        await ip("netns", "add", ns)
        self.veths.append(host_if)
        await ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        await ip("link", "set", host_if, "master", bridge, "up")
        await ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        await ip("-n", ns, "link", "set", "eth0", "up")
        await ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    async def purge_leftovers() -> None:
        """Remove what an earlier demo left behind (it was killed before cleaning up)."""
        for ns in (await ip("netns", "list", check=False)).split():
            if ns.startswith(NS_PREFIX):
                await remove_namespace(ns)
        for line in (await ip("-o", "link", "show", check=False)).splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(VETH_PREFIX):
                await ip("link", "del", name, check=False)

    async def tenant_machines(self, bridge: str) -> None:
        for name, address in MEMBERS:
            ns = f"{NS_PREFIX}{name}"
            await self.plug(ns, address, bridge)
            root = self.tmp / name
            root.mkdir(parents=True)
            (root / "index.html").write_text(f"hello from {name}\n")
            self.servers.append(await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "8080",
                "--bind", address, "--directory", str(root),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await self.plug(CLIENT[0], CLIENT[1], bridge)

    async def _get(self) -> str | None:
        code, out = await run("ip", "netns", "exec", CLIENT[0], "curl", "-s", "--max-time", "2",
                              f"http://{VIP}/")
        return out.strip() if code == 0 and out.startswith("hello from") else None

    async def curl(self, n: int) -> list[str]:
        """Show `n` requests, once every member has answered through the VIP."""
        # haproxy starts members as UP and takes one down at its first failed check (a member
        # that came up a moment late): wait until each has answered through the VIP, twice.
        answered: Counter[str] = Counter()
        end = time.monotonic() + 45
        while min((answered[n] for n, _ in MEMBERS), default=0) < 2 and time.monotonic() < end:
            answer = await self._get()
            if answer:
                answered[answer.split()[-1]] += 1
            await asyncio.sleep(0.1)
        seen: list[str] = []
        for _ in range(n):
            answer = await self._get()
            if answer:
                seen.append(answer.split()[-1])
                self.out.print(f"  curl http://{VIP}/ from {CLIENT[0]} → {answer}")
        return seen

    async def cleanup(self, deadline: float = 4.0) -> None:
        """Remove the tenant machines, then delete the load balancer and the network.

        The tenant machines go first: the agent removes a network's bridge only once nothing
        else is plugged into it. A create that was sent but not answered is sent again with the
        same command id, which answers with the id it made (or makes it, to be deleted at once).
        """
        end = time.monotonic() + deadline
        for p in self.servers:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        for p in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 2)
        for ns in self.namespaces:
            await remove_namespace(ns)
        for veth in self.veths:
            await ip("link", "del", veth, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        with contextlib.suppress(Exception):
            await self._delete_resources(end)
            self.record_file.unlink(missing_ok=True)  # all it asked for is deleted
        with contextlib.suppress(OSError):
            self.workdir.rmdir()  # when nothing is left in it

    async def _delete_resources(self, end: float) -> None:
        def left() -> float:
            return max(0.1, end - time.monotonic())

        if self.net_sent and not self.net_id:
            reply = await self.request(f"splice.cmd.{TENANT}.network.create",
                                       self.network_body(), timeout=left())
            self.net_id = reply.get("id", "") if reply.get("ok") else ""
        if self.lb_sent and not self.lb_id and self.net_id:
            reply = await self.request(f"splice.cmd.{TENANT}.loadbalancer.create",
                                       self.lb_body(self.service_type_id), timeout=left())
            self.lb_id = reply.get("id", "") if reply.get("ok") else ""
        if self.lb_id:
            await self.request(f"splice.cmd.{TENANT}.loadbalancer.delete", {
                "command_id": self._ids("lb-delete"), "actor": "demo", "id": self.lb_id},
                timeout=left())
            await self.wait_for("LoadBalancerDeleted", deadline=left())
        if self.net_id:
            await self.request(f"splice.cmd.{TENANT}.network.delete", {
                "command_id": self._ids("network-delete"), "actor": "demo", "id": self.net_id},
                timeout=left())


async def remove_namespace(ns: str) -> None:
    """Kill what runs in a namespace, then delete it (its veths and their peers go with it)."""
    for pid in (await ip("netns", "pids", ns, check=False)).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    await ip("netns", "del", ns, check=False)
