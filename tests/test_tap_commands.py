"""Standalone taps on the command side: accepted means servable (both ports bound to one host
that offers the provider), placed on the ports' host, and the ports keep their host meanwhile.

No NATS, no threads: `World` runs the real handlers over the library's in-memory store.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from world import World

from splice.services.domain import DomainError, InUseError, InvalidError

pytestmark = pytest.mark.chains

T = "acme"
PROVIDERS = {"loadbalancer": "haproxy", "tap": "tc-mirror"}


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    world.cmd("_admin", "CreateServiceType", name="full", providers=PROVIDERS, default=True)
    yield world
    world.close()


def err(w: World, exc: type[DomainError], command: str, /, **fields: object) -> DomainError:
    with pytest.raises(exc) as e:
        w.cmd(T, command, **fields)
    return e.value


def ports(w: World, *hosts: str | None) -> list[str]:
    net = w.cmd(T, "CreateNetwork", name="n", cidr="10.1.0.0/24")
    return [w.cmd(T, "CreatePort", network_id=net, host=h) for h in hosts]


def test_a_standalone_tap_needs_both_ports_bound_to_one_host(w: World) -> None:
    bound, unbound, elsewhere, other = ports(w, "h1", None, "h2", "h1")
    cases = [
        (unbound, other, "$.port_id"),
        (bound, unbound, "$.monitor_port_id"),
        (bound, elsewhere, "$.monitor_port_id"),
        (bound, bound, "$.monitor_port_id"),
    ]
    for port, monitor, field in cases:
        e = err(w, InvalidError, "CreateTap", name="t", port_id=port, monitor_port_id=monitor)
        assert e.field == field, (port, monitor, e.message)


def test_a_tap_goes_to_its_ports_host_not_the_least_loaded_one(w: World) -> None:
    w.cmd("_host", "RegisterHost", host="a", providers=["tc-mirror"])
    w.cmd("_host", "RegisterHost", host="b", providers=["tc-mirror", "haproxy"])
    port, monitor = ports(w, "b", "b")
    tap = w.get(T, "tap", w.cmd(T, "CreateTap", name="t", port_id=port, monitor_port_id=monitor,
                                direction="ingress"))
    assert (tap.host, tap.direction, tap.insertion.provider) == ("b", "ingress", "tc-mirror")
    assert "ServicePlaced" not in w.last and "ServiceWaiting" not in w.last  # not the registry's
    assert sorted(w.get(T, "port", port).taps) == [tap.id.rsplit(".", 1)[1]]
    w.cmd("_admin", "DeclareHostLost", host="b")  # it stays where the port's traffic is
    assert w.get(T, "tap", tap.id.rsplit(".", 1)[1]).host == "b"


def test_a_tap_on_a_host_without_the_provider_is_refused_and_waits_on_an_unknown_one(
    w: World,
) -> None:
    w.cmd("_host", "RegisterHost", host="lb-only", providers=["haproxy"])
    port, monitor, p2, m2 = ports(w, "lb-only", "lb-only", "later", "later")
    e = err(w, InvalidError, "CreateTap", name="t", port_id=port, monitor_port_id=monitor)
    assert e.field == "$.service_type_id" and "tc-mirror" in e.message
    waiting = w.get(T, "tap", w.cmd(T, "CreateTap", name="t", port_id=p2, monitor_port_id=m2))
    assert waiting.host == "later"  # its agent serves it once it runs there


def test_a_tapped_port_keeps_its_host_until_the_tap_goes(w: World) -> None:
    port, monitor = ports(w, "h1", "h1")
    tap = w.cmd(T, "CreateTap", name="t", port_id=port, monitor_port_id=monitor)
    for p in (port, monitor):
        assert err(w, InUseError, "UpdatePort", id=p, host="h2").field == "$.host"
        assert err(w, InUseError, "DeletePort", id=p).field == "$.id"
    w.cmd(T, "UpdatePort", id=port, name="renamed")  # the host is all that is pinned
    w.cmd(T, "DeleteTap", id=tap)
    assert "PortTapDetached" in w.last
    w.cmd(T, "UpdatePort", id=port, host="h2")
    w.cmd(T, "DeletePort", id=monitor)
    assert w.get(T, "port", port).host == "h2"


def test_a_routed_tap_is_placed_as_before(w: World) -> None:
    net = w.cmd(T, "CreateNetwork", name="n", cidr="10.1.0.0/24")
    router = w.cmd(T, "CreateRouter", name="r")
    port, monitor = (w.cmd(T, "CreatePort", network_id=net) for _ in range(2))
    tap = w.get(T, "tap", w.cmd(T, "CreateTap", name="t", port_id=port, monitor_port_id=monitor,
                                router_id=router))
    assert tap.insertion.mode == "routed" and tap.insertion.router_id == router
    assert w.get(T, "port", port).taps == []
