"""Runs one parsed command to its reply: idempotency, conflicts and retries.

For each command: serialise it behind the commands it most likely contends with (in this
process), run its handler, save its events in one write with the command's claim (the layout of
that write is the store's: `splice.events.store_commands`), and answer. Synchronous: it runs on
the command service's worker threads.

Idempotency — a command id (its tenant's) has one effect and one answer, for as long as the
stream keeps its events:

* a one-event change is recognised by its aggregate, which remembers every command that changed
  it (`SpliceAggregate.applied_version`); any other write ends with a claim of the command id;
  a command that changes nothing is claimed too (with no seq), so that a repeat decided again
  as a change-nothing or a refusal gets that first answer, not the resource's current version;
* duplicates that arrive while the command is being handled in this process join it: they
  wait for its reply instead of deciding again; a command answered lately in this process is
  answered again from memory;
* a repeat recognised on cached state is answered at once (only stored events are remembered,
  so the cache cannot be wrong about it); a refusal or a change-nothing decided on cached
  state is checked against what the stream has after the cached version — a bounded read,
  never a re-read of the aggregate from its start.

One gap is left open on purpose: a command whose first send changed nothing, sent again to
another process (or after a restart, or after `ANSWERED_MAX` other commands) once the resource
changed so that it would now change it, is applied then — a one-event write does not look for a
claim, which would cost a round trip on every command.

Conflicts and outages — a concurrency conflict brings the decision's aggregates up to date (the
same bounded read) and decides again, a bounded number of times; an unavailable event store
(a lost connection, a server restarting) is waited for, up to `unavailable_s`, and then the
command is decided again on fresh state, since the outcome of the interrupted write is unknown.
"""

from __future__ import annotations

import contextlib
import copy
import random
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

from eventsourcing.persistence import IntegrityError, OperationalError, PersistenceError

from splice.events import metrics
from splice.events.contracts import Command, Error, Failed, Ok
from splice.events.inline import Gate, pause
from splice.events.natswire import JetStreamAPIError
from splice.events.store_commands import CommandWrite
from splice.events.store_recorders import JetStreamApplicationRecorder

from .common_handlers import SpliceApplication, tracking_loads
from .domain import AlreadyAppliedError, DomainError, Meta, acting, public_id
from .handlers import COMMAND_HANDLERS
from .inflight import InFlight
from .network import home_shard
from .registry import AGGREGATES
from .replies import completed, fresh


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
    """A refusal, or a decision with nothing to write, was made on cached state: decide again
    once the cached aggregates are up to date."""


class CommandExecutor:
    """Decides and saves commands against one application (one per process).

    `counts` says what happened to the commands (for logs and tests): ``runs`` (handled from
    the start), ``joined`` (waited for the same command id in flight), ``answered`` (answered
    from this process's memory of recent replies), ``repeats`` (recognised as a repeat from the
    stream or an aggregate), ``unchanged_claims``, ``refreshes``, ``conflicts``, ``unavailable``
    (waits for the event store).
    """

    ANSWERED_MAX = 10_000  # recent first replies kept in memory, by (tenant, command id)

    def __init__(
        self, app: SpliceApplication, *, max_attempts: int = 12, unavailable_s: float = 5.0
    ) -> None:
        self.app = app
        self.max_attempts = max_attempts
        self.unavailable_s = unavailable_s
        rec = app.recorder
        if not isinstance(rec, JetStreamApplicationRecorder):
            raise TypeError(f"the command side needs the JetStream recorder, not {type(rec)}")
        self.recorder = rec
        self._locks: weakref.WeakValueDictionary[str, Gate] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        self._counts_guard = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._inflight = InFlight(self._count, self.ANSWERED_MAX)

    def _count(self, what: str, n: int = 1) -> None:
        with self._counts_guard:
            self.counts[what] += n

    def execute(self, parsed: Parsed, command_id: str) -> tuple[Ok | Failed, int]:
        """The reply, and how many attempts it took (0: the reply of a duplicate)."""
        if parsed.command.command_id is None:
            return self._execute(parsed, command_id)  # an id the service chose: never repeated
        reply, attempts = self._inflight.once(
            (parsed.tenant, command_id), parsed.subject, lambda: self._execute(parsed, command_id)
        )
        if isinstance(reply, Ok):  # an earlier reply of a create: its children's ids too
            reply = completed(self.app, parsed.tenant, parsed.command, reply)
        return reply, attempts

    def _execute(self, parsed: Parsed, command_id: str) -> tuple[Ok | Failed, int]:
        self._count("runs")
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
        try:
            agg = self.app.get_or_none(probe)
        except DomainError:  # it cannot be read (poisoned): it remembers nothing usable
            return None
        done = agg.applied_version(parsed.tenant, command_id) if agg is not None else None
        return None if done is None else self._remembered(probe, done, command_id)

    def _refresh(self, stale: set[str]) -> None:
        """Bring these cached aggregates up to date with the stream, removing each from `stale`
        once done: only the events after the cached version are read (usually none)."""
        repo = self.app.repository
        cache = repo.cache
        for agg_id in list(stale):
            cached: Any = None
            if cache is not None:
                with contextlib.suppress(KeyError):
                    cached = cache.get(agg_id)
            if cache is not None and cached is not None:
                try:
                    new_events = list(
                        repo.event_store.get(originator_id=agg_id, gt=cached.version)
                    )
                    agg: Any = copy.deepcopy(cached) if new_events else cached
                    for event in new_events:
                        agg = event.mutate(agg)  # type: ignore[attr-defined]
                except (PersistenceError, JetStreamAPIError):
                    raise  # the store's: not the events' fault
                except Exception:
                    # An event that cannot be read or applied: the next load of the aggregate
                    # reads it from the stream and says which (`SpliceApplication.get_or_none`).
                    with contextlib.suppress(KeyError):
                        cache.get(agg_id, evict=True)
                    stale.discard(agg_id)
                    continue
                if new_events:
                    current: Any = None
                    with contextlib.suppress(KeyError):
                        current = cache.get(agg_id, evict=agg is None)
                    if agg is not None and current is cached:  # not replaced meanwhile
                        cache.put(agg_id, agg)
                self._count("refreshes")
            stale.discard(agg_id)

    # -- deciding ------------------------------------------------------------------------------

    def _serialised(self, parsed: Parsed) -> list[Gate]:
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
        if agg == "network" and verb in ("create", "delete"):
            keys.add(f"segments.{home_shard(t)}")  # the tenant's home shard (most of its VNIs)
        if agg == "servicetype" and verb != "update":
            keys.add("servicetype-default")
        with self._locks_guard:
            locks = self._locks
            return [locks.get(k) or locks.setdefault(k, Gate()) for k in sorted(keys)]

    def _execute_locked(self, parsed: Parsed, command_id: str) -> tuple[Ok | Failed, int]:
        cmd = parsed.command
        meta = Meta(
            actor=cmd.actor,
            command_id=command_id,
            correlation_id=cmd.correlation_id or command_id,
            tenant=parsed.tenant,  # a command id is its tenant's: events remember both
        )
        attempt = 0
        fresh = False  # whether this attempt decides on aggregates checked against the stream
        stale: set[str] = set()  # cached aggregates to bring up to date before deciding again
        conflicts = 0  # attempts that lost a concurrency check
        waited = 0  # attempts that found the event store unavailable
        started = time.monotonic()
        with acting(meta):
            while True:
                attempt += 1
                loaded: set[str] = set()
                try:
                    if stale:
                        self._refresh(stale)
                    loaded = tracking_loads()
                    # The stored result of an earlier send is looked up only when this send
                    # may be a repeat that the write alone would not reveal (see _attempt).
                    return self._once(parsed, meta, attempt, fresh, stale), attempt
                except Unverified:
                    # refused, or nothing to do, on cached state: decide again once the cached
                    # aggregates are up to date
                    stale |= loaded
                    fresh = True
                except IntegrityError:
                    # another writer got there first: _attempt marked what it wrote as stale
                    fresh = True
                    conflicts += 1
                    self._count("conflicts")
                    if conflicts >= self.max_attempts:
                        return failed(
                            "conflict",
                            f"gave up after {attempt} attempts: the resource kept changing",
                            None,
                            command_id,
                        ), attempt
                    # back off with jitter: another replica is writing the same aggregates
                    pause(random.uniform(0, min(0.05, 0.001 * 2**conflicts)))  # noqa: S311
                except OperationalError as e:
                    # The event store did not answer (a lost connection, a restarting server):
                    # the outcome of a write in flight is unknown, so wait, bring what this
                    # attempt read up to date, and decide again — a repeat is then recognised.
                    stale |= loaded
                    fresh = True
                    waited += 1
                    self._count("unavailable")
                    if time.monotonic() - started >= self.unavailable_s:
                        return failed(
                            "unavailable", f"event store unavailable: {e}", None, command_id
                        ), attempt
                    backoff = min(0.5, 0.02 * 2**waited) * random.uniform(0.5, 1.0)  # noqa: S311
                    pause(min(backoff, max(0.0, started + self.unavailable_s - time.monotonic())))

    def _once(
        self, parsed: Parsed, meta: Meta, attempt: int, fresh: bool, stale: set[str]
    ) -> Ok | Failed:
        """One decision, and its reply; raises to decide again (see _execute_locked)."""
        cmd, command_id = parsed.command, meta.command_id
        try:
            return self._attempt(parsed, meta, check_claim=attempt > 1, verified=fresh, stale=stale)
        except AlreadyAppliedError as e:
            # A repeat. Certain even on cached state: aggregates remember stored events only.
            self._count("repeats")
            previous = self._previous(parsed, command_id)
            return previous or self._remembered(e.agg_id, e.version, command_id)
        except DomainError as e:
            if not fresh:
                raise Unverified from e
            # A duplicate of this command may have committed meanwhile, and its effect is what
            # refused this one: then the answer is the duplicate's.
            if cmd.command_id is not None:
                previous = self._previous(parsed, command_id)
                if previous is None:
                    previous = self._remembered_by_probe(parsed, command_id)
                if previous is not None:
                    self._count("repeats")
                    return previous
            return failed(e.code, e.message, e.field, command_id)

    def _attempt(
        self, parsed: Parsed, meta: Meta, *, check_claim: bool, verified: bool, stale: set[str]
    ) -> Ok | Failed:
        """Decide and save. Raises IntegrityError on a concurrency conflict, OperationalError
        when the event store did not answer (after adding the decision's aggregates to `stale`,
        so the next attempt brings them up to date)."""
        app = self.app
        cmd, command_id = parsed.command, meta.command_id
        client_id = cmd.command_id is not None  # only a client's own id can come again
        if check_claim and client_id:
            previous = self._previous(parsed, command_id)
            if previous is not None:
                self._count("repeats")
                return previous
        decision = COMMAND_HANDLERS[type(cmd)](app, parsed.tenant, cmd)
        target = decision.subject
        result_id = decision.result_id or public_id(target.id)
        # only what changed is written: a command that changes nothing appends nothing
        decision.save = [agg for agg in decision.save if agg.pending_events]
        stored_version = target.version - len(target.pending_events)
        write = partial(  # what the write records beside the events (`claim` told below)
            CommandWrite,
            subject=parsed.subject,
            tenant=parsed.tenant,
            command_id=command_id,
            actor=meta.actor,
            correlation_id=meta.correlation_id,
            result_id=result_id,
            target_id=target.id,
            target_version=target.version if decision.save else stored_version,
        )
        if not decision.save:
            if not verified:
                raise Unverified
            # Nothing to write: a change to what already is (ok, the current version), or a
            # repeat of a change, whose first answer is stored or remembered by the aggregate.
            reply = Ok(id=result_id, version=stored_version, seq=None, command_id=command_id)
            if client_id:
                previous = None if check_claim else self._previous(parsed, command_id)
                previous = previous or self._remembered_by_probe(parsed, command_id)
                if previous is not None:
                    self._count("repeats")
                    return previous
                # The first answer of a command that changes nothing is stored as well: a repeat
                # decided again as a change-nothing gets it, not the version current by then.
                try:
                    self.recorder.record_unchanged(write())
                except (IntegrityError, OperationalError):
                    stale.add(target.id)
                    raise
                self._count("unchanged_claims")
            return reply
        # One event on an existing aggregate that is also the reply's subject: one message,
        # no claim. A repeat is recognised by the aggregate itself (every command id that
        # changed it), so the write needs no atomic batch — a batch costs several times a
        # single publish.
        single = (
            decision.result_id is None
            and len(decision.save) == 1
            and decision.save[0] is target
            and len(target.pending_events) == 1
            and target.version > 1
            and self._probe_id(parsed) == target.id
        )
        try:
            recordings = app.save(
                *decision.save,
                command=write(claim=not single),
            )
        except (IntegrityError, OperationalError):
            stale.update(agg.id for agg in decision.save)
            raise
        metrics.EVENTS_APPENDED.inc(len(recordings))
        seqs = [r.notification.id for r in recordings if r.domain_event.originator_id == target.id]
        return Ok(
            id=result_id,
            version=target.version,
            seq=max(seqs) if seqs else None,
            command_id=command_id,
            **fresh(cmd, target, result_id),
        )
