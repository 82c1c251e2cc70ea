"""Schema evolution of stored events: old payloads are upcast to the newest schema on read.

History is never rewritten: an event stored with ``"schema": 1`` stays so in the stream forever.
Readers bring a payload, as a plain JSON object, to the newest schema before anything else
sees it, so that views (and folds) are written against the newest schema only.

`UPCASTERS` is the one table of steps, keyed by (type name, the schema a step starts from); a
step mutates the payload dict in place. The read side (`projections/envelope.py`) applies it
to every payload it decodes.

Schemas known beyond v1:

* ``ServiceTypeCreated`` v2 and ``ServiceTypeUpdated`` v2 carry ``labels`` (``{str: str}``,
  free-form tags as Neutron's and Octavia's resources have). v1 payloads have none: they are
  upcast with ``labels = {}``. The command side writes v1 today; readers are ready for v2 (the
  tests replay stored v1 and v2 payloads side by side).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Payload = dict[str, Any]
Step = Callable[[Payload], None]


def _add_labels(payload: Payload) -> None:
    """v1 → v2: `labels` did not exist; an old event had none."""
    payload.setdefault("labels", {})


UPCASTERS: dict[tuple[str, int], Step] = {
    ("ServiceTypeCreated", 1): _add_labels,
    ("ServiceTypeUpdated", 1): _add_labels,
}

# type name -> its newest schema (only types with steps; everything else is at 1).
CURRENT: dict[str, int] = {}
for _topic, _version in UPCASTERS:
    CURRENT[_topic] = max(CURRENT.get(_topic, 1), _version + 1)


def current_version(topic: str) -> int:
    """The newest schema of `topic`."""
    return CURRENT.get(topic, 1)


def upcast(topic: str, payload: Payload) -> Payload:
    """Bring `payload` to the newest schema of `topic`; unknown types pass through unchanged.

    A payload newer than any step known here is left as it is; a gap in the chain of steps
    stops there, and ``schema`` then says which schema the payload is in.
    """
    target = CURRENT.get(topic)
    version = payload.get("schema", 1)
    if target is None or not isinstance(version, int) or version >= target:
        return payload
    while version < target:
        step = UPCASTERS.get((topic, version))
        if step is None:
            break
        step(payload)
        version += 1
    payload["schema"] = version
    return payload
