"""Running the projector: consume the stream into the read models and answer queries.

`run_projector` is what `splice up` (and the compose deployment's projector container, via
``python -m splice.projections.runner``) runs. It keeps going through NATS reconnects, a stream
that does not exist yet and database hiccups (retrying with a back-off), and returns once `stop`
is set, after the batch in progress has committed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

import structlog

from splice.events.natsclient import connect

from .projector import Projector
from .queries import QueryService
from .reading import run_projection
from .store import PositionConflict, open_store

log = structlog.get_logger("splice.projections")

DEFAULT_BATCH = 5000


async def _connect(nats_url: str, name: str) -> Any:
    return await connect(
        nats_url,
        name=name,
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
    )


async def run_projector(
    nats_url: str,
    db_url: str,
    stop: asyncio.Event,
    *,
    batch_size: int = DEFAULT_BATCH,
    serve_queries: bool = True,
    nc: Any = None,
) -> None:
    """Project SPLICE_EVENTS into the read models at `db_url` and serve splice.qry.> until `stop`.

    `nc`: the process's NATS connection, left open at the end; without it, one of its own."""
    store = open_store(db_url)
    projector = await asyncio.to_thread(Projector, store)
    own = nc is None
    if own:
        nc = await _connect(nats_url, "splice-projector")
    queries = QueryService(nc, store, lambda view: projector.positions.get(view, 0))
    try:
        if serve_queries:
            await queries.start()
        await _consume_forever(nc.jetstream(), projector, stop, batch_size)
    finally:
        await queries.stop()
        if own:
            with contextlib.suppress(Exception):
                await nc.drain()
        store.close()


async def _consume_forever(js: Any, projector: Projector, stop: asyncio.Event, batch: int) -> None:
    backoff = 0.25
    while not stop.is_set():
        try:
            await run_projection(js, projector, stop, batch_size=batch)
            backoff = 0.25
        except PositionConflict as e:
            log.warning("another projector moved the position; re-reading", error=str(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("projector failed; retrying", backoff_s=backoff)
        else:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, 10.0)


def main(argv: list[str] | None = None) -> None:
    """`python -m splice.projections.runner --nats-url URL --db DB`: a standalone projector."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--db", default=os.environ.get("SPLICE_READ_DB", "readmodels.sqlite"))
    parser.add_argument(
        "--batch", type=int, default=int(os.environ.get("SPLICE_PROJECTOR_BATCH", DEFAULT_BATCH))
    )
    parser.add_argument("--no-queries", action="store_true")
    args = parser.parse_args(argv)
    from splice.logs import configure  # the process's entry point: logging is set up here

    configure(os.environ.get("SPLICE_LOG_LEVEL", "INFO"))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_projector(
            args.nats_url, args.db, stop, batch_size=args.batch, serve_queries=not args.no_queries
        )

    asyncio.run(run())


if __name__ == "__main__":
    main()
