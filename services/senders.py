"""Who may send which command, by the server's word on who sent it (`subjects.sender_of`).

The accounts' imports already keep each principal to its own subjects; this is the command
side's own check of the same rule, and the one place that ties a host's reports to the host:

- the services' own account (no `Nats-Request-Info`): anything (monitors, the demo, tests);
- the operator (`ADMIN`): any tenant's commands and `_admin`'s, never a host's report;
- a host (`H_<host>`, user `<host>`): `_host` commands that name that host in `host`;
- a tenant (`T_<tenant>`): that tenant's commands only.
"""

from __future__ import annotations

from typing import NamedTuple

from splice.events import subjects
from splice.events.contracts import Command


class Refusal(NamedTuple):
    message: str
    field: str


def refusal(tenant: str, command: Command, sender: subjects.Sender) -> Refusal | None:
    """Why `sender` may not send `command` on `tenant`'s subject; None when it may."""
    if sender.account is None:
        return None
    if sender.account == subjects.ADMIN_ACCOUNT:
        if tenant == subjects.HOSTS:
            return Refusal("only a host reports about itself; the operator cannot", "subject")
        return None
    host = sender.host
    if host is not None:
        if tenant != subjects.HOSTS:
            return Refusal(f"host {host} may send only `{subjects.HOSTS}` commands", "subject")
        named = getattr(command, "host", None)
        if named != host:
            return Refusal(f"host {host} may report only about itself, not {named}", "$.host")
        return None
    if sender.is_tenant(tenant):
        return None
    return Refusal(f"account {sender.account} may not send commands as {tenant}", "subject")

