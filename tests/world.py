"""A command-side world without I/O: the handlers over the library's in-memory store.

`World.do(tenant, command)` runs one command through the production handlers and aggregates
(acting context, the handler's decision, one save of everything it touched) and returns the
reply's id or raises the domain error; `last` lists the type names of the events it produced.
What the service adds around that — retries on conflicts, idempotency by command id, the
JetStream store — is not here: the tests over NATS cover it. Used by the pure domain tests and
the property-based tests.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from splice.events import contracts as c
from splice.services.codec import type_name
from splice.services.common_handlers import SpliceApplication
from splice.services.domain import Meta, acting, public_id
from splice.services.handlers import COMMAND_HANDLERS

TYPES = {name: cls for name, cls in vars(c).items() if isinstance(cls, type)}


class World:
    def __init__(self, **env: str) -> None:
        self.app = SpliceApplication(
            env={"PERSISTENCE_MODULE": "eventsourcing.popo",
                 "MAPPER_TOPIC": "splice.services.codec:SpliceMapper", **env}
        )
        self.last: list[str] = []

    def close(self) -> None:
        self.app.close()

    def do(self, tenant: str, command: c.Command) -> str:
        """Run a command; return the reply's id. Domain errors propagate."""
        meta = Meta("tester", str(uuid.uuid4()), "corr")
        with acting(meta):
            decision = COMMAND_HANDLERS[type(command)](self.app, tenant, command)
        self.last = [type_name(e.payload) for a in decision.save for e in a.pending_events]
        if decision.save:
            self.app.save(*decision.save)
        return decision.result_id or public_id(decision.subject.id)

    def cmd(self, tenant: str, command: str, /, **fields: Any) -> str:
        """`cmd("acme", "CreateNetwork", name=..., cidr=...)`: built and validated like the wire."""
        cls = TYPES[command]
        raw = msgspec.json.encode(fields)
        return self.do(tenant, msgspec.json.decode(raw, type=cls))

    def get(self, tenant: str, aggregate: str, public: str) -> Any:
        return self.app.repository.get(f"{tenant}.{aggregate}.{public}")
