"""`classifiers_overlap`: when two chains' classifiers select common traffic (table and properties)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.events.chain_rules import classifiers_overlap, port_range
from splice.events.contracts import Classifier

pytestmark = pytest.mark.chains

LSP = "3f1c2a9e-0000-4000-8000-000000000001"
OTHER_LSP = "3f1c2a9e-0000-4000-8000-000000000002"


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ({}, {}, True),
    ({"protocol": "tcp"}, {"protocol": "any"}, True),
    ({"protocol": "tcp"}, {"protocol": "udp"}, False),
    ({"protocol": "icmp"}, {"protocol": "icmp"}, True),
    ({"source_cidr": "10.0.0.0/8"}, {}, True),
    ({"source_cidr": "10.0.0.0/8"}, {"source_cidr": "10.1.2.0/24"}, True),
    ({"source_cidr": "10.0.0.0/24"}, {"source_cidr": "10.0.1.0/24"}, False),
    ({"destination_cidr": "192.0.2.0/25"}, {"destination_cidr": "192.0.2.128/25"}, False),
    ({"destination_cidr": "192.0.2.7/32"}, {"destination_cidr": "192.0.2.0/24"}, True),
    ({"source_cidr": "10.0.0.0/24"}, {"destination_cidr": "10.0.1.0/24"}, True),  # different fields
    ({"destination_port": "80"}, {"destination_port": "80"}, True),
    ({"destination_port": "80"}, {"destination_port": "81"}, False),
    ({"destination_port": "80-90"}, {"destination_port": "90-100"}, True),
    ({"destination_port": "80-89"}, {"destination_port": "90-100"}, False),
    ({"source_port": "1024-65535"}, {}, True),
    ({"source_port": "1-1023"}, {"source_port": "1024-65535"}, False),
    ({"logical_source_port": LSP}, {}, True),
    ({"logical_source_port": LSP}, {"logical_source_port": LSP}, True),
    ({"logical_source_port": LSP}, {"logical_source_port": OTHER_LSP}, False),
    ({"protocol": "tcp", "destination_port": "80"}, {"protocol": "tcp", "destination_port": "443"}, False),
    ({"protocol": "tcp", "destination_cidr": "10.0.0.0/8", "destination_port": "80-443"},
     {"protocol": "any", "destination_cidr": "10.9.0.0/16", "destination_port": "443"}, True),
])
def test_classifiers_overlap_when_every_field_overlaps(a: dict[str, Any], b: dict[str, Any], overlap: bool) -> None:
    ca, cb = Classifier(**a), Classifier(**b)
    assert classifiers_overlap(ca, cb) is overlap
    assert classifiers_overlap(cb, ca) is overlap


def test_port_range_reads_one_port_a_range_or_none() -> None:
    assert (port_range("80"), port_range("1000-2000"), port_range(None)) == ((80, 80), (1000, 2000), (0, 65535))


def _cidr(draw: Any) -> str | None:
    return draw(st.one_of(st.none(), st.builds(
        lambda a, p: str(ipaddress.IPv4Network((a, p), strict=False)),
        st.integers(0, 2**32 - 1), st.integers(0, 32))))


def _ports(draw: Any) -> str | None:
    lo = draw(st.integers(1, 65535))
    hi = draw(st.integers(lo, 65535))
    return draw(st.sampled_from([None, f"{lo}", f"{lo}-{hi}"]))


@st.composite
def classifiers(draw: Any) -> Classifier:
    return Classifier(
        protocol=draw(st.sampled_from(["tcp", "udp", "icmp", "any"])),
        source_cidr=_cidr(draw), destination_cidr=_cidr(draw),
        source_port=_ports(draw), destination_port=_ports(draw),
        logical_source_port=draw(st.sampled_from([None, LSP, OTHER_LSP])),
    )


def _packet_of(c: Classifier) -> tuple[str, int, int, int, int, str]:
    """A packet the classifier matches (its fields' lowest values)."""
    net = lambda v: int(ipaddress.IPv4Network(v).network_address) if v else 0  # noqa: E731
    return ("tcp" if c.protocol == "any" else c.protocol, net(c.source_cidr), net(c.destination_cidr),
            port_range(c.source_port)[0], port_range(c.destination_port)[0], c.logical_source_port or LSP)


def _matches(c: Classifier, p: tuple[str, int, int, int, int, str]) -> bool:
    def within(cidr: str | None, addr: int) -> bool:
        return cidr is None or ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(cidr)

    def inside(r: str | None, port: int) -> bool:
        lo, hi = port_range(r)
        return lo <= port <= hi

    return (c.protocol in ("any", p[0]) and within(c.source_cidr, p[1]) and within(c.destination_cidr, p[2])
            and inside(c.source_port, p[3]) and inside(c.destination_port, p[4])
            and c.logical_source_port in (None, p[5]))


@given(classifiers(), classifiers())
def test_overlap_is_symmetric_reflexive_and_found_by_a_common_packet(a: Classifier, b: Classifier) -> None:
    assert classifiers_overlap(a, a)
    assert classifiers_overlap(a, b) == classifiers_overlap(b, a)
    if not classifiers_overlap(a, b):  # no packet of either's lowest values matches both
        assert not (_matches(b, _packet_of(a)) or _matches(a, _packet_of(b)))
    else:  # the intersection's lowest packet matches both
        lo = lambda x, y: max(port_range(x)[0], port_range(y)[0])  # noqa: E731
        net = max((v for v in (a.source_cidr, b.source_cidr) if v),
                  key=lambda v: ipaddress.IPv4Network(v).prefixlen, default=None)
        dst = max((v for v in (a.destination_cidr, b.destination_cidr) if v),
                  key=lambda v: ipaddress.IPv4Network(v).prefixlen, default=None)
        proto = a.protocol if a.protocol != "any" else (b.protocol if b.protocol != "any" else "tcp")
        packet = (proto, _packet_of(Classifier(source_cidr=net))[1], _packet_of(Classifier(destination_cidr=dst))[2],
                  lo(a.source_port, b.source_port), lo(a.destination_port, b.destination_port),
                  a.logical_source_port or b.logical_source_port or LSP)
        assert _matches(a, packet) and _matches(b, packet)
