"""The bus's grammar, in one place: the stream, its subjects, the header names, and parsing.

    splice.cmd.<tenant>.<aggregate>.<verb>             a command (request/reply)
    splice.qry.<tenant>.<view>                         a query (request/reply)
    splice.hb.<host>                                   an agent's heartbeat (core NATS)
    splice.evt.<tenant>.<aggregate>.<id>.<EventType>   one stored event
    splice.idem.<tenant>.<command id>                  the stored result of a handled command
    splice.trk.<application>                           a process application's position

Tenants `_admin` (administrators) and `_host` (agents) are tokens like any other tenant's.

Who sends a request is the server's word, not the subject's: every principal but the services
has an account of its own (`splice.auth` renders them), and a request that crosses into the
services' account carries `Nats-Request-Info` naming the sender's account and user (`sender_of`).
Those accounts read events through the JetStream API under `JS_API_PREFIX`, imported from the
services' account with the consumer's filter pinned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import NamedTuple

PREFIX = "splice"
STREAM = "SPLICE_EVENTS"

ADMIN = "_admin"
HOSTS = "_host"
# The tenant token of command and query subjects: a tenant's name, or `_admin` or `_host`.
TENANT_TOKEN = re.compile(r"(?:[a-z0-9][a-z0-9-]{0,62}|_admin|_host)")
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

# Accounts (see `splice.auth`): the services', the operator's, one per host, one per tenant.
SERVICE_ACCOUNT = "SPLICE"
ADMIN_ACCOUNT = "ADMIN"
JS_API_PREFIX = "JS.SPLICE.API"  # the JetStream API as the other accounts import it
H_REQUEST_INFO = "Nats-Request-Info"  # set by the server on requests that cross accounts

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


def tenant_account(tenant: str) -> str:
    return f"T_{tenant}"


def host_account(host: str) -> str:
    return f"H_{host}"


class Sender(NamedTuple):
    """Who sent a request, as the server says: their account and user. `account` is None for
    a request from inside the services' own account (the server adds no header there)."""

    account: str | None
    user: str | None

    def is_tenant(self, tenant: str) -> bool:
        return self.account == tenant_account(tenant)

    def may_query(self, tenant: str) -> bool:
        """The services and the operator query every tenant's views; a tenant its own."""
        return self.account in (None, ADMIN_ACCOUNT) or self.is_tenant(tenant)

    @property
    def host(self) -> str | None:
        """The host this sender is the agent of, if it is one."""
        a = self.account
        return a[2:] if a is not None and a.startswith("H_") and self.user == a[2:] else None


SERVICES = Sender(None, None)


def sender_of(headers: Mapping[str, str] | None) -> Sender:
    """The sender of a request from its `Nats-Request-Info` header (the server replaces any
    such header a client sets on requests that cross accounts). An unreadable one names no
    account the services trust."""
    raw = (headers or {}).get(H_REQUEST_INFO)
    if raw is None:
        return SERVICES
    try:
        info = json.loads(raw)
        return Sender(str(info["acc"]), str(info.get("user", "")))
    except (ValueError, KeyError, TypeError):
        return Sender("?", None)


def events_of_tenant(tenant: str) -> str:
    """A filter: every event of one tenant."""
    return f"{PREFIX}.evt.{tenant}.>"


def topic_of(subject: str, headers: Mapping[str, str] | None) -> str:
    """An event message's type: its header, else the subject's last token."""
    return (headers or {}).get(H_TOPIC) or subject.rsplit(".", 1)[-1]
