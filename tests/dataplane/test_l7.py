"""L7 policies on real traffic: first match by position wins, hostile values match literally."""

from __future__ import annotations

import uuid

from splice.agents.drivers.haproxy.driver import HaproxyDriver
from splice.agents.drivers.reports import ACTIVE
from splice.agents.model import LoadBalancerSpec
from splice.events.lbaas import L7Policy, L7Rule, Listener, Member, Pool
from tests.dataplane.fabric import MEMBER_PORT, SUBNET, Fabric, wait_until

HOSTILE = "a'b #c ${HOME} \"d\" -f /etc/passwd"
URL = "https://example.com/moved?x=%[src]"


def l7_spec(net: Fabric, lb_id: str, reject_position: int, pool_position: int) -> LoadBalancerSpec:
    web, api = str(uuid.uuid4()), str(uuid.uuid4())
    policies = [
        L7Policy(id=str(uuid.uuid5(uuid.NAMESPACE_OID, "reject")), position=reject_position,
                     action="REJECT",
                     rules=[L7Rule(id=str(uuid.uuid4()), type="HEADER", key="X-Block", compare_type="EQUAL_TO",
                                       value=HOSTILE)]),
        L7Policy(id=str(uuid.uuid5(uuid.NAMESPACE_OID, "pool")), position=pool_position,
                     action="REDIRECT_TO_POOL", redirect_pool_id=api,
                     rules=[L7Rule(id=str(uuid.uuid4()), type="PATH", compare_type="STARTS_WITH", value="/api")]),
        L7Policy(id=str(uuid.uuid5(uuid.NAMESPACE_OID, "url")), position=9,
                     action="REDIRECT_TO_URL", redirect_url=URL,
                     rules=[L7Rule(id=str(uuid.uuid4()), type="PATH", compare_type="EQUAL_TO", value="/old")]),
    ]
    m0, m1 = net.members[0], net.members[1]
    return LoadBalancerSpec.build(
        lb_id, net.network, f"{SUBNET}.30", generation=reject_position,
        listeners=[Listener(id=str(uuid.uuid4()), name="http", protocol="HTTP", protocol_port=80,
                            default_pool_id=web, l7policies=policies)],
        pools=[Pool(id=web, name="web", protocol="HTTP",
                    members=[Member(id=m0.id, address=m0.address, protocol_port=MEMBER_PORT)]),
               Pool(id=api, name="api", protocol="HTTP",
                    members=[Member(id=m1.id, address=m1.address, protocol_port=MEMBER_PORT)])],
    )


async def test_l7_policies_route_reject_and_redirect_in_position_order(
    net: Fabric, reconciler: HaproxyDriver
) -> None:
    lb_id = str(uuid.uuid4())
    spec = l7_spec(net, lb_id, reject_position=1, pool_position=2)
    result = (await reconciler.converge({lb_id: spec}))[lb_id]
    assert result.provisioning_status == ACTIVE, result.reason
    vip = spec.vip_address
    wait_until(lambda: _ok(net, vip), 10, "the VIP to serve")

    assert net.get(vip, 80, "/").body == net.members[0].name
    assert net.get(vip, 80, "/api/x").body == net.members[1].name
    # the hostile header value matches only itself, character for character
    assert net.get(vip, 80, "/", {"X-Block": HOSTILE}).status == 403
    assert net.get(vip, 80, "/", {"X-Block": HOSTILE[:-1]}).status == 200
    # both policies match: the lower position (REJECT) wins
    assert net.get(vip, 80, "/api/x", {"X-Block": HOSTILE}).status == 403
    moved = net.get(vip, 80, "/old")
    assert (moved.status, moved.headers["location"]) == (302, URL)

    swapped = l7_spec(net, lb_id, reject_position=2, pool_position=1)
    await reconciler.converge({lb_id: swapped})
    assert net.get(vip, 80, "/api/x", {"X-Block": HOSTILE}).body == net.members[1].name


def _ok(net: Fabric, vip: str) -> bool:
    try:
        return net.get(vip, 80, timeout=1).status == 200
    except OSError:
        return False
