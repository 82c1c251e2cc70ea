"""`splice up` stops within a few seconds wherever SIGINT or SIGTERM lands, and leaves nothing.

Each case starts a real `splice up` (embedded nats-server, command service, projector, local
agent, and the demo with namespaces and haproxy), sends the signal at one point of its life,
and checks the time from the signal to the exit and that no namespace, link, process or
temporary directory of it is left behind.
"""

from __future__ import annotations

import os
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


@dataclass
class Running:
    proc: subprocess.Popen[str]
    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    seen: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.seen:
                self.lines.append((time.monotonic() - self.started, line.rstrip()))
                self.seen.notify_all()

    def wait_for_line(self, marker: str, deadline_s: float = 60) -> None:
        end = time.monotonic() + deadline_s
        with self.seen:
            while not any(marker in text for _, text in self.lines):
                left = end - time.monotonic()
                assert left > 0 and self.proc.poll() is None, (
                    f"no line with {marker!r} within {deadline_s}s:\n{self.output()}"
                )
                self.seen.wait(min(left, 0.5))

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

    def start(*args: str) -> Running:
        tmp = short_tmp / "tmp"
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TMPDIR=str(tmp), SPLICE_LOG_LEVEL="WARNING")
        env.pop("SPLICE_NATS_URL", None)
        proc = subprocess.Popen(
            [SPLICE, "up", "--state-dir", str(short_tmp / "state"), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        running = Running(proc, time.monotonic())
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
    # way (128 + the signal, or killed by it): nothing of Splice exists yet at that point
    assert running.proc.returncode in (0, 128 + sig, -sig), running.output()
    assert took < STOP_WITHIN_S

    namespaces, links = before
    assert _spl_namespaces() - namespaces == set(), running.output()
    assert _spl_links() - links == set(), running.output()
    # what it ran: nats-server and haproxy (state dir), the demo's web servers (TMPDIR)
    assert _live_processes_mentioning(str(short_tmp)) == [], running.output()
    assert list((short_tmp / "tmp").iterdir()) == [], "the demo's temporary files are left"
