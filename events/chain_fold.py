"""The agent's fold of a service chain: its router, classifier, hops, priority, symmetric.

The command side decides (services/chains.py); the agent that hosts the chain's router needs
only the chain's complete values to steer it (`agents/drivers/chain/`). `ServiceChainUpdated`
carries the complete new values, so an update replaces them all.

Only applying lives here, by the events' stable wire names: no checks, no clocks. The hops
list of an event is copied, never kept as the state's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct, field

from . import advanced as ev
from .advanced import Classifier, Hop
from .folding import apply_with, by_tag, deleted, fold_with


class ChainState(Struct, kw_only=True):
    name: str = ""
    router_id: str | None = None  # None: stored before chains named their router (not steered)
    classifier: Classifier = field(default_factory=Classifier)
    hops: list[Hop] = []
    priority: int = 0
    symmetric: bool = False
    deleted: bool = False


def _created(s: ChainState, e: ev.ServiceChainCreated) -> None:
    s.name, s.router_id, s.classifier = e.name, e.router_id, e.classifier
    s.hops, s.priority, s.symmetric, s.deleted = list(e.hops), e.priority, e.symmetric, False


def _updated(s: ChainState, e: ev.ServiceChainUpdated) -> None:
    s.name, s.classifier, s.hops = e.name, e.classifier, list(e.hops)
    s.priority, s.symmetric = e.priority, e.symmetric


CHAIN_APPLIERS: dict[str, Callable[..., None]] = by_tag({
    ev.ServiceChainCreated: _created,
    ev.ServiceChainUpdated: _updated,
    ev.ServiceChainDeleted: deleted,
})


def apply(state: ChainState, event: Any) -> bool:
    """Apply one event in place; False when it is not one this fold keeps."""
    return apply_with(CHAIN_APPLIERS, state, event)


def fold_chain(events: list[Any]) -> ChainState:
    return fold_with(CHAIN_APPLIERS, ChainState(), events)
