"""Fixtures of the read-side tests: a read-model database per backend, a running projector.

`db_url` runs each test against SQLite (a file in the test's tmp dir) and PostgreSQL (a
database of the test's own on the local server, dropped afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from splice.natsserver import NatsServer
from splice.projections.runner import run_projector
from splice.projections.store import with_database

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "readmodels.sqlite")
        return
    name = f"splice_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is not available: {e}")
    try:
        yield with_database(PG_ADMIN, name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def nc(fresh_nats: NatsServer) -> AsyncIterator[Any]:
    conn = await nats.connect(fresh_nats.url)
    yield conn
    await conn.close()


async def wait_for_responder(nc: Any, subject: str, timeout: float = 15.0) -> None:
    """Poll until something answers `subject` (the projector's query service is up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(subject, b"{}", timeout=1)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
async def projector(fresh_nats: NatsServer, db_url: str, nc: Any) -> AsyncIterator[str]:
    """The projector of `splice up`, running in this test's loop; yields the db url."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_projector(fresh_nats.url, db_url, stop, batch_size=500))
    try:
        await wait_for_responder(nc, "splice.qry._admin.servicetypes")
        yield db_url
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
