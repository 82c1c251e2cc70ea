"""Output that outlives its reader: `splice up 2>&1 | tee log`, then Ctrl-C.

The terminal's SIGINT ends `tee` too, so everything `splice up` prints while it stops (its own
lines, structlog's, its children's) goes into a pipe nobody reads: EPIPE. A Python write raises
BrokenPipeError wherever it happens (in the middle of a clean-up), a Go child (nats-server) dies
of SIGPIPE, and Python's last flush at exit fails again.

`relayed_output()` puts a pipe of our own under stdout and stderr when they are pipes or
sockets: writers (this process and every child it starts) always write into it, and a thread
copies what arrives to the real output until the first write there fails, then drops the rest.
No writer ever sees EPIPE. A terminal is left as it is (rich keeps its colours); a hang-up
(SIGHUP) turns it into /dev/null, see `detach_terminal()`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from collections.abc import Iterator

RELAY_DRAIN_S = 1.0  # how long the relay may take to pass on the last lines at the end


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _to_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


class _Relay:
    """The file descriptors `fds` (all the same file) write into our pipe; a thread copies."""

    def __init__(self, fds: tuple[int, ...]) -> None:
        self.fds = fds
        self.real = os.dup(fds[0])
        self.broken = False
        read, write = os.pipe()
        for fd in fds:
            os.dup2(write, fd)
        os.close(write)
        self.read = read
        self.thread = threading.Thread(target=self._copy, name="output-relay", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        while data := os.read(self.read, 65536):
            view = memoryview(data)
            while view and not self.broken:
                try:
                    view = view[os.write(self.real, view):]
                except OSError:  # EPIPE (the reader is gone), EIO (the terminal hung up)
                    self.broken = True

    def close(self) -> None:
        """Give the fds back: to the real output, or to /dev/null once it broke (so that
        Python's flush at exit does not fail on it), then let the thread pass on the rest.
        Children that still hold our pipe keep the thread reading; it is a daemon and goes
        with the process (and keeps `real` open: its number must not be reused under it)."""
        for fd in self.fds:
            if self.broken:
                _to_devnull(fd)
            else:
                os.dup2(self.real, fd)
        self.thread.join(RELAY_DRAIN_S)
        if self.broken:  # it broke while passing on the rest
            for fd in self.fds:
                _to_devnull(fd)
        if not self.thread.is_alive():
            os.close(self.real)
            os.close(self.read)


@contextlib.contextmanager
def relayed_output() -> Iterator[None]:
    """Stdout and stderr (when they are pipes) through a relay that tolerates a gone reader."""
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            f.flush()
    relays: list[_Relay] = []
    if _is_pipe(1) and _is_pipe(2) and _same_file(1, 2):
        relays.append(_Relay((1, 2)))  # `2>&1`: one relay keeps their order
    else:
        relays += [_Relay((fd,)) for fd in (1, 2) if _is_pipe(fd)]
    try:
        yield
    finally:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                f.flush()
        for relay in relays:
            relay.close()


def detach_terminal() -> None:
    """On a hang-up, stdout and stderr that are terminals become /dev/null: the terminal is
    gone, and writing to it would fail (EIO) in the middle of stopping."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                _to_devnull(fd)
