"""A small client of a running Splice: where its NATS is, one request, its decoded reply.

The URL comes from what the caller was given (`--nats-url`, `$SPLICE_NATS_URL`), else from the
state file that a running `splice up` keeps in its state directory. Who we are on the bus comes
from a credentials file (`--creds`, `$SPLICE_CREDS`), else from the URL itself, else from that
`splice up`'s credentials directory (the operator's). Nothing here prints or exits: the CLI
(`splice.cli`) decides what a missing Splice or a failed request looks like.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from splice.auth import SERVICE_USER, Credentials, strip_userinfo
from splice.events.subjects import JS_API_PREFIX

STATE_FILE = "splice-up.json"  # written by a running `splice up` once it serves commands
READ_DB_FILE = "readmodels.sqlite"  # the read models of `splice up`, in its state directory
CREDENTIALS_DIR = "credentials"  # the principals of `splice up`'s bus, in its state directory
TLS_DIR = "tls"  # `splice up --tls`'s certificate authority and server certificate


class NotRunning(Exception):
    """No NATS URL was given and no running `splice up` was found."""

    def __init__(self, state_file: Path) -> None:
        super().__init__(f"no running `splice up` (looked in {state_file})")
        self.state_file = state_file


def default_state_dir() -> Path:
    """$SPLICE_STATE_DIR, else $XDG_STATE_HOME/splice (~/.local/state/splice)."""
    env = os.environ.get("SPLICE_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "splice"


def default_db(state_dir: Path | None = None) -> str:
    """The SQLite file of the read models that `splice up` keeps."""
    return str((state_dir or default_state_dir()) / READ_DB_FILE)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_up(state_dir: Path | None = None) -> dict[str, Any] | None:
    """What the state file says of the `splice up` that runs from `state_dir`, if one runs."""
    state = (state_dir or default_state_dir()) / STATE_FILE
    if not state.exists():
        return None
    info = dict(json.loads(state.read_text()))
    return info if pid_alive(int(info.get("pid", 0))) else None


@dataclass(frozen=True)
class Bus:
    """Where Splice's NATS is, and who we are there."""

    url: str  # comma-separated servers, with our credentials in each (when we have some)
    js_prefix: str | None = None  # None: the services' own JetStream API; else the imported one
    tenant: str | None = None  # the tenant our credentials act as (None: any, as the operator)

    def __str__(self) -> str:
        return strip_userinfo(self.url)

    @property
    def own_tenant(self) -> str | None:
        """The tenant these credentials belong to (None for the operator and the services)."""
        t = self.tenant
        return t if t and not t.startswith("_") else None

    def jetstream(self, nc: Any) -> Any:
        return nc.jetstream(prefix=self.js_prefix) if self.js_prefix else nc.jetstream()


def resolve(
    nats_url: str | None, state_dir: Path | None = None, creds_file: str | Path | None = None
) -> Bus:
    """--nats-url / $SPLICE_NATS_URL, else the running `splice up` found in the state dir; with
    the credentials of `creds_file` ($SPLICE_CREDS), else those in the URL, else the operator's
    of that `splice up`."""
    state_dir = state_dir or default_state_dir()
    ca = state_dir / TLS_DIR / "ca.pem"
    if ca.exists() and "SSL_CERT_FILE" not in os.environ:
        os.environ["SSL_CERT_FILE"] = str(ca)  # trust `splice up --tls`'s own authority
    url = nats_url
    if not url:
        info = running_up(state_dir)
        if info is None:
            raise NotRunning(state_dir / STATE_FILE)
        url = str(info["nats_url"])
    creds_file = creds_file or os.environ.get("SPLICE_CREDS") or None
    if creds_file:
        return bus_of(url, Credentials.load(Path(creds_file)))
    user = urlsplit(url.split(",")[0] if "://" in url else f"nats://{url}").username
    if user:
        user = unquote(user)
        return Bus(url, None if user == SERVICE_USER else JS_API_PREFIX)
    admin = state_dir / CREDENTIALS_DIR / "admin-admin.json"
    if admin.exists():
        return bus_of(url, Credentials.load(admin))
    return Bus(url)


def bus_of(url: str, creds: Credentials) -> Bus:
    return Bus(creds.url(strip_userinfo(url)), creds.js_prefix, creds.tenant)


def resolve_url(nats_url: str | None, state_dir: Path | None = None) -> str:
    """The URL of `resolve`, credentials included."""
    return resolve(nats_url, state_dir).url


async def connect(url: str, **options: Any) -> Any:
    """A nats-py connection to `url` (comma-separated servers)."""
    from splice.events.natsclient import connect as connect_to

    options.setdefault("connect_timeout", 5)
    return await connect_to(url, **options)


def command_body(body: dict[str, Any]) -> dict[str, Any]:
    """A command's body as sent: unset fields left out, a command id and an actor filled in."""
    body = {k: v for k, v in body.items() if v is not None}
    body.setdefault("command_id", str(uuid.uuid4()))
    body.setdefault("actor", os.environ.get("SPLICE_ACTOR") or getpass.getuser())
    return body


async def request(bus: Bus, subject: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request over its own connection; the reply's JSON."""
    nc = await connect(bus.url, allow_reconnect=False)  # one request: fail fast, say why
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
        return dict(json.loads(msg.data))
    finally:
        await nc.close()


NO_PROJECTOR = {
    "ok": False,
    "error": {
        "code": "unavailable",
        "message": "no projector answers queries (is `splice up` running?)",
        "field": None,
    },
}


async def query(bus: Bus, tenant: str, view: str, body: dict[str, Any]) -> dict[str, Any]:
    """One query on ``splice.qry.<tenant>.<view>``; a structured error if no projector answers."""
    from nats.errors import NoRespondersError

    try:
        return await request(bus, f"splice.qry.{tenant}.{view}", body, timeout=35)
    except NoRespondersError:
        if bus.tenant is not None and bus.tenant not in (tenant, "_admin"):
            return forbidden(bus, f"{tenant}'s views")
        return dict(NO_PROJECTOR)


def forbidden(bus: Bus, what: str) -> dict[str, Any]:
    """The reply for what the bus itself refused these credentials (it never reached Splice)."""
    message = f"the credentials of {bus.tenant} do not reach {what}"
    return {"ok": False, "error": {"code": "forbidden", "message": message, "field": None}}


async def with_jetstream(bus: Bus, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `work(js)` with a JetStream context on a connection of its own."""
    nc = await connect(bus.url, allow_reconnect=False)  # one request: fail fast, say why
    try:
        return await work(bus.jetstream(nc))
    finally:
        await nc.close()
