"""Who may do what on the bus: one NATS account per principal, rendered as nats-server config.

    SPLICE       the services (command service, monitors, projector, the event store, the
                 agent inside `splice up`): the stream lives here, and only this account has
                 JetStream at all
    ADMIN        the operator: every tenant's and `_admin`'s commands and queries; all events;
                 every load balancer's stats
    H_<host>     one agent: `_host` commands, its own heartbeat subject; all events; it
                 answers the stats requests for its host (exported to SPLICE)
    T_<tenant>   one tenant: its own command and query subjects; its own events; its own
                 stats requests (``splice.stats.<tenant>.>``)

Stats requests (``splice.stats.<tenant>.<host>.<lb>``, `splice.agents.stats`) reach an agent
in a host's account through two service imports: the tenant's from SPLICE, and SPLICE's from
that host's account (``splice.stats.*.<host>.*``); an agent in SPLICE answers them directly.

An account sees nothing of another's subjects. Each principal's account imports from SPLICE
exactly what it may reach, so the server itself refuses everything else: a tenant cannot
publish another tenant's commands, read another tenant's events, or reach the stream's admin
API (its account has no JetStream: 503). Requests cross accounts through service imports with
`share: true`: the server rewrites their reply subjects (so no reply can be aimed at a stream
subject) and adds `Nats-Request-Info`, which tells the command service who sent them
(`splice.services.senders`). Events are read through imported, pinned JetStream API subjects
under the prefix `subjects.JS_API_PREFIX`: a consumer's filter is fixed by the import.

Passwords are random 192-bit tokens; the server's config holds only their bcrypt hashes
(`Registry`), and each principal's credentials file (mode 0600) holds its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import bcrypt

from splice.events import subjects

Kind = Literal["service", "admin", "host", "tenant"]
REGISTRY_FILE = "principals.json"
SERVICE_USER = "service-splice"  # the services' user: its connections use `$JS.API` itself

_STREAM = subjects.STREAM
_JS = "$JS.API"
# What every non-service account may import for reading events: create a consumer (its filter
# pinned by the import's subject), pull from it, and direct-get the newest event (also pinned).
_READ = (
    "CONSUMER.CREATE.{stream}.*.{filter}",
    "DIRECT.GET.{stream}.{filter}",
)
_PULL = "CONSUMER.MSG.NEXT.{stream}.*"
# For those who read every tenant's events (the operator, hosts): any message by its sequence,
# and consumers with several filters (their create subject names no filter).
_ANY = ("DIRECT.GET.{stream}", "CONSUMER.CREATE.{stream}.*")


@dataclass(frozen=True)
class Credentials:
    """One principal's credentials, as its credentials file holds them."""

    kind: Kind
    name: str
    user: str
    password: str

    @property
    def js_prefix(self) -> str | None:
        """The JetStream API prefix this principal's connections use (None: the default)."""
        return None if self.kind == "service" else subjects.JS_API_PREFIX

    @property
    def tenant(self) -> str | None:
        return {"tenant": self.name, "admin": subjects.ADMIN, "host": subjects.HOSTS}.get(self.kind)

    def url(self, servers: str) -> str:
        """`servers` (comma-separated NATS URLs) with these credentials in each."""
        return ",".join(_with_userinfo(s, self.user, self.password) for s in servers.split(","))

    def to_json(self) -> str:
        return json.dumps(
            {"kind": self.kind, "name": self.name, "user": self.user, "password": self.password},
            indent=2,
        )

    @classmethod
    def load(cls, path: Path) -> Credentials:
        d = json.loads(Path(path).read_text())
        return cls(kind=d["kind"], name=d["name"], user=d["user"], password=d["password"])


def _with_userinfo(url: str, user: str, password: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def strip_userinfo(url: str) -> str:
    """The URL(s) without credentials: what may be printed or logged."""
    out = []
    for u in url.split(","):
        parts = urlsplit(u if "://" in u else f"nats://{u}")
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        out.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    return ",".join(out)


def account_of(kind: Kind, name: str) -> str:
    if kind == "service":
        return subjects.SERVICE_ACCOUNT
    if kind == "admin":
        return subjects.ADMIN_ACCOUNT
    return subjects.host_account(name) if kind == "host" else subjects.tenant_account(name)


def _check_name(kind: Kind, name: str) -> None:
    if kind == "host":
        ok = subjects.HOST_NAME.fullmatch(name) is not None
    elif kind == "tenant":
        ok = subjects.TENANT_NAME.fullmatch(name) is not None
    else:
        ok = name == {"service": "splice", "admin": "admin"}[kind]
    if not ok:
        raise ValueError(f"{name!r} is not a valid {kind} name")


class Registry:
    """The principals of one bus, kept in a directory: `principals.json` (user names and bcrypt
    hashes, what the server's config is rendered from) and one `<kind>-<name>.json` credentials
    file each (mode 0600). The services' and the admin's principals always exist."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.dir, 0o700)
        path = self.dir / REGISTRY_FILE
        self._hashes: dict[str, dict[str, str]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )
        self.issue("service", "splice")
        self.issue("admin", "admin")

    @property
    def service(self) -> Credentials:
        return self.credentials("service", "splice")

    @property
    def admin(self) -> Credentials:
        return self.credentials("admin", "admin")

    def path_of(self, kind: Kind, name: str) -> Path:
        return self.dir / f"{kind}-{name}.json"

    def credentials(self, kind: Kind, name: str) -> Credentials:
        return Credentials.load(self.path_of(kind, name))

    def principals(self) -> list[tuple[Kind, str]]:
        return [(v["kind"], v["name"]) for v in self._hashes.values()]  # type: ignore[misc]

    def issue(self, kind: Kind, name: str, *, rotate: bool = False) -> tuple[Credentials, bool]:
        """This principal's credentials, made when missing (or `rotate`d); and whether the
        server's config changed (then the running server must reload it)."""
        _check_name(kind, name)
        user = name if kind in ("tenant", "host") else f"{kind}-{name}"
        key = f"{kind}:{name}"
        path = self.path_of(kind, name)
        if key in self._hashes and path.exists() and not rotate:
            return Credentials.load(path), False
        password = secrets.token_urlsafe(24)
        # The password is a 192-bit random token: stretching adds nothing against guessing it,
        # and a low cost keeps every connect cheap for the server.
        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        creds = Credentials(kind=kind, name=name, user=user, password=password)
        _write_private(path, creds.to_json())
        self._hashes[key] = {"kind": kind, "name": name, "user": user, "hash": digest}
        _write_private(self.dir / REGISTRY_FILE, json.dumps(self._hashes, indent=2, sort_keys=True))
        return creds, True

    def revoke(self, kind: Kind, name: str) -> bool:
        if kind in ("service", "admin") or self._hashes.pop(f"{kind}:{name}", None) is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path_of(kind, name).unlink()
        _write_private(self.dir / REGISTRY_FILE, json.dumps(self._hashes, indent=2, sort_keys=True))
        return True

    def server_config(self, stream: str = _STREAM) -> str:
        """The `accounts { … }` block of the server's configuration. Anonymous connections get
        no account (no `no_auth_user`), so they are refused at connect."""
        blocks = [self._service_account(stream)]
        for entry in sorted(self._hashes.values(), key=lambda e: (e["kind"], e["name"])):
            if entry["kind"] != "service":
                blocks.append(self._account(entry, stream))
        return "accounts {\n" + "\n".join(blocks) + "}\n"

    def _user(self, kind: str, name: str) -> str:
        e = self._hashes[f"{kind}:{name}"]
        return f'    users: [{{user: "{e["user"]}", password: "{e["hash"]}"}}]\n'

    def _service_account(self, stream: str) -> str:
        exports = [
            f"{subjects.PREFIX}.cmd.>",
            f"{subjects.PREFIX}.qry.>",
            f"{subjects.PREFIX}.hb.>",
            f"{subjects.PREFIX}.stats.>",
            *(f"{_JS}.{t.format(stream=stream, filter=subjects.EVENTS)}" for t in _READ),
            *(f"{_JS}.{t.format(stream=stream)}" for t in _ANY),
        ]
        lines = [f'    {{service: "{s}"}}' for s in exports]
        lines.append(f'    {{service: "{_JS}.{_PULL.format(stream=stream)}", response_type: stream}}')
        hosts = sorted(e["name"] for e in self._hashes.values() if e["kind"] == "host")
        imports = [f'      {{service: {{account: "{subjects.host_account(h)}", '
                   f'subject: "{_stats_of(h)}"}}, share: true}}' for h in hosts]
        return (
            f'  "{subjects.SERVICE_ACCOUNT}": {{\n    jetstream: enabled\n'
            + self._user("service", "splice")
            + "    exports: [\n"
            + "\n".join(lines)
            + "\n    ]\n"
            + ("    imports: [\n" + "\n".join(imports) + "\n    ]\n" if imports else "")
            + "  }\n"
        )

    def _account(self, entry: dict[str, str], stream: str) -> str:
        kind, name = entry["kind"], entry["name"]
        svc = subjects.SERVICE_ACCOUNT
        p = subjects.PREFIX
        exports = ""
        if kind == "admin":
            requests, events = [f"{p}.cmd.>", f"{p}.qry.>", f"{p}.stats.>"], subjects.EVENTS
        elif kind == "host":
            requests, events = [f"{p}.cmd.{subjects.HOSTS}.>", subjects.heartbeat(name)], subjects.EVENTS
            exports = (f'    exports: [{{service: "{_stats_of(name)}", '
                       f'accounts: ["{svc}"]}}]\n')
        else:
            requests = [f"{p}.cmd.{name}.>", f"{p}.qry.{name}.>", f"{p}.stats.{name}.>"]
            events = subjects.events_of_tenant(name)
        imports = [f'      {{service: {{account: "{svc}", subject: "{s}"}}, share: true}}' for s in requests]
        reads = (*_READ, _PULL) if kind == "tenant" else (*_READ, _PULL, *_ANY)
        for t in reads:
            sub = t.format(stream=stream, filter=events)
            imports.append(
                f'      {{service: {{account: "{svc}", subject: "{_JS}.{sub}"}}, '
                f'to: "{subjects.JS_API_PREFIX}.{sub}"}}'
            )
        return (
            f'  "{account_of(kind, name)}": {{\n'  # type: ignore[arg-type]
            + self._user(kind, name)
            + exports
            + "    imports: [\n"
            + "\n".join(imports)
            + "\n    ]\n  }\n"
        )


def _stats_of(host: str) -> str:
    """The stats requests one host's agent answers (`splice.agents.stats.subject`)."""
    return f"{subjects.PREFIX}.stats.*.{host}.*"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, replacing any earlier one whole."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
