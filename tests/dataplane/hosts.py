"""Hosts simulated on one machine: a network namespace per host, joined by an underlay (a bridge
in the root namespace with an address of its own, veths with MTU 1550), each with its own
`splice agent --netns <host>` process; the NATS server listens on the underlay's address, so
a host cut from the underlay is cut from NATS too, as a real one would be.

Tenant machines are namespaces plugged as Nova plugs a compute port: a veth named as Neutron
names the port's interface (``tap`` + 11 characters of the port id) in the host's namespace,
in the network's bridge there (the agent makes it for a port bound to it), the machine's end
with the port's MAC and address.

Everything is named with the fabric's tag and removed by `close()`, also after a failure.
Addresses: the underlay 10.99.<n>.0/24 (the root end .254, host i .i).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from splice.agents import netns
from splice.agents.drivers.tap.model import port_interface
from splice.agents.model import NetworkSpec

BIN = Path(sys.executable).parent


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


def wait_for(check: Callable[[], object], what: str, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class SimHost:
    name: str  # the host's name, its namespace's and its agent's
    index: int
    underlay_ip: str
    prefix: str  # its agent's: every host's things are its own
    root_if: str  # the root end of its underlay veth
    agent: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def ip(self, *argv: str, check: bool = True) -> str:
        return sh("ip", "-n", self.name, *argv, check=check)

    def bridge(self, network_id: str) -> str:
        return NetworkSpec(network_id, "", "").bridge_name(self.prefix)


@dataclass
class Cluster:
    tag: str
    state: Path
    subnet: int = field(default_factory=lambda: 100 + os.getpid() % 100)
    hosts: dict[str, SimHost] = field(default_factory=dict)
    machines: list[str] = field(default_factory=list)

    @property
    def underlay(self) -> str:
        return f"{self.tag}ul"

    @property
    def gateway(self) -> str:
        return f"10.99.{self.subnet}.254"

    def build(self, count: int) -> None:
        sh("ip", "link", "add", self.underlay, "mtu", "1550", "type", "bridge", "stp_state", "0")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.underlay)
        sh("ip", "link", "set", self.underlay, "up")
        for i in range(1, count + 1):
            name = f"{self.tag}h{i}"
            prefix = f"d{os.getpid() % 0xFFF:x}{i}-"  # an agent's prefix: 6 characters at most
            h = SimHost(name, i, f"10.99.{self.subnet}.{i}", prefix, f"{self.tag}u{i}")
            netns.ensure_namespace(name)
            sh("ip", "link", "add", h.root_if, "mtu", "1550", "type", "veth", "peer", "name", "ul0",
               "mtu", "1550", "netns", name)
            sh("ip", "link", "set", h.root_if, "master", self.underlay, "up")
            h.ip("addr", "add", f"{h.underlay_ip}/24", "dev", "ul0")
            h.ip("link", "set", "ul0", "up")
            h.ip("link", "set", "lo", "up")
            self.hosts[name] = h

    def start_agent(self, name: str, nats_url: str, providers: tuple[str, ...] = ()) -> None:
        h = self.hosts[name]
        h.log = self.state / f"{name}.log"
        argv = [str(BIN / "splice"), "agent", "--netns", name, "--host", name,
                "--underlay-ip", h.underlay_ip, "--prefix", h.prefix, "--nats-url", nats_url,
                "--state-dir", str(self.state / name), "--resync", "1", "--log-level", "INFO"]
        for p in providers:
            argv += ["--provider", p]
        env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
        for key in ("SPLICE_CREDS", "SPLICE_TENANT"):
            env.pop(key, None)
        with open(h.log, "ab") as log:
            h.agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def kill_agent(self, name: str) -> None:
        """SIGKILL: what it made stays behind, as on a host that lost power to its agent."""
        h = self.hosts[name]
        if h.agent is not None and h.agent.poll() is None:
            h.agent.send_signal(signal.SIGKILL)
            h.agent.wait(10)
        h.agent = None

    def stop_agent(self, name: str) -> None:
        h = self.hosts[name]
        if h.agent is not None and h.agent.poll() is None:
            h.agent.send_signal(signal.SIGTERM)
            try:
                h.agent.wait(20)
            except subprocess.TimeoutExpired:
                h.agent.kill()
                h.agent.wait(10)
        h.agent = None

    def cut(self, name: str) -> None:
        sh("ip", "link", "set", self.hosts[name].root_if, "down")

    def mend(self, name: str) -> None:
        sh("ip", "link", "set", self.hosts[name].root_if, "up")

    def plug(self, host: str, machine: str, network_id: str, port_id: str, mac: str,
             address: str, gateway: str | None = None) -> None:
        """A machine on `host`, its port's interface in the network's bridge there."""
        h = self.hosts[host]
        bridge = h.bridge(network_id)
        wait_for(lambda: h.ip("link", "show", bridge, check=False), f"{bridge} on {host}")
        ns = f"{self.tag}m-{machine}"
        netns.ensure_namespace(ns)
        self.machines.append(ns)
        dev = port_interface(port_id)
        h.ip("link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns)
        h.ip("link", "set", dev, "master", bridge, "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
        sh("ip", "-n", ns, "addr", "add", address, "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        if gateway:
            sh("ip", "-n", ns, "route", "add", "default", "via", gateway)

    def machine(self, name: str) -> str:
        return f"{self.tag}m-{name}"

    def close(self) -> None:
        for name in list(self.hosts):
            with contextlib.suppress(Exception):
                self.kill_agent(name)
        for ns in self.machines:
            netns.kill_namespace_processes(ns)
            netns.delete_namespace(ns)
        for h in self.hosts.values():
            # what its agent made: service namespaces of its prefix (its devices go with its ns)
            for ns in netns.list_namespaces(h.prefix):
                netns.kill_namespace_processes(ns)
                netns.delete_namespace(ns)
            netns.kill_namespace_processes(h.name)
            netns.delete_namespace(h.name)
        netns.delete_link(self.underlay)
        for h in self.hosts.values():
            netns.delete_link(h.root_if)


async def command(nc: Any, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    """One command (`subject` after ``splice.cmd.``); its reply, which must be ok."""
    body = {"command_id": str(uuid.uuid4()), "actor": "e2e", **body}
    reply = json.loads((await nc.request(f"splice.cmd.{subject}", json.dumps(body).encode(),
                                         timeout=15)).data)
    if not reply["ok"]:
        raise AssertionError((subject, reply))
    return dict(reply)


@contextlib.asynccontextmanager
async def running(state: Path, tag: str, count: int,
                  providers: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    """`count` simulated hosts (no agent yet), a nats-server on the underlay's address, the
    command service with its host monitor, and a default service type of `providers`. Yields
    ``cluster``, ``nc``, ``url`` and ``events``: the host registry's events as they come,
    (type, payload, time.monotonic()). Everything goes afterwards; the agents' logs are
    printed (pytest shows them when a test failed)."""
    from splice.natsserver import NatsServer
    from splice.services.service import CommandService

    if os.geteuid() != 0:
        raise RuntimeError("needs root")
    cluster = Cluster(tag, state)
    server: NatsServer | None = None
    svc: CommandService | None = None
    nc: Any = None
    events: list[tuple[str, dict[str, Any], float]] = []
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, cluster.build, count)
        server = NatsServer(store_dir=state / "nats", host=cluster.gateway)
        server.start()
        svc = CommandService(server.url)
        await svc.start()
        nc = await nats.connect(server.url)

        async def on_host(msg: Any) -> None:
            events.append((msg.subject.rsplit(".", 1)[-1], json.loads(msg.data), time.monotonic()))

        await nc.subscribe("splice.evt._admin.hosts.>", cb=on_host)
        await command(nc, "_admin.servicetype.create", {
            "name": tag, "default": True, "providers": providers})
        yield {"cluster": cluster, "nc": nc, "url": server.url, "events": events}
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        if svc is not None:
            await svc.stop()
        await loop.run_in_executor(None, cluster.close)
        if server is not None:
            server.stop()
        for h in cluster.hosts.values():
            if h.log is not None and h.log.exists():
                sys.stdout.write(f"--- agent {h.name}\n{h.log.read_text()[-3000:]}\n")


def http_lb(network: str, vip: str, member: str, **extra: Any) -> dict[str, Any]:
    """A `loadbalancer.create` body: HTTP on `vip`:80 to one member on `member`:8080."""
    return {"name": "x", "vip_network_id": network, "vip_address": vip, **extra,
            "pools": [{"name": "p", "protocol": "HTTP", "members": [
                {"address": member, "protocol_port": 8080}]}],
            "listeners": [{"name": "l", "protocol": "HTTP", "protocol_port": 80,
                           "default_pool": "p"}]}


def registered(events: list[tuple[str, dict[str, Any], float]]) -> set[str]:
    """The hosts that registered (at least once)."""
    return {p["host"] for t, p, _ in events if t == "HostRegistered"}


def lost(events: list[tuple[str, dict[str, Any], float]]) -> list[str]:
    """The hosts declared lost, in order."""
    return [p["host"] for t, p, _ in events if t == "HostLost"]
