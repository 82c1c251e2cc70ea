"""Runs one parsed command to its reply: idempotency, conflicts and retries.

For each command: serialise it behind the commands it most likely contends with (in this
process), run its handler, save its events in one write with the command's claim (the layout of
that write is the store's: `splice.events.store_commands`), and answer. A command already handled
gets its first reply again; a concurrency conflict re-runs the handler on fresh state, a bounded
number of times. Synchronous: it runs on the command service's worker threads.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from eventsourcing.persistence import IntegrityError, OperationalError

from splice.events.contracts import Command, Error, Failed, Ok
from splice.events.store_commands import CommandWrite
from splice.events.store_recorders import JetStreamApplicationRecorder

from .common_handlers import SpliceApplication, tracking_loads
from .domain import AlreadyAppliedError, DomainError, Meta, acting, public_id
from .handlers import COMMAND_HANDLERS
from .registry import AGGREGATES


def app_env(nats_url: str, **extra: str) -> dict[str, str]:
    """The eventsourcing environment of the command side."""
    env = {
        "PERSISTENCE_MODULE": "splice.events.jetstream",
        "NATS_URL": nats_url,
        "MAPPER_TOPIC": "splice.services.codec:SpliceMapper",
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        # The cache follows this process's own writes; what other replicas wrote is caught by
        # the server's concurrency check on every write (then the decision's aggregates are
        # evicted and it is decided again), and a refusal or a no-op decided on cached state
        # is decided again on fresh state before it is answered.
        "AGGREGATE_CACHE_FASTFORWARD": "n",
    }
    env.update(extra)
    return env


def failed(
    code: str, message: str, field: str | None = None, command_id: str | None = None
) -> Failed:
    return Failed(error=Error(code=code, message=message, field=field), command_id=command_id)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Parsed:
    """A command that passed the transport's checks, with the subject it came on."""

    subject: str
    tenant: str
    aggregate: str
    verb: str
    command: Command


class Unverified(Exception):
    """A decision with no write was made on cached state: decide again on fresh state."""


class CommandExecutor:
    """Decides and saves commands against one application (one per process)."""

    def __init__(self, app: SpliceApplication, *, max_attempts: int = 12) -> None:
        self.app = app
        self.max_attempts = max_attempts
        rec = app.recorder
        if not isinstance(rec, JetStreamApplicationRecorder):
            raise TypeError(f"the command side needs the JetStream recorder, not {type(rec)}")
        self.recorder = rec
        self._locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()

    def execute(self, parsed: Parsed, command_id: str) -> tuple[Ok | Failed, int]:
        """The reply, and how many attempts it took."""
        locks = self._serialised(parsed)
        for lock in locks:
            lock.acquire()
        try:
            return self._execute_locked(parsed, command_id)
        finally:
            for lock in reversed(locks):
                lock.release()

    # -- earlier answers -----------------------------------------------------------------------

    def _previous(self, parsed: Parsed, command_id: str) -> Ok | Failed | None:
        """The reply recorded by the claim of an earlier write of this command id."""
        found = self.recorder.command_result(parsed.tenant, command_id)
        if found is None:
            return None
        if found.subject != parsed.subject:
            return failed(
                "conflict",
                f"command id {command_id} was already used for {found.subject}",
                "command_id",
                command_id,
            )
        return Ok(id=found.id, version=found.version, seq=found.seq, command_id=command_id)

    @staticmethod
    def _probe_id(parsed: Parsed) -> str | None:
        """The aggregate a command names as its own (by `id`, or its load balancer's)."""
        cmd = parsed.command
        lb = getattr(cmd, "loadbalancer_id", None)
        if isinstance(lb, str):
            return f"{parsed.tenant}.loadbalancer.{lb}"
        ident = getattr(cmd, "id", None)
        if isinstance(ident, str) and parsed.aggregate in AGGREGATES:
            return f"{parsed.tenant}.{parsed.aggregate}.{ident}"
        return None

    def _remembered(self, agg_id: str, version: int, command_id: str) -> Ok:
        seq = self.recorder.seq_of_version(agg_id, version)
        return Ok(id=public_id(agg_id), version=version, seq=seq, command_id=command_id)

    def _remembered_by_probe(self, parsed: Parsed, command_id: str) -> Ok | None:
        probe = self._probe_id(parsed)
        if probe is None:
            return None
        agg = self.app.get_or_none(probe)
        done = agg.applied_version(parsed.tenant, command_id) if agg is not None else None
        return None if done is None else self._remembered(probe, done, command_id)

    def _evict(self, agg_ids: Iterable[str]) -> None:
        cache = self.app.repository.cache
        if cache is None:
            return
        for agg_id in agg_ids:
            with contextlib.suppress(KeyError):
                cache.get(agg_id, evict=True)

    # -- deciding ------------------------------------------------------------------------------

    def _serialised(self, parsed: Parsed) -> list[threading.Lock]:
        """In-process locks for the aggregates this command will most likely contend on.

        Commands on one load balancer (or network, or the scheduler's registry) queue behind
        each other here instead of racing, failing the server's check and retrying: a herd of
        concurrent changes to one resource becomes a queue. Only a speed-up: correctness is
        the server's concurrency check, which still guards against other replicas.
        """
        t, agg, verb, cmd = parsed.tenant, parsed.aggregate, parsed.verb, parsed.command
        keys = set()
        for field in ("loadbalancer_id", "network_id", "vip_network_id", "router_id"):
            value = getattr(cmd, field, None)
            if isinstance(value, str):
                keys.add(f"{t}.{field}.{value}")
        if isinstance(getattr(cmd, "id", None), str):
            keys.add(f"{t}.{agg}.{cmd.id}")  # type: ignore[attr-defined]
        if verb == "create":
            keys.add(f"{t}.quota")
        if agg in ("loadbalancer", "firewall", "tap", "host") and verb in (
            "create",
            "delete",
            "register",
            "lost",
        ):
            keys.add("hosts")
        if agg == "servicetype" and verb != "update":
            keys.add("servicetype-default")
        with self._locks_guard:
            return [self._locks.setdefault(k, threading.Lock()) for k in sorted(keys)]

    def _execute_locked(self, parsed: Parsed, command_id: str) -> tuple[Ok | Failed, int]:
        cmd = parsed.command
        meta = Meta(
            actor=cmd.actor,
            command_id=command_id,
            correlation_id=cmd.correlation_id or command_id,
            tenant=parsed.tenant,  # a command id is its tenant's: events remember both
        )
        attempt = 0
        fresh = False  # whether this attempt's aggregates were read from the stream
        with acting(meta):
            while True:
                attempt += 1
                loaded = tracking_loads()
                try:
                    # The stored result of an earlier send is looked up only when this send
                    # may be a repeat that the write alone would not reveal: after a conflict
                    # (the claim's subject was taken), or when there is nothing to write.
                    reply = self._attempt(parsed, meta, check_claim=attempt > 1, verified=fresh)
                except AlreadyAppliedError as e:
                    # a repeat: the first answer again (found on fresh state, to be sure)
                    if not fresh:
                        self._evict(loaded)
                        fresh = True
                        continue
                    previous = self._previous(parsed, command_id)
                    return previous or self._remembered(e.agg_id, e.version, command_id), attempt
                except Unverified:
                    # refused, or nothing to do, on cached state: decide once more afresh
                    self._evict(loaded)
                    fresh = True
                    continue
                except IntegrityError:
                    fresh = True  # the conflict evicted what the decision read
                    if attempt >= self.max_attempts:
                        return failed(
                            "conflict",
                            f"gave up after {attempt} attempts: the resource kept changing",
                            None,
                            command_id,
                        ), attempt
                    # back off with jitter: another replica is writing the same aggregates
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # noqa: S311
                    continue
                except OperationalError as e:
                    return failed(
                        "unavailable", f"event store unavailable: {e}", None, command_id
                    ), attempt
                except DomainError as e:
                    if not fresh:
                        self._evict(loaded)
                        fresh = True
                        continue
                    # A duplicate of this command may have committed meanwhile, and its effect
                    # is what refused this one: then the answer is the duplicate's.
                    if cmd.command_id is not None:
                        previous = self._previous(parsed, command_id)
                        if previous is None:
                            previous = self._remembered_by_probe(parsed, command_id)
                        if previous is not None:
                            return previous, attempt
                    return failed(e.code, e.message, e.field, command_id), attempt
                return reply, attempt

    def _attempt(
        self, parsed: Parsed, meta: Meta, *, check_claim: bool, verified: bool
    ) -> Ok | Failed:
        """Decide and save. Raises IntegrityError on a concurrency conflict (after evicting the
        decision's aggregates from the cache, so the next attempt reads them afresh)."""
        app = self.app
        cmd, command_id = parsed.command, meta.command_id
        if check_claim and cmd.command_id is not None:
            previous = self._previous(parsed, command_id)
            if previous is not None:
                return previous
        decision = COMMAND_HANDLERS[type(cmd)](app, parsed.tenant, cmd)
        target = decision.subject
        result_id = decision.result_id or public_id(target.id)
        # only what changed is written: a command that changes nothing appends nothing
        decision.save = [agg for agg in decision.save if agg.pending_events]
        if not decision.save:
            if not verified:
                raise Unverified
            # Nothing to write: a change to what already is (ok, the current version), or a
            # repeat of a change, whose first answer is stored or remembered by the aggregate.
            if cmd.command_id is not None:
                previous = None if check_claim else self._previous(parsed, command_id)
                previous = previous or self._remembered_by_probe(parsed, command_id)
                if previous is not None:
                    return previous
            return Ok(id=result_id, version=target.version, seq=None, command_id=command_id)
        # One event on an existing aggregate that is also the reply's subject: one message,
        # no claim. A repeat is recognised by the aggregate itself (its recent command ids), so
        # the write needs no atomic batch — a batch costs several times a single publish.
        single = (
            decision.result_id is None
            and len(decision.save) == 1
            and decision.save[0] is target
            and len(target.pending_events) == 1
            and target.version > 1
            and self._probe_id(parsed) == target.id
        )
        write = CommandWrite(
            subject=parsed.subject,
            tenant=parsed.tenant,
            command_id=command_id,
            actor=meta.actor,
            correlation_id=meta.correlation_id,
            result_id=result_id,
            target_id=target.id,
            target_version=target.version,
            claim=not single,
        )
        try:
            recordings = app.save(*decision.save, command=write)
        except (IntegrityError, OperationalError):
            self._evict(agg.id for agg in decision.save)
            raise
        seqs = [r.notification.id for r in recordings if r.domain_event.originator_id == target.id]
        return Ok(
            id=result_id,
            version=target.version,
            seq=max(seqs) if seqs else None,
            command_id=command_id,
        )
