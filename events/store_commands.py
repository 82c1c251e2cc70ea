"""The layout of one command's write: who acted, the claim of its command id, the reply's seq.

Every event message of a command carries the command's actor, command id and correlation id
(the `H_*` headers of `splice.events.subjects`). Unless the command's aggregate recognises a
repeat by itself, the write ends with a claim on ``<prefix>.idem.<tenant>.<command id>``: a
message that must be the first on its subject, stored atomically with the events, so a command
id has one effect. The claim holds the command's subject and the reply's id and version, and
`back`: how many messages before the claim the reply's event sits, so that a repeat gets the
first reply's stream sequence again.

A command that changed nothing (a client's command id, verified on fresh state) is claimed
too, by a claim alone with ``changed: false`` (its reply has no seq): so a repeat that arrives
after the resource changed gets that first answer instead of being decided again, and maybe
applied. That claim is checked against the reply's aggregate instead of its own subject (the
aggregate must not have changed since the decision): a concurrent duplicate that did change it
wins. The first claim on a subject is the command's answer; a later one is never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import msgspec
from eventsourcing.persistence import StoredEvent

from . import subjects
from .natswire import OutMsg, StoredMsg
from .store_datastore import EXPECTED_LAST_SEQ, EXPECTED_LAST_SEQ_SUBJECT


@dataclass(frozen=True, slots=True)
class CommandWrite:
    """What a command's write records beside its events."""

    subject: str  # the command's subject: the same id under another subject is a conflict
    tenant: str
    command_id: str
    actor: str
    correlation_id: str
    result_id: str  # the reply's id
    target_id: str  # the aggregate whose version (and newest event's seq) the reply gives
    target_version: int
    claim: bool = True  # False: one event whose aggregate remembers the command itself

    def headers(self) -> dict[str, str]:
        return {
            subjects.H_ACTOR: self.actor,
            subjects.H_COMMAND_ID: self.command_id,
            subjects.H_CORRELATION_ID: self.correlation_id,
        }

    def claim_msg(self, subject: str, stored_events: Sequence[StoredEvent]) -> OutMsg:
        """The claim, the last message of the batch after `stored_events`."""
        back = 1
        for i, ev in enumerate(stored_events):
            if ev.originator_id == self.target_id:
                back = len(stored_events) - i
        body = {
            "subject": self.subject,
            "id": self.result_id,
            "version": self.target_version,
            "back": back,
        }
        return OutMsg(subject, _encoder.encode(body), {EXPECTED_LAST_SEQ: "0"})

    def unchanged_claim_msg(self, subject: str, target_filter: str, target_seq: int) -> OutMsg:
        """The claim of a command that changed nothing: stored only while the reply's
        aggregate (`target_filter`) still ends at `target_seq`, the state it was decided on."""
        body = {
            "subject": self.subject,
            "id": self.result_id,
            "version": self.target_version,
            "changed": False,
        }
        headers = {EXPECTED_LAST_SEQ: str(target_seq), EXPECTED_LAST_SEQ_SUBJECT: target_filter}
        return OutMsg(subject, _encoder.encode(body), headers)


class _Claim(msgspec.Struct):
    id: str
    version: int
    subject: str | None = None
    back: int = 1
    changed: bool = True  # False: the command changed nothing, its reply has no seq


class CommandResult(NamedTuple):
    """The reply of a command handled before, as its claim recorded it."""

    subject: str | None
    id: str
    version: int
    seq: int | None


def read_claim(msg: StoredMsg) -> CommandResult:
    claim = _decoder.decode(msg.data)
    seq = msg.seq - claim.back if claim.changed else None
    return CommandResult(claim.subject, claim.id, claim.version, seq)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Claim)
