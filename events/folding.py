"""What every fold in `events/` shares: appliers keyed by an event's stable wire name (its tag,
never its Python class name), and applying one event with such a table."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

Applier = Callable[..., None]
S = TypeVar("S")


def tag_of(event: Any) -> str:
    """An event's wire name (the tag of its Struct)."""
    return str(type(event).__struct_config__.tag)


def by_tag(table: Mapping[type[Any], Applier]) -> dict[str, Applier]:
    """Appliers keyed by event class, as a table keyed by the events' wire names."""
    return {str(t.__struct_config__.tag): f for t, f in table.items()}


def apply_with(appliers: Mapping[str, Applier], state: Any, event: Any) -> bool:
    """Apply one event to `state` in place; False when no applier takes it."""
    applier = appliers.get(tag_of(event))
    if applier is None:
        return False
    applier(state, event)
    return True


def fold_with(appliers: Mapping[str, Applier], state: S, events: Iterable[Any]) -> S:
    """`state` (a fresh one) after `events`, each applied with `appliers`."""
    for event in events:
        apply_with(appliers, state, event)
    return state


class InChains(Protocol):
    """A service's state that keeps the chains it is a hop of."""

    chains: list[str]


def chain_attached(s: InChains, e: Any) -> None:
    """`ServiceChainAttached`, the same for every service that can be a hop."""
    if e.chain_id not in s.chains:
        s.chains = [*s.chains, e.chain_id]


def chain_detached(s: InChains, e: Any) -> None:
    """`ServiceChainDetached`."""
    s.chains = [c for c in s.chains if c != e.chain_id]


class Deletable(Protocol):
    """An aggregate's state that its last event marks deleted."""

    deleted: bool


def deleted(s: Deletable, e: Any) -> None:
    """The aggregate's ``…Deleted`` event, the same for every fold that keeps it."""
    s.deleted = True


class Placeable(Protocol):
    """A service's state that keeps where the scheduler put it, or the provider it waits for."""

    host: str | None
    waiting_for: str | None


def scheduled(s: Placeable, e: Any) -> None:
    """`ServiceScheduled` (a host, or "" and the provider it waits for)."""
    s.host = e.host or None
    s.waiting_for = None if e.host else e.waiting_for


def status_reason(waiting_for: str | None) -> str | None:
    """Why a service is not served yet, in words (None: nothing holds it back)."""
    return f"waiting for a host that offers {waiting_for}" if waiting_for else None
