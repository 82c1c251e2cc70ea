"""Names and marks of the tap driver: where a port's traffic is, and which tc filters are ours.

**Where a port's traffic is.** A compute port (`port.create` with `host`) is plugged by whoever
runs the machine, as Nova does for Neutron: its host-side interface, in the host's root
namespace, is named as Neutron names it, ``tap`` + the first 11 characters of the port id
(`port_interface`, 14 bytes: ``tap1a2b3c4d-5e``). Splice creates no such interface; it finds
it. This is the one place that convention is written down in code.

**Directions** are the port's (Neutron's) point of view: ``ingress`` is the traffic into the
port's machine, which *leaves* the host-side interface (tc egress, parent ``0xFFFFFFF3``);
``egress`` is the traffic out of the machine, which *arrives* on it (tc ingress,
``0xFFFFFFF2``).

**Ours.** The driver's filters sit in a band of tc priorities (preferences) of its own, chosen
from the agent's prefix (`PrefBand`): 256 slots of two preferences each (tc ingress, tc
egress), a tap's slot derived from its id. Ingress and egress never share a preference: u32
keeps the hash tables of one clsact qdisc in one list, and a dump at a preference shows every
table of that preference, of both parents. pyroute2 (0.9) has no tc cookie attribute, so the
band is the mark. A filter outside the band is never touched; the clsact qdisc is removed only
when the driver removed its last filters from it and nothing else is left on it.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

TC_INGRESS = 0xFFFFFFF2  # clsact's ingress parent: frames arriving on the interface
TC_EGRESS = 0xFFFFFFF3  # clsact's egress parent: frames leaving it
DIRECTIONS = ("ingress", "egress", "both")
# The port's direction -> the tc parents of its host-side interface that see it.
PARENTS: dict[str, tuple[int, ...]] = {
    "ingress": (TC_EGRESS,),
    "egress": (TC_INGRESS,),
    "both": (TC_INGRESS, TC_EGRESS),
}
PORT_INTERFACE = re.compile(r"tap[0-9a-f]{8}-[0-9a-f]{2}")

BAND_BASE = 0xC000  # 49152: the driver's bands, 32 of 512 preferences, up to 65535
BANDS = 32
SLOTS = 256  # taps per port interface and band (two preferences each)


def port_interface(port_id: str) -> str:
    """The host-side interface of a compute port: ``tap`` + the port id's first 11 characters."""
    return "tap" + port_id[:11]


@dataclass(frozen=True, slots=True)
class TapSpec:
    """One tap this host serves: mirror `port_if`'s traffic in `direction` to `monitor_if`."""

    id: str  # the tap's public id
    port_if: str
    monitor_if: str
    direction: str  # ingress | egress | both (the port's point of view)

    @property
    def parents(self) -> tuple[int, ...]:
        return PARENTS[self.direction]


@dataclass(frozen=True, slots=True)
class PrefBand:
    """The tc preferences of one agent prefix's filters."""

    base: int

    @classmethod
    def of(cls, prefix: str) -> PrefBand:
        return cls(BAND_BASE + (zlib.crc32(prefix.encode()) % BANDS) * 2 * SLOTS)

    def __contains__(self, pref: int) -> bool:
        return self.base <= pref < self.base + 2 * SLOTS

    @staticmethod
    def slot_of(tap_id: str) -> int:
        return zlib.crc32(tap_id.encode()) % SLOTS

    def pref(self, slot: int, parent: int) -> int:
        return self.base + 2 * slot + (0 if parent == TC_INGRESS else 1)
