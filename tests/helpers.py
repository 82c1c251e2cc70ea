"""Small helpers shared by the integration tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats


async def request(nc: Any, subject: str, body: Any, timeout: float = 10.0) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, data, timeout=timeout)
    return dict(json.loads(msg.data))


async def cmd(nc: Any, subject: str, body: dict[str, Any], ok: bool = True) -> dict[str, Any]:
    """A command (`subject` after ``splice.cmd.``) with a fresh id; its reply, ok or not as said."""
    body = {"command_id": str(uuid.uuid4()), "actor": "it", **body}
    reply = await request(nc, f"splice.cmd.{subject}", body)
    assert reply["ok"] is ok, (subject, body, reply)
    return reply


async def stream_messages(url: str, stream: str = "SPLICE_EVENTS") -> list[dict[str, Any]]:
    """Every message in the stream: seq, subject, headers, payload (decoded JSON or raw)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out: list[dict[str, Any]] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            raw = await js.get_msg(stream, seq, direct=True)
            try:
                payload: Any = json.loads(raw.data) if raw.data else None
            except ValueError:
                payload = raw.data
            out.append(
                {
                    "seq": seq,
                    "subject": raw.subject,
                    "headers": raw.headers or {},
                    "payload": payload,
                }
            )
        return out
    finally:
        await nc.close()


async def event_messages(url: str) -> list[dict[str, Any]]:
    return [m for m in await stream_messages(url) if m["subject"].startswith("splice.evt.")]


async def wait_for(
    cond: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    every: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        res = cond()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)


# -- the `splice` command, as a user runs it ------------------------------------------------

SPLICE = str(Path(sys.executable).parent / "splice")


def splice_run(*args: str, env: dict[str, str], timeout: float = 90
               ) -> subprocess.CompletedProcess[str]:
    """`splice ARGS` with `env`; its output captured."""
    return subprocess.run([SPLICE, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def splice_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    """`splice ARGS -o json`, which must succeed: its object."""
    res = splice_run(*args, "-o", "json", env=env)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return dict(json.loads(res.stdout))
