"""Firewall and port forwarding with nftables on real namespaces and real traffic (issue 12).

A router namespace with three legs, each a veth to a namespace of its own::

    client 10.77.8.2 ──a0── router ──b0── server 10.77.9.2 (TCP 80, 81, 82: greet, then echo)
                             └──x0── external 10.77.10.2 (TCP 80; no route back to 10.77.8/9)

Tables are planned with the driver's pure `plan`, applied by its `apply` inside the router
namespace, and every test ends converged (a second plan is empty). Names carry the test prefix
``splt-``; everything lives in namespaces this module makes, and goes with them even when a
test fails. Run under the dataplane lock:

    flock /tmp/splice-dataplane.lock .venv/bin/python -m pytest tests/dataplane/test_firewall.py
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from pyroute2 import netns

from splice.agents.drivers.nftables import apply as napply
from splice.agents.drivers.nftables.apply import Outcome
from splice.agents.drivers.nftables.conntrack import FirewallGuard, NatGuard
from splice.agents.drivers.nftables.plan import Desired, ReplaceTable, plan
from splice.agents.drivers.nftables.render import (
    firewall_table,
    nat_table,
    render_firewall,
    render_nat,
)
from splice.events import advanced as ev
from splice.events.advanced import FirewallRule, PortForward
from splice.events.advanced_fold import FirewallState, apply, fold_firewall
from splice.events.wire import InsertionState
from tests.dataplane.fabric import wait_until

pytestmark = pytest.mark.routed

PREFIX = "splt-"
CLIENT, SERVER, EXTERNAL = "10.77.8.2", "10.77.9.2", "10.77.10.2"
ROUTER_A, ROUTER_B, ROUTER_X = "10.77.8.1", "10.77.9.1", "10.77.10.1"
ROUTER_ID = str(uuid.uuid4())
FW_ID = f"acme.firewall.{uuid.uuid4()}"
DENY_WAIT_S = 0.5  # a dropped SYN: no answer within this (local veths answer in microseconds)
NAMES = re.compile(r"splt-r[0-9a-f]+-(rtr|cli|srv|ext)")

SERVER_CODE = """
import socket, sys, threading
def talk(c, peer):
    with c:
        c.sendall(peer[0].encode() + b"\\n")
        while data := c.recv(4096):
            c.sendall(data)
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        c, peer = s.accept()
        threading.Thread(target=talk, args=(c, peer), daemon=True).start()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
threading.Event().wait()
"""


FLOOD_CODE = """
import socket, sys, threading
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
target, sent = (sys.argv[1], int(sys.argv[2])), 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    while not stop.is_set():
        try:
            s.sendto(b"x", target)
            sent += 1
        except OSError:
            pass
print(sent)
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# --------------------------------------------------------------------------- the topology


class Topology:
    def __init__(self, tag: str) -> None:
        self.rtr, self.cli, self.srv, self.ext = (f"splt-r{tag}-{n}" for n in
                                                  ("rtr", "cli", "srv", "ext"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, ThreadPoolExecutor] = {}

    def build(self) -> None:
        for ns in (self.rtr, self.cli, self.srv, self.ext):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for leg, peer, router_ip, peer_ip, gateway in (
            ("a0", self.cli, ROUTER_A, CLIENT, True),
            ("b0", self.srv, ROUTER_B, SERVER, True),
            ("x0", self.ext, ROUTER_X, EXTERNAL, False),  # no route back: only SNAT answers
        ):
            sh("ip", "-n", self.rtr, "link", "add", leg, "type", "veth", "peer", "name", "eth0",
               "netns", peer)
            sh("ip", "-n", self.rtr, "addr", "add", f"{router_ip}/24", "dev", leg)
            sh("ip", "-n", self.rtr, "link", "set", leg, "up")
            sh("ip", "-n", peer, "addr", "add", f"{peer_ip}/24", "dev", "eth0")
            sh("ip", "-n", peer, "link", "set", "eth0", "up")
            if gateway:
                sh("ip", "-n", peer, "route", "add", "default", "via", router_ip)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.all.send_redirects=0"):
            sh("ip", "netns", "exec", self.rtr, "sysctl", "-qw", key)
        self.serve(self.srv, 80, 81, 82)
        self.serve(self.ext, 80)
        for ns in (self.rtr, self.cli, self.ext):
            self.workers[ns] = ThreadPoolExecutor(max_workers=4, initializer=netns.setns,
                                                  initargs=(ns, 0, None, False))
        for port in (80, 81, 82):
            wait_until(lambda p=port: self.connect(self.cli, SERVER, p, 0.5).startswith("ok"), 15,
                       f"the server's port {port}")
        wait_until(lambda: self.connect(self.rtr, EXTERNAL, 80, 0.5).startswith("ok"), 15,
                   "the external server")

    def serve(self, ns: str, *ports: int) -> None:
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER_CODE, *map(str, ports)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def teardown(self) -> None:
        for w in self.workers.values():
            w.shutdown(wait=False, cancel_futures=True)
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.kill()
                p.wait(timeout=5)
        sweep(self.rtr, self.cli, self.srv, self.ext)

    # ------------------------------------------------------------------ traffic

    def connect(self, ns: str, addr: str, port: int, timeout: float = 2.0) -> str:
        """A new TCP connection from ``ns``: ``ok:<the client's address as the server saw
        it>``, ``refused``, ``timeout`` or ``error:<errno>``."""
        return self.workers[ns].submit(_connect, addr, port, timeout).result()

    def open(self, ns: str, addr: str, port: int) -> socket.socket:
        """A connection kept open (the greeting read)."""
        return self.workers[ns].submit(_open, addr, port).result()

    def flows(self) -> int:
        out = subprocess.run(["ip", "netns", "exec", self.rtr, "conntrack", "-C"],
                             capture_output=True, text=True, check=True).stdout
        return int(out.strip() or 0)

    # ------------------------------------------------------------------ nftables

    def converge(self, *desired: Desired) -> list[Outcome]:
        """Observe, plan, apply in the router; then a second plan must be empty."""
        outcomes = napply.apply(self.rtr, plan(desired, self.observe(), prefix=PREFIX))
        assert all(o.ok for o in outcomes), [o.reason for o in outcomes if not o.ok]
        assert plan(desired, self.observe(), prefix=PREFIX) == []
        return outcomes

    def observe(self) -> Any:
        return napply.observe(self.rtr, PREFIX)

    def nft(self, *argv: str) -> str:
        return sh("ip", "netns", "exec", self.rtr, "nft", *argv)


def _connect(addr: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            return "ok:" + s.makefile("r").readline().strip()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return f"error:{errno.errorcode.get(e.errno or 0, e.errno)}"


def _open(addr: str, port: int) -> socket.socket:
    s = socket.create_connection((addr, port), timeout=2)
    s.makefile("rb").readline()
    return s


def echoes(s: socket.socket, timeout: float = DENY_WAIT_S) -> bool:
    """Does the open connection still carry data both ways?"""
    s.settimeout(timeout)
    try:
        s.sendall(b"ping\n")
        return s.recv(16) == b"ping\n"
    except OSError:  # timed out, reset
        return False


def sweep(*names: str) -> None:
    """Kill what runs in these namespaces, then delete them (their veths go with them)."""
    for ns in names:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0:
        raise RuntimeError("the dataplane suite needs root (namespaces, nft, conntrack)")
    sweep(*(n for n in sh("ip", "netns", "list").split() if NAMES.fullmatch(n)))  # a killed run's
    t = Topology(format(os.getpid() % 0xFFFF, "x"))
    try:
        t.build()
        yield t
    finally:
        t.teardown()


@pytest.fixture
def router(topo: Topology) -> Iterator[Topology]:
    """The topology with no table of ours and no tracked flow, before and after each test."""
    topo.converge()
    yield topo
    topo.converge()
    sh("ip", "netns", "exec", topo.rtr, "conntrack", "-F")


# --------------------------------------------------------------------------- specs


def meta() -> dict[str, Any]:
    return {"timestamp": datetime.now(UTC), "actor": "test", "command_id": str(uuid.uuid4()),
            "correlation_id": "test"}


def rule(action: str = "allow", **fields: Any) -> FirewallRule:
    return FirewallRule(id=str(uuid.uuid4()), action=action, **fields)  # type: ignore[arg-type]


def tcp(port: int | str, action: str = "allow", **fields: Any) -> FirewallRule:
    return rule(action, protocol="tcp", destination_port=str(port), **fields)


def firewall(*rules: FirewallRule, default: str = "deny") -> FirewallState:
    insertion = InsertionState(mode="routed", service_type_id="st", provider="nftables",
                               router_id=ROUTER_ID)
    return fold_firewall([ev.FirewallCreated(**meta(), name="fw", rules=list(rules),
                                             default_action=default, insertion=insertion,
                                             network_id=None, port_ids=[])])


def fw(state: FirewallState, *, accept_dnat: bool = False, cut: bool = True) -> Desired:
    return Desired(FW_ID, render_firewall(state, firewall_table(PREFIX, FW_ID),
                                          accept_dnat=accept_dnat),
                   FirewallGuard.of(state, accept_dnat=accept_dnat) if cut else None)


def nat(*forwards: PortForward, snat: bool = False) -> Desired:
    return Desired(ROUTER_ID, render_nat(nat_table(PREFIX, ROUTER_ID), list(forwards),
                                         external_interface="x0",
                                         external_addresses=[ROUTER_X], snat=snat),
                   NatGuard.of(forwards, [ROUTER_X], snat))


def forward(ext: int, port: int = 80) -> PortForward:
    return PortForward(id=str(uuid.uuid4()), protocol="tcp", external_port=ext,
                       internal_address=SERVER, internal_port=port)


# --------------------------------------------------------------------------- tests


def test_an_allow_passes_and_the_default_action_drops_the_rest(router: Topology) -> None:
    assert router.connect(router.cli, SERVER, 81) == f"ok:{CLIENT}"  # no table: routed
    outcomes = router.converge(fw(firewall(tcp(80))))
    assert [type(o.op) for o in outcomes] == [ReplaceTable]
    assert router.connect(router.cli, SERVER, 80) == f"ok:{CLIENT}"
    assert router.connect(router.cli, SERVER, 81, DENY_WAIT_S) == "timeout"
    assert router.connect(router.cli, SERVER, 82, DENY_WAIT_S) == "timeout"
    # the chain holds an integer priority and its hook (read back, not assumed)
    (chain,) = [o["chain"] for o in json.loads(router.nft("-j", "list", "table", "inet",
                                                          firewall_table(PREFIX, FW_ID)))
                ["nftables"] if "chain" in o]
    assert (chain["hook"], chain["prio"], chain["policy"]) == ("forward", 0, "drop")


def test_a_deny_before_an_allow_wins_and_moving_it_changes_the_outcome(
    router: Topology
) -> None:
    deny, allow = tcp(80, "deny", source_cidr="10.77.8.0/24"), tcp(80)
    state = firewall(deny, allow, default="allow")
    router.converge(fw(state))
    assert router.connect(router.cli, SERVER, 80, DENY_WAIT_S) == "timeout"
    apply(state, ev.FirewallRuleMoved(**meta(), rule_id=deny.id, index=1))  # after the allow
    assert [r.id for r in state.rules] == [allow.id, deny.id]
    router.converge(fw(state))
    assert router.connect(router.cli, SERVER, 80) == f"ok:{CLIENT}"


def test_reject_answers_at_once_while_deny_times_out(router: Topology) -> None:
    router.converge(fw(firewall(tcp(80, "reject"), tcp(81, "deny"),
                                rule("reject", destination_cidr=f"{SERVER}/32"),
                                default="allow")))
    for port, expected in ((80, "refused"), (82, "refused")):  # tcp reset; icmp unreachable
        start = time.monotonic()
        assert router.connect(router.cli, SERVER, port, DENY_WAIT_S) == expected, port
        assert time.monotonic() - start < DENY_WAIT_S / 2
    start = time.monotonic()
    assert router.connect(router.cli, SERVER, 81, DENY_WAIT_S) == "timeout"
    assert time.monotonic() - start >= DENY_WAIT_S * 0.9


def test_an_open_connection_is_cut_when_the_rule_that_allowed_it_goes(
    router: Topology
) -> None:
    on80, on81 = tcp(80), tcp(81)
    state = firewall(on80, on81)
    router.converge(fw(state))
    c80, c81 = router.open(router.cli, SERVER, 80), router.open(router.cli, SERVER, 81)
    try:
        assert echoes(c80) and echoes(c81)
        apply(state, ev.FirewallRuleRemoved(**meta(), rule_id=on80.id))
        # the rule alone is not enough: conntrack keeps the established flow going
        router.converge(fw(state, cut=False))
        assert echoes(c80)
        assert router.connect(router.cli, SERVER, 80, DENY_WAIT_S) == "timeout"
        # the driver's cut: exactly the flows the new rules refuse
        flows = router.flows()
        cut = napply.cut_flows(router.rtr, FirewallGuard.of(state))
        assert cut.cut == 1 and cut.listed == flows, cut
        assert not echoes(c80)
        assert echoes(c81)
        # a change planned as usual cuts on its own: the deny now covers port 81 too
        apply(state, ev.FirewallRuleInserted(**meta(), rule=tcp(81, "deny"), index=0))
        (outcome,) = router.converge(fw(state))
        assert outcome.cut is not None and outcome.cut.cut == 1, outcome
        assert not echoes(c81)
    finally:
        c80.close()
        c81.close()


def test_a_port_forward_reaches_the_internal_server_through_the_external_address(
    router: Topology
) -> None:
    assert router.connect(router.ext, ROUTER_X, 8080) == "refused"  # the router itself
    router.converge(nat(forward(8080)))
    assert router.connect(router.ext, ROUTER_X, 8080) == f"ok:{EXTERNAL}"
    # a default-deny firewall on the router governs forwarded flows too, unless told not to
    router.converge(nat(forward(8080)), fw(firewall()))
    assert router.connect(router.ext, ROUTER_X, 8080, DENY_WAIT_S) == "timeout"
    router.converge(nat(forward(8080)), fw(firewall(), accept_dnat=True))
    kept = router.open(router.ext, ROUTER_X, 8080)
    try:
        assert echoes(kept)
        # the forward goes: its open connection is cut with it
        (outcome,) = router.converge(nat(), fw(firewall(), accept_dnat=True))
        assert outcome.cut is not None and outcome.cut.cut == 1, outcome
        assert not echoes(kept)
        assert router.connect(router.ext, ROUTER_X, 8080) == "refused"
    finally:
        kept.close()


def test_snat_shows_an_external_server_the_routers_address(router: Topology) -> None:
    assert router.connect(router.cli, EXTERNAL, 80, DENY_WAIT_S) == "timeout"  # no way back
    router.converge(nat(snat=True))
    assert router.connect(router.cli, EXTERNAL, 80) == f"ok:{ROUTER_X}"


def test_replacing_the_rules_lets_no_blocked_packet_through(router: Topology) -> None:
    """A UDP flood at a port no ruleset allows, while the rules are replaced again and again:
    the server's namespace counts what arrives (nothing may)."""
    count = ["ip", "netns", "exec", router.srv, "nft"]
    subprocess.run([*count, "-f", "-"], check=True, text=True,
                   input="table ip splt-count {\n chain input {\n"
                         "  type filter hook input priority 0;\n  udp dport 9999 counter\n }\n}\n")

    def arrived() -> int:
        listing = json.loads(sh(*count, "-j", "list", "table", "ip", "splt-count"))
        return sum(e["counter"]["packets"] for o in listing["nftables"] if "rule" in o
                   for e in o["rule"]["expr"] if "counter" in e)

    a = firewall(tcp(80), rule("deny", protocol="udp"))
    b = firewall(tcp(81), tcp(80))
    try:
        router.converge(fw(a))
        flood = subprocess.Popen(
            ["ip", "netns", "exec", router.cli, sys.executable, "-c", FLOOD_CODE, SERVER, "9999"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            start = time.monotonic()
            for i in range(40):
                router.converge(fw(b if i % 2 else a))
            elapsed = time.monotonic() - start
        finally:
            sent = int(flood.communicate("", timeout=10)[0] or 0)
        assert sent > 1000, sent
        assert arrived() == 0, f"{arrived()} of {sent} blocked packets leaked"
        print(f"40 replacements in {elapsed:.2f}s under {sent / elapsed:.0f} packets/s: 0 leaked")
        router.converge(fw(firewall(rule(protocol="udp"))))  # the probe works: allowed, counted
        router.workers[router.cli].submit(_send, SERVER, 9999, 100).result()
        wait_until(arrived, 2, "allowed packets to be counted")
    finally:
        sh(*count, "delete", "table", "ip", "splt-count")


def _send(addr: str, port: int, count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x", (addr, port))


def test_deleting_removes_only_our_tables_and_drift_is_repaired(router: Topology) -> None:
    state = firewall(tcp(80))
    router.converge(fw(state), nat(forward(8080), snat=True))
    table = firewall_table(PREFIX, FW_ID)
    # drift: a rule deleted by hand, then the whole table
    handle = next(o["rule"]["handle"] for o in json.loads(router.nft("-j", "list", "table",
                                                                     "inet", table))["nftables"]
                  if "rule" in o and o["rule"]["expr"][-1] == {"accept": None}
                  and "payload" in json.dumps(o))
    router.nft("delete", "rule", "inet", table, "forward", "handle", str(handle))
    assert router.connect(router.cli, SERVER, 80, DENY_WAIT_S) == "timeout"
    (op,) = plan([fw(state), nat(forward(8080), snat=True)], router.observe(), prefix=PREFIX)
    assert isinstance(op, ReplaceTable) and not op.created
    router.converge(fw(state), nat(forward(8080), snat=True))
    assert router.connect(router.cli, SERVER, 80) == f"ok:{CLIENT}"
    router.nft("delete", "table", "inet", table)
    (op,) = plan([fw(state), nat(forward(8080), snat=True)], router.observe(), prefix=PREFIX)
    assert isinstance(op, ReplaceTable) and op.created
    router.converge(fw(state), nat(forward(8080), snat=True))
    # deleting: ours go, the others' stay
    router.nft("add", "table", "inet", "other")
    router.nft("add", "table", "inet", "splt-l4-0123abcd")
    try:
        router.converge()
        tables = router.nft("list", "tables").split()
        assert "other" in tables and "splt-l4-0123abcd" in tables
        assert not any(t.startswith(("splt-fw-", "splt-nat-")) for t in tables)
        assert router.connect(router.cli, SERVER, 81) == f"ok:{CLIENT}"
    finally:
        router.nft("delete", "table", "inet", "other")
        router.nft("delete", "table", "inet", "splt-l4-0123abcd")
