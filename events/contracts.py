"""Wire contracts: the index of every command, reply and event.

Every command, reply and event that crosses NATS is a msgspec Struct defined in `wire.py`,
`network.py`, `lbaas.py` or `advanced.py`. Tags are explicit and stable (a class rename does not
change the wire); constraints are types, defined once in `wire.py`. Unknown fields are ignored on
decode, so adding an optional field is a compatible change.

Commands are requests on ``splice.cmd.<tenant>.<aggregate>.<verb>``; a command's tag is
``<aggregate>.<verb>``, so the subject names the command and the body needs no type field.
Scopes: a tenant's own commands use its name as the tenant token; admin commands use
``_admin``; agents' commands use ``_host``.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import msgspec

from . import advanced, lbaas, lbaas_commands, network, subjects
from .advanced import *  # noqa: F403 - re-exported contracts
from .lbaas import *  # noqa: F403
from .lbaas_commands import *  # noqa: F403
from .network import *  # noqa: F403
from .wire import *  # noqa: F403
from .wire import Command, EventMeta

ADMIN_TENANT = subjects.ADMIN
HOST_TENANT = subjects.HOSTS

_FAMILIES = (network, lbaas, lbaas_commands, advanced)


def _defined(base: type[Any]) -> list[Any]:
    """The tagged Structs deriving from `base` that the families define, in their order."""
    return [v for mod in _FAMILIES for v in vars(mod).values()
            if isinstance(v, type) and issubclass(v, base) and v.__module__ == mod.__name__
            and cast(Any, v).__struct_config__.tag is not None]


_ALL_COMMANDS: tuple[type[Command], ...] = tuple(_defined(Command))
_ALL_EVENTS: tuple[type[EventMeta], ...] = tuple(_defined(EventMeta))


def _tag(t: type[Any]) -> str:
    return str(msgspec.inspect.type_info(t).tag)  # type: ignore[attr-defined]


# (aggregate, verb) of the subject -> command type. One explicit table, no self-registration.
COMMANDS: dict[tuple[str, str], type[Command]] = {
    (_tag(t).split(".")[0], _tag(t).split(".")[1]): t for t in _ALL_COMMANDS
}

Scope = Literal["tenant", "admin", "host"]
# Commands outside the tenant scope. Everything else belongs to a tenant.
SCOPES: dict[tuple[str, str], Scope] = {
    ("servicetype", "create"): "admin",
    ("servicetype", "update"): "admin",
    ("servicetype", "set_default"): "admin",
    ("servicetype", "delete"): "admin",
    ("quota", "set"): "admin",
    ("network", "set_external"): "admin",
    ("host", "lost"): "admin",
    ("host", "register"): "host",
    ("loadbalancer", "report"): "host",
    ("loadbalancer", "report_status"): "host",
}


def scope_of(aggregate: str, verb: str) -> Scope:
    return SCOPES.get((aggregate, verb), "tenant")


EVENTS: tuple[type[EventMeta], ...] = _ALL_EVENTS
EVENT_TYPES: dict[str, type[EventMeta]] = {_tag(t): t for t in _ALL_EVENTS}
