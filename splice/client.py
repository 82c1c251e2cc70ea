"""A small client of a running Splice: where its NATS is, one request, its decoded reply.

The URL comes from what the caller was given (`--nats-url`, `$SPLICE_NATS_URL`), else from the
state file that a running `splice up` keeps in its state directory. Nothing here prints or
exits: the CLI (`splice.cli`) decides what a missing Splice or a failed request looks like.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

STATE_FILE = "splice-up.json"  # written by a running `splice up` once it serves commands
READ_DB_FILE = "readmodels.sqlite"  # the read models of `splice up`, in its state directory


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


def resolve_url(nats_url: str | None, state_dir: Path | None = None) -> str:
    """--nats-url / $SPLICE_NATS_URL, else the running `splice up` found in the state dir."""
    if nats_url:
        return nats_url
    info = running_up(state_dir)
    if info is None:
        raise NotRunning((state_dir or default_state_dir()) / STATE_FILE)
    return str(info["nats_url"])


async def connect(url: str, **options: Any) -> Any:
    """A nats-py connection to `url` (comma-separated servers)."""
    import nats

    options.setdefault("connect_timeout", 5)
    return await nats.connect(url.split(","), **options)


def command_body(body: dict[str, Any]) -> dict[str, Any]:
    """A command's body as sent: unset fields left out, a command id and an actor filled in."""
    body = {k: v for k, v in body.items() if v is not None}
    body.setdefault("command_id", str(uuid.uuid4()))
    body.setdefault("actor", os.environ.get("SPLICE_ACTOR") or getpass.getuser())
    return body


async def request(url: str, subject: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request over its own connection; the reply's JSON."""
    nc = await connect(url)
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


async def query(url: str, tenant: str, view: str, body: dict[str, Any]) -> dict[str, Any]:
    """One query on ``splice.qry.<tenant>.<view>``; a structured error if no projector answers."""
    from nats.errors import NoRespondersError

    try:
        return await request(url, f"splice.qry.{tenant}.{view}", body, timeout=35)
    except NoRespondersError:
        return dict(NO_PROJECTOR)


async def with_jetstream(url: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `work(js)` with a JetStream context on a connection of its own."""
    nc = await connect(url)
    try:
        return await work(nc.jetstream())
    finally:
        await nc.close()
