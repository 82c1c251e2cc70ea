"""Shared fixtures: a real nats-server on a free port with a temporary store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from splice.natsserver import NatsServer
from tests.leftovers import (  # noqa: F401  (hooks: a task left pending fails the run)
    pytest_configure,
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_unconfigure,
)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own (for tests that kill or restart it)."""
    server = NatsServer(store_dir=tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(fresh_nats: NatsServer) -> AsyncIterator[Any]:
    """A client connection to the test's own nats-server (a test file may define its own)."""
    conn = await nats.connect(fresh_nats.url)
    yield conn
    await conn.close()
