"""Read-side schema evolution: old payloads are upcast to the newest schema before any view sees them.

History is never rewritten: an event stored with ``"schema": 1`` stays so in the stream forever.
The command side upcasts in `services/codec.py` with `upcast_v<N>_v<N+1>` class methods; the
read side does the same on plain dicts, so views are written against the newest schema only.

Steps come from one explicit table (`UPCASTERS`, keyed by type name and the version a step
starts from); when a wire contract in `events/contracts.py` itself defines
``upcast_v<N>_v<N+1>`` (a classmethod taking the payload dict) and a ``class_version``, those
steps are used for versions this table does not cover. A step mutates the dict in place.

Schema versions the read side knows:

* ``ServiceTypeCreated`` v2 and ``ServiceTypeUpdated`` v2 carry ``labels`` (``{str: str}``,
  free-form tags as Neutron's and Octavia's resources have). v1 payloads have none: they are
  upcast with ``labels = {}``. The command side still writes v1 today; the read side is ready
  for v2 (and the tests replay stored v1 and v2 payloads side by side).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from splice.events.contracts import EVENT_TYPES

Payload = dict[str, Any]
Step = Callable[[Payload], None]


def _add_labels(payload: Payload) -> None:
    """v1 → v2: `labels` did not exist; an old event had none."""
    payload.setdefault("labels", {})


UPCASTERS: dict[tuple[str, int], Step] = {
    ("ServiceTypeCreated", 1): _add_labels,
    ("ServiceTypeUpdated", 1): _add_labels,
}


def current_version(topic: str) -> int:
    """The newest schema of `topic` the read side can upcast to."""
    mine = max((v + 1 for (t, v) in UPCASTERS if t == topic), default=1)
    contract = EVENT_TYPES.get(topic)
    theirs = int(getattr(contract, "class_version", 1) or 1) if contract is not None else 1
    return max(mine, theirs)


def _step(topic: str, version: int) -> Step | None:
    step = UPCASTERS.get((topic, version))
    if step is not None:
        return step
    contract = EVENT_TYPES.get(topic)
    method = getattr(contract, f"upcast_v{version}_v{version + 1}", None)
    return method if callable(method) else None


# topic -> newest version, computed once per topic (the hot path reads this dict only).
_CURRENT: dict[str, int] = {}


def upcast(topic: str, payload: Payload) -> Payload:
    """Bring `payload` to the newest schema of `topic`; unknown topics pass through unchanged."""
    target = _CURRENT.get(topic)
    if target is None:
        target = _CURRENT[topic] = current_version(topic)
    version = payload.get("schema", 1)
    if not isinstance(version, int) or version >= target:
        return payload
    while version < target:
        step = _step(topic, version)
        if step is None:  # a gap in the chain: keep what we have, say which schema it is
            break
        step(payload)
        version += 1
    payload["schema"] = version
    return payload
