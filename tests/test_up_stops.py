"""`splice up` stops within a few seconds wherever SIGINT, SIGTERM or SIGHUP lands, and leaves
nothing, also when its output is a pipe nobody reads any more (`./dev up 2>&1 | tee log`, then
Ctrl-C: the terminal's SIGINT ends `tee` as well); after a SIGKILL, the next start removes what
the killed run left.

Each case starts a real `splice up` (embedded nats-server, command service, projector, local
agent, and the demo with namespaces and haproxy), sends the signal at one point of its life,
and checks the time from the signal to the exit and that no namespace, link, process or
temporary directory of it is left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SPLICE = str(Path(sys.executable).parent / "splice")
STOP_WITHIN_S = 5.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the demo's dataplane needs root")


def _spl_namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("spl")}


def _spl_links() -> set[str]:
    listed = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = {line.split(": ")[1].split("@")[0] for line in listed.splitlines() if ": " in line}
    return {n for n in names if n.startswith("spl")}


def _live_processes_mentioning(*needles: str) -> list[str]:
    """Running (not zombie) processes whose command line names one of `needles`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def terminal_signals() -> None:
    """In the child: SIGINT as a terminal's Ctrl-C finds it. A test run started as a background
    job (`./dev test &`) has SIGINT ignored, and a child inherits that: `splice up` then rightly
    ignores a SIGINT that lands before it installs its own handling."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Running:
    proc: subprocess.Popen[str]
    started: float
    close_at: str | None = None  # close our end of its output after the line with this
    lines: list[tuple[float, str]] = field(default_factory=list)
    seen: threading.Condition = field(default_factory=threading.Condition)
    closed: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.seen:
                self.lines.append((time.monotonic() - self.started, line.rstrip()))
                self.seen.notify_all()
            if self.close_at is not None and self.close_at in line:
                self.proc.stdout.close()  # what `tee` does when the terminal's Ctrl-C ends it
                self.closed.set()
                return

    def wait_for_line(self, marker: str, deadline_s: float = 60) -> None:
        end = time.monotonic() + deadline_s
        with self.seen:
            while not any(marker in text for _, text in self.lines):
                left = end - time.monotonic()
                assert left > 0 and self.proc.poll() is None, (
                    f"no line with {marker!r} within {deadline_s}s:\n{self.output()}"
                )
                self.seen.wait(min(left, 0.5))

    def text(self) -> str:
        """What it printed, as one line (rich wraps at 80 columns into a pipe)."""
        return " ".join(" ".join(text for _, text in self.lines).split())

    def output(self) -> str:
        return "\n".join(f"{t:6.2f} {text}" for t, text in self.lines)


@pytest.fixture
def before() -> tuple[set[str], set[str]]:
    return _spl_namespaces(), _spl_links()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path: haproxy's sockets live under the state directory, and
    pytest's own temporary paths grow past haproxy's limit on socket paths."""
    path = Path(tempfile.mkdtemp(prefix="splup-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_up(short_tmp: Path) -> Iterator[object]:
    runs: list[Running] = []

    def start(*args: str, close_at: str | None = None) -> Running:
        tmp = short_tmp / "tmp"
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TMPDIR=str(tmp), SPLICE_LOG_LEVEL="WARNING")
        env.pop("SPLICE_NATS_URL", None)
        proc = subprocess.Popen(
            [SPLICE, "up", "--state-dir", str(short_tmp / "state"), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            preexec_fn=terminal_signals,
        )
        running = Running(proc, time.monotonic(), close_at)
        threading.Thread(target=running.read, daemon=True).start()
        runs.append(running)
        return running

    yield start
    for running in runs:  # a failed case must not leave a Splice running
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(10)


# (where the signal lands: seconds after the start, or a line the demo prints, signal, flags)
CASES = [
    pytest.param(0.05, signal.SIGINT, ["--demo"], id="SIGINT-while-python-imports"),
    pytest.param(0.5, signal.SIGINT, ["--demo"], id="SIGINT-during-start-up"),
    pytest.param(2.0, signal.SIGINT, ["--demo"], id="SIGINT-at-2s"),
    pytest.param(4.0, signal.SIGINT, ["--demo"], id="SIGINT-at-4s"),
    pytest.param("demo: the event log", signal.SIGINT, ["--demo"],
                 id="SIGINT-while-demo-reads-the-log"),
    pytest.param("reports generation", signal.SIGINT, ["--demo"], id="SIGINT-while-demo-builds"),
    pytest.param("curl http://", signal.SIGINT, ["--demo"], id="SIGINT-while-demo-curls"),
    pytest.param("Serving commands", signal.SIGINT, ["--demo"], id="SIGINT-after-serving"),
    pytest.param("Serving commands", signal.SIGTERM, ["--demo"], id="SIGTERM-after-serving"),
    pytest.param(1.0, signal.SIGTERM, ["--demo"], id="SIGTERM-at-1s"),
    pytest.param("Serving commands", signal.SIGHUP, ["--demo"], id="SIGHUP-after-serving"),
    pytest.param("reports generation", signal.SIGHUP, ["--demo"], id="SIGHUP-while-demo-builds"),
    pytest.param("Serving commands", signal.SIGINT, [], id="SIGINT-serving-without-demo"),
]


@pytest.mark.parametrize(("when", "sig", "flags"), CASES)
def test_splice_up_stops_within_seconds_and_leaves_nothing_behind(
    start_up, before, short_tmp: Path, when: float | str, sig: signal.Signals, flags: list[str]
) -> None:
    running: Running = start_up(*flags)
    if isinstance(when, str):
        running.wait_for_line(when)
    else:
        time.sleep(when)  # the point in time is what this case pins, not a wait for a state
    assert running.proc.poll() is None, running.output()
    signalled = time.monotonic()
    running.proc.send_signal(sig)
    try:
        running.proc.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_WITHIN_S}s after {sig.name}:\n{running.output()}")
    took = time.monotonic() - signalled
    # 0 after a clean stop; a signal that lands while Python still imports ends it the shell's
    # way (128 + the signal, or killed by it): nothing of Splice exists yet at that point. One
    # that lands while the interpreter itself starts (its `site` module reading the .pth files)
    # ends it with CPython's own fatal error and 1, before any of Splice ran.
    interpreter = "Fatal Python error: init_import_site" in running.output()
    assert running.proc.returncode in (0, 128 + sig, -sig) or (
        interpreter and running.proc.returncode == 1), running.output()
    assert took < STOP_WITHIN_S

    namespaces, links = before
    assert _spl_namespaces() - namespaces == set(), running.output()
    assert _spl_links() - links == set(), running.output()
    # what it ran: nats-server and haproxy (state dir), the demo's web servers (TMPDIR)
    assert _live_processes_mentioning(str(short_tmp)) == [], running.output()
    assert list((short_tmp / "tmp").iterdir()) == [], "the demo's temporary files are left"


def _assert_nothing_left(running: Running, before: tuple[set[str], set[str]], short_tmp: Path) -> None:
    namespaces, links = before
    assert _spl_namespaces() - namespaces == set(), running.output()
    assert _spl_links() - links == set(), running.output()
    assert _live_processes_mentioning(str(short_tmp)) == [], running.output()
    assert list((short_tmp / "tmp").iterdir()) == [], "temporary files are left"


def _stop(running: Running, sig: signal.Signals) -> None:
    signalled = time.monotonic()
    running.proc.send_signal(sig)
    try:
        running.proc.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_WITHIN_S}s after {sig.name}:\n{running.output()}")
    assert time.monotonic() - signalled < STOP_WITHIN_S


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("when", ["reports generation", "Serving commands"],
                         ids=["while-demo-builds", "after-serving"])
def test_splice_up_into_a_pipe_nobody_reads_any_more_still_cleans_up(
    start_up, before, short_tmp: Path, when: str, sig: signal.Signals
) -> None:
    """`./dev up 2>&1 | tee log`, then Ctrl-C: the reader is gone before the signal lands, and
    everything printed while stopping goes into a closed pipe."""
    running: Running = start_up("--demo", close_at=when)
    running.wait_for_line(when)
    assert running.closed.wait(10), running.output()
    assert running.proc.poll() is None, running.output()
    _stop(running, sig)
    # 0: a clean stop (not 120, Python's failed last flush; not killed by SIGPIPE)
    assert running.proc.returncode == 0, running.output()
    _assert_nothing_left(running, before, short_tmp)


def test_after_a_sigkill_the_next_start_removes_what_the_killed_run_left(
    start_up, before, short_tmp: Path
) -> None:
    first: Running = start_up("--demo")
    first.wait_for_line("curl http://")  # its load balancer, haproxy and tenant machines exist
    first.proc.kill()
    first.proc.wait(10)
    namespaces, links = before
    left = _spl_namespaces() - namespaces
    assert {n for n in left if n.startswith("spl-lb-")}, f"nothing to sweep? {left}"
    assert {n for n in left if n.startswith("spldemo-")}, f"nothing to sweep? {left}"
    assert _spl_links() - links, "the killed run's bridge and veths should be left"
    assert _live_processes_mentioning(str(short_tmp)), "its haproxy and web servers run on"

    second: Running = start_up("--demo")
    second.wait_for_line("Serving commands", deadline_s=90)
    text = second.text()
    assert "did not stop cleanly" in text and "removed namespace spl-lb-" in text, text
    assert "deleting what the demo of an earlier run left" in text, text
    _stop(second, signal.SIGINT)
    assert second.proc.returncode == 0, second.output()
    _assert_nothing_left(second, before, short_tmp)


def _suggested_commands(text: str) -> list[list[str]]:
    """The `splice …` commands that the output suggests (in backticks), as the words before
    their first placeholder or option: `splice credentials issue tenant NAME` → [credentials,
    issue, tenant]."""
    found = []
    for cmd in re.findall(r"`(splice [^`]+)`", text):
        words = []
        for word in cmd.split()[1:]:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break
            words.append(word)
        found.append(words)
    return found


def test_the_demo_makes_a_served_default_and_suggests_only_real_commands(
    start_up, before, short_tmp: Path
) -> None:
    running: Running = start_up("--demo")
    running.wait_for_line("Serving commands")
    text = running.text()
    assert "default service type: gold" in text and "local agent serves haproxy" in text, text

    env = dict(os.environ, SPLICE_STATE_DIR=str(short_tmp / "state"))
    env.pop("SPLICE_NATS_URL", None)
    suggested = _suggested_commands(text)
    assert ["servicetype", "list"] in suggested and ["events"] in suggested, suggested
    for words in suggested:
        res = subprocess.run([SPLICE, *words, "--help"], env=env, capture_output=True,
                             text=True, timeout=30)
        assert res.returncode == 0, f"splice {' '.join(words)}: {res.stdout}{res.stderr}"

    def splice(*args: str) -> str:
        res = subprocess.run([SPLICE, *args], env=env, capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    # a load balancer without a service type, on the demo's network: served here, ACTIVE
    net_id = json.loads((short_tmp / "state" / "demo" / "resources.json").read_text())["net_id"]
    pools = [{"name": "p", "protocol": "HTTP",
              "members": [{"address": "10.77.9.11", "protocol_port": 8080}]}]
    listeners = [{"name": "l", "protocol": "HTTP", "protocol_port": 80, "default_pool": "p"}]
    lb_id = splice("loadbalancer", "create", "--tenant", "demo", "--name", "no-type",
                   "--vip-network-id", net_id, "--vip-address", "10.77.9.101",
                   "--pools", json.dumps(pools), "--listeners", json.dumps(listeners),
                   "-o", "value").strip()

    def event_types() -> list[str]:
        events = [json.loads(line)
                  for line in splice("events", "-t", "demo", "-o", "json").splitlines()]
        return [e["type"] for e in events if e["aggregate_id"] == lb_id]

    deadline = time.monotonic() + 30
    while "LoadBalancerProvisioned" not in (seen := event_types()):
        assert "LoadBalancerProvisioningFailed" not in seen, seen
        assert time.monotonic() < deadline, f"not ACTIVE within 30s: {seen}"
        time.sleep(0.2)
    splice("loadbalancer", "delete", lb_id, "--tenant", "demo")
    deadline = time.monotonic() + 30
    while "LoadBalancerDeleted" not in (seen := event_types()):
        assert time.monotonic() < deadline, f"not deleted within 30s: {seen}"
        time.sleep(0.2)

    _stop(running, signal.SIGINT)
    assert running.proc.returncode == 0, running.output()
    _assert_nothing_left(running, before, short_tmp)
