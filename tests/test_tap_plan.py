"""The tap driver's pure parts: the plan as a table, the band that marks its filters, the name
of a port's interface, and which taps `agents.desired` hands it."""

from __future__ import annotations

import pytest

from splice.agents.desired import Folds, desired_taps
from splice.agents.drivers.tap.model import (
    TC_EGRESS,
    TC_INGRESS,
    PrefBand,
    TapSpec,
    port_interface,
)
from splice.agents.drivers.tap.plan import (
    AddFilter,
    DeleteClsact,
    DeleteFilter,
    EnsureClsact,
    InterfaceSeen,
    Missing,
    Observed,
    plan,
)
from splice.events.advanced_fold import TapState
from splice.events.port_fold import PortState
from splice.events.wire import InsertionState

pytestmark = pytest.mark.chains

BAND = PrefBand.of("spl-")
P, M, M2 = "tapaaaaaaaa-aa", "tapbbbbbbbb-bb", "tapcccccccc-cc"
TAP = TapSpec("t1", P, M, "both")
SLOT = BAND.slot_of("t1")
PIN, POUT = BAND.pref(SLOT, TC_INGRESS), BAND.pref(SLOT, TC_EGRESS)


BARE = {"P": InterfaceSeen(1), "M": InterfaceSeen(2), "M2": InterfaceSeen(3)}
SERVED = InterfaceSeen(1, True, {(TC_INGRESS, PIN): frozenset({2}), (TC_EGRESS, POUT): frozenset({2})})


def world(port: InterfaceSeen | None = BARE["P"], monitor: InterfaceSeen | None = BARE["M"],
          monitor2: InterfaceSeen | None = BARE["M2"]) -> Observed:
    return Observed({n: i for n, i in ((P, port), (M, monitor), (M2, monitor2)) if i is not None})


CASES = [
    ("a new tap: clsact, then a filter per direction",
     {"t1": TAP}, world(),
     [EnsureClsact(P), AddFilter(P, TC_INGRESS, PIN, M, "t1"), AddFilter(P, TC_EGRESS, POUT, M, "t1")]),
    ("ingress is into the machine: the interface's tc egress",
     {"t1": TapSpec("t1", P, M, "ingress")}, world(),
     [EnsureClsact(P), AddFilter(P, TC_EGRESS, POUT, M, "t1")]),
    ("egress is out of the machine: the interface's tc ingress",
     {"t1": TapSpec("t1", P, M, "egress")}, world(),
     [EnsureClsact(P), AddFilter(P, TC_INGRESS, PIN, M, "t1")]),
    ("converged: nothing", {"t1": TAP}, world(SERVED), []),
    ("a filter deleted by hand comes back",
     {"t1": TAP}, world(InterfaceSeen(1, True, {(TC_EGRESS, POUT): frozenset({2})})),
     [AddFilter(P, TC_INGRESS, PIN, M, "t1")]),
    ("a monitor made again (new index): the filters are replaced",
     {"t1": TAP}, world(SERVED, InterfaceSeen(9)),
     [DeleteFilter(P, TC_INGRESS, PIN), DeleteFilter(P, TC_EGRESS, POUT),
      AddFilter(P, TC_INGRESS, PIN, M, "t1"), AddFilter(P, TC_EGRESS, POUT, M, "t1")]),
    ("a new monitor for the tap: the filters are replaced",
     {"t1": TapSpec("t1", P, M2, "both")}, world(SERVED),
     [DeleteFilter(P, TC_INGRESS, PIN), DeleteFilter(P, TC_EGRESS, POUT),
      AddFilter(P, TC_INGRESS, PIN, M2, "t1"), AddFilter(P, TC_EGRESS, POUT, M2, "t1")]),
    ("a deleted tap: its filters go, and the clsact it leaves empty",
     {}, world(SERVED),
     [DeleteFilter(P, TC_INGRESS, PIN), DeleteFilter(P, TC_EGRESS, POUT), DeleteClsact(P)]),
    ("a deleted tap on a clsact that holds someone else's filters: the clsact stays",
     {}, world(InterfaceSeen(1, True, {(TC_EGRESS, POUT): frozenset({2})}, foreign=True)),
     [DeleteFilter(P, TC_EGRESS, POUT)]),
    ("someone else's clsact without our filters is left alone",
     {}, world(InterfaceSeen(1, True, {}, foreign=False)), []),
    ("the port's interface is missing: reported, nothing made",
     {"t1": TAP}, world(port=None), [Missing("t1", f"no port interface {P} on this host")]),
    ("the monitor's interface is missing: reported, and its stale filters go",
     {"t1": TAP}, world(SERVED, monitor=None),
     [Missing("t1", f"no monitor interface {M} on this host"),
      DeleteFilter(P, TC_INGRESS, PIN), DeleteFilter(P, TC_EGRESS, POUT), DeleteClsact(P)]),
]


@pytest.mark.parametrize(("desired", "observed", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(desired: dict[str, TapSpec], observed: Observed, expected: list[object]) -> None:
    assert plan(desired, observed, BAND) == expected


def test_two_taps_of_one_port_that_hash_alike_get_different_preferences() -> None:
    ids = [f"t{i}" for i in range(2000)]
    a = next(i for i in ids if i != "t0" and BAND.slot_of(i) == BAND.slot_of("t0"))
    ops = plan({"t0": TapSpec("t0", P, M, "egress"), a: TapSpec(a, P, M2, "egress")}, world(), BAND)
    prefs = [op.pref for op in ops if isinstance(op, AddFilter)]
    assert len(prefs) == 2 and len(set(prefs)) == 2 and all(p in BAND for p in prefs)


def test_bands_are_tc_preferences_of_their_own_per_prefix() -> None:
    band = PrefBand.of("splt-")
    prefs = {band.pref(s, p) for s in range(256) for p in (TC_INGRESS, TC_EGRESS)}
    assert len(prefs) == 512 and all(p in band and 0xC000 <= p <= 0xFFFF for p in prefs)
    assert band.pref(0, TC_INGRESS) - 1 not in band and band.pref(255, TC_EGRESS) + 1 not in band


def test_a_ports_interface_is_named_as_neutron_names_it() -> None:
    assert port_interface("1a2b3c4d-5e6f-4000-8000-000000000000") == "tap1a2b3c4d-5e"
    assert len(port_interface("1a2b3c4d-5e6f-4000-8000-000000000000")) == 14


def _ins(router: str | None = None, provider: str = "tc-mirror") -> InsertionState:
    return InsertionState(mode="routed" if router else "floating", service_type_id="st",
                          provider=provider, router_id=router)


PORT, MON = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def _folds(tap: TapState, port_host: str | None = "h1", mon_host: str | None = "h1") -> Folds:
    ports = {f"acme.port.{i}": PortState(host=h) for i, h in ((PORT, port_host), (MON, mon_host))}
    return Folds(taps={"acme.tap.t1": tap}, ports=ports)


def _tap(**kw: object) -> TapState:
    fields: dict[str, object] = {"port_id": PORT, "monitor_port_id": MON, "direction": "ingress",
                                 "insertion": _ins(), "host": "h1", **kw}
    return TapState(**fields)  # type: ignore[arg-type]


def test_desired_taps_names_the_ports_interfaces_and_says_why_it_cannot_serve() -> None:
    taps, refused = desired_taps(_folds(_tap()), "h1", ("tc-mirror",))
    assert taps == {"t1": TapSpec("t1", port_interface(PORT), port_interface(MON), "ingress")}
    assert refused == {}
    assert desired_taps(_folds(_tap()), "h2", ("tc-mirror",)) == ({}, {})  # placed elsewhere
    assert desired_taps(_folds(_tap(insertion=_ins("r1"))), "h1", ("tc-mirror",)) == ({}, {})
    _, refused = desired_taps(_folds(_tap(), mon_host="h2"), "h1", ("tc-mirror",))
    assert refused == {"t1": f"its monitor port {MON} is bound to h2"}
    _, refused = desired_taps(_folds(_tap()), "h1", ())
    assert "no driver for provider 'tc-mirror'" in refused["t1"]
