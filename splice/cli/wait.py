"""`--wait`: after a command on a load balancer's tree is accepted, follow its load balancer's
events until a host has converged it (ACTIVE), failed (ERROR), or removed it (DELETED).

How, level-triggered: the newest event of the load balancer is looked up in the stream (its
sequence and the aggregate's version); a follower reads the stream after it (the load
balancer's own subjects as the operator; with a tenant's credentials, whose consumer filter is
pinned to the tenant, the tenant's, filtered here). Each event of the load balancer only says
"look again": the load balancer's row in the read model (`loadbalancers`), once the projector
has folded that event's version, says where it is — provisioning and operating status, and why
it waits ("waiting for a host that offers nftables-l4"). Only load balancers report
provisioning on the wire: routers, firewalls, NAT, taps and chains are placed on a host, but no
host reports them converged, so they have no `--wait`.

On a terminal the progress is a spinner on stderr; elsewhere, one plain line on stderr per
change. Exit codes: 0 done, 1 ERROR (with the reason) or deleted while waiting, 3 the bus
lost, 4 time-out, 130 interrupted (Ctrl-C: the command stays accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer
from nats import errors as nats_errors
from rich.markup import escape

from splice import client
from splice.cli.common import err
from splice.events import subjects
from splice.events.follow import Delivery, Follower

# The commands a host converges, by aggregate: `--wait` is theirs (None: every verb).
WAITED: dict[str, frozenset[str] | None] = {
    "loadbalancer": frozenset({"create", "update", "delete"}),
    "listener": None, "pool": None, "member": None, "healthmonitor": None,
    "l7policy": None, "l7rule": None,
}
DEFAULT_TIMEOUT = 300.0
EXIT_ERROR, EXIT_LOST, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 3, 4, 130
POLL = 0.1  # seconds between reads of the read model while it catches up


def waits(aggregate: str, verb: str) -> bool:
    """Whether `<aggregate> <verb>` gets `--wait`."""
    if aggregate not in WAITED:
        return False
    verbs = WAITED[aggregate]
    return verbs is None or verb in verbs


def loadbalancer_of(aggregate: str, body: dict[str, Any], reply: dict[str, Any]) -> str:
    """The load balancer a command acted on (its id)."""
    if aggregate == "loadbalancer":
        return str(reply["id"] if "id" not in body else body["id"])
    return str(body["loadbalancer_id"])


class Failed(Exception):
    """The wait ended without success: the exit code and what to say."""

    def __init__(self, code: int, message: str, word: str = "failed") -> None:
        super().__init__(message)
        self.code, self.word = code, word


@dataclass
class Progress:
    """The load balancer as the read model last showed it (its row in `loadbalancers`)."""

    row: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.row.get("version") or 0)

    def line(self) -> str:
        """`PENDING_CREATE / OFFLINE — waiting for a host that offers nftables-l4`."""
        r = self.row
        prov = str(r.get("provisioning_status"))
        reason = r.get("status_reason")
        if not reason and prov.startswith("PENDING") and r.get("host"):
            reason = f"on {r['host']}, converging"
        text = f"{prov} / {r.get('operating_status')}"
        return f"{text} — {reason}" if reason else text

    def outcome(self, deleting: bool) -> tuple[bool, Failed | None]:
        """(finished, how it failed: None when it succeeded)."""
        prov = self.row.get("provisioning_status")
        if prov == "ERROR":
            reason = str(self.row.get("error") or "no reason given")
            return True, Failed(EXIT_ERROR, reason, "ERROR")
        if self.row.get("deleted") or prov == "DELETED":
            gone = Failed(EXIT_ERROR, "deleted while waiting", "DELETED")
            return True, None if deleting else gone
        if prov == "ACTIVE" and not deleting:
            return True, None
        return False, None


Show = Callable[[str], None]


class Waiter:
    """One wait for one load balancer (see the module docstring)."""

    def __init__(self, bus: client.Bus, tenant: str, lb: str, *, deleting: bool,
                 timeout: float, show: Show, clock: Callable[[], float] = time.monotonic) -> None:
        self.bus, self.tenant, self.lb = bus, tenant, lb
        self.deleting, self.timeout, self.show, self.clock = deleting, timeout, show, clock
        self.prefix = f"{subjects.PREFIX}.evt.{tenant}.loadbalancer.{lb}."
        self.versions: asyncio.Queue[int] = asyncio.Queue()
        self.name = lb

    def _filter(self) -> str:
        """The operator reads the load balancer's own subjects; a tenant's bus lets it read
        only its tenant's (the consumer's filter is pinned), filtered here."""
        if self.bus.own_tenant is None:
            return subjects.events_of("loadbalancer", self.tenant, self.lb)
        return subjects.events_of_tenant(self.tenant)

    async def run(self) -> Progress:
        deadline = self.clock() + self.timeout
        nc = await client.connect(self.bus.url)
        follower: Follower | None = None
        task: asyncio.Task[int] | None = None
        try:
            js = self.bus.jetstream(nc)
            seq, version = await self._newest(js)

            async def take(d: Delivery) -> None:
                if d.subject.startswith(self.prefix):
                    await self.versions.put(int(d.headers.get(subjects.H_VERSION, 0) or 0))

            follower = Follower(js, self._filter(), take, after=seq, name=f"wait-{self.lb[:8]}",
                                reader="wait")
            task = asyncio.create_task(follower.run())
            return await self._follow(version, deadline)
        finally:
            if follower is not None:
                follower.close()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await nc.close()

    async def _newest(self, js: Any) -> tuple[int, int]:
        """The stream sequence and version of the load balancer's newest event (0, 0: none)."""
        from nats.js.errors import NotFoundError

        try:
            msg = await js.get_last_msg(subjects.STREAM, f"{self.prefix}>", direct=True)
        except NotFoundError:
            return 0, 0
        return int(msg.seq), int((msg.headers or {}).get(subjects.H_VERSION, 0))

    async def _row(self, version: int, deadline: float) -> Progress:
        """The load balancer's row once the read model has folded `version` of it."""
        body = {"id": self.lb, "deleted": None, "limit": 1}
        while True:
            try:
                reply = await asyncio.wait_for(
                    client.query(self.bus, self.tenant, "loadbalancers", body),
                    max(POLL, deadline - self.clock()))
            except TimeoutError:  # no answer in time: the projector is busy, or restarting
                reply = {"ok": False, "error": {"code": "unavailable",
                                                "message": "the read model did not answer"}}
            if not reply.get("ok"):
                e = reply.get("error") or {}
                last = f"cannot read the load balancer: {e.get('code')}: {e.get('message')}"
                if e.get("code") != "unavailable":
                    raise Failed(EXIT_ERROR, last)
            elif reply["items"]:
                progress = Progress(reply["items"][0])
                self.name = progress.row.get("name") or self.lb
                if progress.version >= version:
                    return progress
                last = f"the read model is at version {progress.version} of {version}"
            else:
                last = "the read model does not have it yet"
            if self.clock() >= deadline:
                raise Failed(EXIT_TIMEOUT, f"{last} after {self.timeout:g} s", "timed out")
            await asyncio.sleep(POLL)

    async def _follow(self, version: int, deadline: float) -> Progress:
        """Level-triggered: each event of the load balancer says "read it again"; the read
        model's row, once it has folded that event, says where it is."""
        shown = ""
        while True:
            progress = await self._row(version, deadline)
            line = progress.line()
            finished, failure = progress.outcome(self.deleting)
            if line != shown and not finished:  # the end has a line of its own
                self.show(f"loadbalancer {self.name}: {line}")
                shown = line
            if finished:
                if failure is not None:
                    raise failure
                return progress
            left = deadline - self.clock()
            if left <= 0:
                raise Failed(EXIT_TIMEOUT, f"still {line} after {self.timeout:g} s", "timed out")
            try:
                version = max(version, await asyncio.wait_for(self.versions.get(), left))
            except TimeoutError:
                continue
            while not self.versions.empty():  # a burst of events: the newest is enough
                version = max(version, self.versions.get_nowait())


def wait(bus: client.Bus, tenant: str, lb: str, *, deleting: bool, timeout: float) -> None:
    """Wait as `--wait` does, showing progress; raises typer.Exit with the outcome's code."""
    started = time.monotonic()
    tty = err.is_terminal
    status = err.status("waiting for the load balancer…") if tty else None

    def show(line: str) -> None:
        if status is not None:
            status.update(escape(line))
        else:
            err.print(escape(line), highlight=False, soft_wrap=True)

    waiter = Waiter(bus, tenant, lb, deleting=deleting, timeout=timeout, show=show)
    try:
        with status if status is not None else contextlib.nullcontext():
            progress = asyncio.run(waiter.run())
    except Failed as e:
        err.print(f"[red]{e.word}[/]: loadbalancer {escape(waiter.name)}: {escape(str(e))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(e.code) from None
    except (OSError, nats_errors.Error) as e:  # the bus went away while waiting
        err.print(f"[red]failed[/]: lost the bus while waiting: {escape(repr(e))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_LOST) from None
    except KeyboardInterrupt:
        err.print(f"stopped waiting; the command was accepted: `splice loadbalancer status "
                  f"{escape(waiter.name)}` shows where it is", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    took = time.monotonic() - started
    final = "DELETED" if deleting else progress.row.get("provisioning_status")
    err.print(f"[green]{final}[/]: loadbalancer {escape(waiter.name)} ({took:.1f} s)",
              highlight=False, soft_wrap=True)
