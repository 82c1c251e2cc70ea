"""The bridges the drivers share, pure: which of ours may go.

Every driver plugs its legs into the networks' bridges (``<prefix>br-<network>``, whichever
driver comes first makes one). A bridge of ours goes once no driver needs it and nothing else
is plugged in (members, routers, other drivers' legs): the ports that belong to legs being
deleted in the same plan do not count.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping


def unused_bridges(ours: Collection[str], needed: Collection[str], ports: Mapping[str, int],
                   leaving: Iterable[str | None]) -> list[str]:
    """``ours``: the bridges with our prefix; ``needed``: those the driver's desired state
    uses; ``ports``: every bridge's port count (any owner); ``leaving``: the bridge each leg
    deleted in this plan is plugged into (None: loose)."""
    freed: dict[str, int] = {}
    for master in leaving:
        if master is not None:
            freed[master] = freed.get(master, 0) + 1
    return sorted(b for b in set(ours) - set(needed) if ports.get(b, 0) <= freed.get(b, 0))
