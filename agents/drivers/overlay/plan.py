"""The overlay driver's model and plan, pure: which tenant networks this host joins to the
other hosts over VXLAN, and the steps that make the host hold exactly that.

A network is **present** on a host when one of the host's drivers plugs a leg into its bridge
(``<prefix>br-<8 hex>``: a load balancer's VIP, a router's interface) or a compute port is
bound to the host (its machine is plugged into that bridge, as Nova plugs it). On each
present network with a segment (`NetworkCreated.segmentation_id`, the VNI, unique across
tenants) the host holds one VXLAN device ``<prefix>vx<8 hex of the network>`` in the bridge:

* ``vxlan id <VNI> local <this host's underlay address> dstport 4789 nolearning dev
  <the underlay interface>`` (with ``dev``, the kernel sets its MTU to the underlay's - 50:
  tenant frames of 1500 bytes need an underlay of 1550);
* head-end replication: an all-zeros forwarding entry per other live host with an underlay
  address (``bridge fdb append 00:00:00:00:00:00 dst <its address>``), so broadcast, ARP
  and unknown unicast reach every host;
* a forwarding entry per compute port bound to another host (its MAC → that host's
  address), from the port's events: known unicast goes straight there.

The overlay converges first (the agent runs it before the service drivers), making the bridge
of every present network and its VXLAN device: a new leg's first gratuitous ARP must already
reach the other hosts. A bridge whose only port is our VXLAN device is unused
(`netns.observe_host` does not count it), so the service drivers remove it with its last leg,
once the overlay removed the device of a network no longer present. Only devices with the
agent's prefix are ever touched.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from splice.agents.model import NetworkSpec, fit_ifname

from ..ops import EnsureBridge, Op

VXLAN_PORT = 4789
FLOOD = "00:00:00:00:00:00"
VNI_MIN, VNI_MAX = 1, 2**24 - 1


def vxlan_name(prefix: str, network_id: str) -> str:
    return fit_ifname(f"{prefix}vx", network_id)


@dataclass(frozen=True, slots=True)
class Underlay:
    """This host's end of the underlay: its address and the interface that holds it."""

    address: str
    dev: str


@dataclass(frozen=True, slots=True)
class Segment:
    """One network this host joins to the others."""

    network_id: str
    vni: int
    bridge: str
    vxlan: str
    remotes: frozenset[str] = frozenset()  # other hosts' underlay addresses (flooding)
    macs: Mapping[str, str] = field(default_factory=dict)  # a remote port's MAC -> its host's


@dataclass(frozen=True, slots=True)
class VxlanSeen:
    vni: int
    local: str
    dev: str
    port: int
    learning: bool
    master: str | None
    up: bool
    floods: frozenset[str] = frozenset()  # dst of the all-zeros entries
    macs: Mapping[str, str] = field(default_factory=dict)  # MAC -> dst, entries we made


@dataclass(frozen=True, slots=True)
class Observed:
    bridges: frozenset[str]  # ours
    vxlans: Mapping[str, VxlanSeen]  # ours, by name


@dataclass(frozen=True, slots=True)
class CreateVxlan(Op):
    """Delete whatever device of that name is there, make it anew, plug it, bring it up."""

    segment: Segment
    underlay: Underlay


@dataclass(frozen=True, slots=True)
class VxlanOp(Op):
    """A step on one VXLAN device of ours."""

    scope = "vxlan"
    vxlan: str


@dataclass(frozen=True, slots=True)
class Attach(VxlanOp):
    """Plug the device into its network's bridge (and bring it up)."""

    bridge: str


@dataclass(frozen=True, slots=True)
class SetFdb(VxlanOp):
    """A forwarding entry: frames for `mac` tunnel to the host at `remote`. The all-zeros MAC
    (`FLOOD`) is flooding, one entry per remote host (appended); any other MAC has one
    destination (replaced where it moved)."""

    mac: str
    remote: str


@dataclass(frozen=True, slots=True)
class DeleteFdb(VxlanOp):
    """A forwarding entry no longer wanted: a host that left the network, a port that went."""

    mac: str
    remote: str


@dataclass(frozen=True, slots=True)
class DeleteVxlan(VxlanOp):
    """The device of a network no longer present here."""


def segments(networks: Mapping[str, int], present: Collection[str], *, prefix: str,
             remotes: Collection[str], ports: Mapping[str, tuple[str, str, str]]
             ) -> dict[str, Segment]:
    """By network id: the segments this host holds. `networks`: every network's VNI (0: none);
    `present`: the networks present here; `remotes`: the other live hosts' underlay addresses;
    `ports`: per port on another host, (network id, MAC, that host's underlay address)."""
    out: dict[str, Segment] = {}
    for net in sorted(present):
        vni = networks.get(net, 0)
        if not VNI_MIN <= vni <= VNI_MAX:
            continue
        macs = {mac.lower(): remote for n, mac, remote in ports.values() if n == net and mac}
        out[net] = Segment(net, vni, NetworkSpec(net, "", "").bridge_name(prefix),
                           vxlan_name(prefix, net), frozenset(remotes), macs)
    return out


def _fits(seg: Segment, seen: VxlanSeen, underlay: Underlay) -> bool:
    return (seen.vni, seen.local, seen.dev, seen.port, seen.learning) == (
        seg.vni, underlay.address, underlay.dev, VXLAN_PORT, False)


def plan(desired: Mapping[str, Segment], observed: Observed, underlay: Underlay | None, *,
         make_bridges: Collection[str] = ()) -> list[Op]:
    """`make_bridges`: the networks whose bridge the overlay makes (present through compute
    ports alone). No underlay: nothing is joined (and nothing of ours is kept)."""
    ops: list[Op] = []
    wanted = {s.vxlan: s for s in desired.values()} if underlay is not None else {}
    for net in sorted(make_bridges):
        seg = desired.get(net)
        if seg is not None and underlay is not None and seg.bridge not in observed.bridges:
            ops.append(EnsureBridge(seg.bridge))
    have_bridge = set(observed.bridges) | {o.name for o in ops if isinstance(o, EnsureBridge)}
    for name, seg in sorted(wanted.items()):
        if seg.bridge not in have_bridge:
            continue  # its last leg went: so does the device (below)
        seen = observed.vxlans.get(name)
        assert underlay is not None
        if seen is None or not _fits(seg, seen, underlay):
            ops.append(CreateVxlan(seg, underlay))
            seen = None
        elif seen.master != seg.bridge or not seen.up:
            ops.append(Attach(name, seg.bridge))
        floods = set() if seen is None else set(seen.floods)
        ops += [SetFdb(name, FLOOD, r) for r in sorted(seg.remotes - floods)]
        ops += [DeleteFdb(name, FLOOD, r) for r in sorted(floods - seg.remotes)]
        macs = {} if seen is None else dict(seen.macs)
        ops += [SetFdb(name, m, r) for m, r in sorted(seg.macs.items()) if macs.get(m) != r]
        ops += [DeleteFdb(name, m, r) for m, r in sorted(macs.items()) if m not in seg.macs]
    for name in sorted(observed.vxlans):
        seg = wanted.get(name)
        if seg is None or seg.bridge not in have_bridge:
            ops.append(DeleteVxlan(name))
    return ops
