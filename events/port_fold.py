"""The agent's fold of a port: where the port is bound, as its events say.

A compute port (`port.create` with `host`) is plugged by whoever runs the machine, as Nova
does for Neutron; the agent needs only the host it is bound to (and its network, address and
MAC, for whoever wants them) to find its host-side interface (`agents/drivers/tap/model.py`).

Only applying lives here, by the events' stable wire names. The taps that use a port
(`PortTapAttached`/`PortTapDetached`) are the command side's book-keeping and are not folded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from . import network as ev
from .folding import apply_with, by_tag, deleted, fold_with


class PortState(Struct, kw_only=True):
    network_id: str = ""
    ip_address: str = ""
    mac_address: str = ""
    host: str | None = None
    deleted: bool = False


def _created(s: PortState, e: ev.PortCreated) -> None:
    s.network_id, s.ip_address, s.mac_address = e.network_id, e.ip_address, e.mac_address
    s.host, s.deleted = e.host, False


def _updated(s: PortState, e: ev.PortUpdated) -> None:
    s.host = e.host


PORT_APPLIERS: dict[str, Callable[..., None]] = by_tag({
    ev.PortCreated: _created,
    ev.PortUpdated: _updated,
    ev.PortDeleted: deleted,
})


def apply(state: PortState, event: Any) -> bool:
    """Apply one event in place; False when it is not one this fold keeps."""
    return apply_with(PORT_APPLIERS, state, event)


def fold_port(events: list[Any]) -> PortState:
    return fold_with(PORT_APPLIERS, PortState(), events)
