"""The bus's grammar, in one place: the stream, its subjects, the header names, and parsing.

    splice.cmd.<tenant>.<aggregate>.<verb>             a command (request/reply)
    splice.qry.<tenant>.<view>                         a query (request/reply)
    splice.hb.<host>                                   an agent's heartbeat (core NATS)
    splice.evt.<tenant>.<aggregate>.<id>.<EventType>   one stored event
    splice.idem.<tenant>.<command id>                  the stored result of a handled command
    splice.trk.<application>                           a process application's position

Tenants `_admin` (administrators) and `_host` (agents) are tokens like any other tenant's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

PREFIX = "splice"
STREAM = "SPLICE_EVENTS"

ADMIN = "_admin"
HOSTS = "_host"
# The tenant token of command and query subjects: a tenant's name, or `_admin` or `_host`.
TENANT_TOKEN = re.compile(r"(?:[a-z0-9][a-z0-9-]{0,62}|_admin|_host)")

# Headers of every stored event message.
H_VERSION = "Splice-Version"  # the aggregate's version after this event
H_TOPIC = "Splice-Topic"  # the event's stable wire name (its tag)
H_ACTOR = "Splice-Actor"
H_COMMAND_ID = "Splice-Command-Id"
H_CORRELATION_ID = "Splice-Correlation-Id"
H_TRACKING = "Splice-Tracking-Id"
EVENT_HEADERS = (H_TOPIC, H_VERSION, H_ACTOR, H_COMMAND_ID, H_CORRELATION_ID)

COMMANDS = f"{PREFIX}.cmd.>"
QUERIES = f"{PREFIX}.qry.>"
EVENTS = f"{PREFIX}.evt.>"


def command(tenant: str, aggregate: str, verb: str) -> str:
    return f"{PREFIX}.cmd.{tenant}.{aggregate}.{verb}"


def query(tenant: str, view: str) -> str:
    return f"{PREFIX}.qry.{tenant}.{view}"


def heartbeat(host: str) -> str:
    return f"{PREFIX}.hb.{host}"


def event(tenant: str, aggregate: str, ident: str, topic: str) -> str:
    return f"{PREFIX}.evt.{tenant}.{aggregate}.{ident}.{topic}"


def events_of(aggregate: str, tenant: str = "*", ident: str = "*", topic: str = ">") -> str:
    """A filter: every event of one kind of aggregate (of one tenant, one id, one type)."""
    tail = ">" if topic == ">" and ident == "*" else f"{ident}.{'*' if topic == '>' else topic}"
    return f"{PREFIX}.evt.{tenant}.{aggregate}.{tail}"


class EventSubject(NamedTuple):
    tenant: str
    aggregate: str
    ident: str
    topic: str

    @property
    def aggregate_id(self) -> str:
        """Splice's aggregate id: ``<tenant>.<aggregate>.<uuid>``."""
        return f"{self.tenant}.{self.aggregate}.{self.ident}"


def parse_event(subject: str) -> EventSubject | None:
    """The parts of an event's subject; ``None`` for anything else (idem, trk, foreign)."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != PREFIX or parts[1] != "evt":
        return None
    return EventSubject(parts[2], parts[3], parts[4], parts[5])


class CommandSubject(NamedTuple):
    tenant: str
    aggregate: str
    verb: str


def parse_command(subject: str) -> CommandSubject | None:
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != PREFIX or parts[1] != "cmd":
        return None
    return CommandSubject(parts[2], parts[3], parts[4])


class QuerySubject(NamedTuple):
    tenant: str
    view: str


def parse_query(subject: str) -> QuerySubject | None:
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != PREFIX or parts[1] != "qry":
        return None
    return QuerySubject(parts[2], parts[3])


def events_of_tenant(tenant: str) -> str:
    """A filter: every event of one tenant."""
    return f"{PREFIX}.evt.{tenant}.>"


def topic_of(subject: str, headers: Mapping[str, str] | None) -> str:
    """An event message's type: its header, else the subject's last token."""
    return (headers or {}).get(H_TOPIC) or subject.rsplit(".", 1)[-1]
