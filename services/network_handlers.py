"""Networks, ports (with IPAM) and routers of one tenant."""

from __future__ import annotations

from typing import cast

from splice.events import contracts as c
from splice.events.router_fold import ROUTER_PROVIDER

from . import network as vnis
from .common_handlers import Decision, SpliceApplication, Touched
from .domain import (
    SINGLETON,
    ExhaustedError,
    InUseError,
    InvalidError,
    aggregate_id,
    new_public_id,
    public_id,
)
from .hosts_handlers import consume, place, release, routed_lbs, unplace
from .network import Network, Port, SegmentPool, check_network
from .router import Router
from .servicetype import ADMIN, ServiceType
from .servicetype_handlers import default_type, st_id


def net_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, Network.AGGREGATE, public)


def port_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, Port.AGGREGATE, public)


def shard_pool_id(shard: int) -> str:
    """The aggregate id of a VNI shard's pool (admin scope; shard 0: the pool from before the
    shards, `SINGLETON`)."""
    return aggregate_id(ADMIN, SegmentPool.AGGREGATE, f"{SINGLETON[:-12]}{shard:012x}")


SEGMENTS_ID = shard_pool_id(0)


def _segments(app: SpliceApplication, t: Touched, shard: int) -> SegmentPool:
    pid = shard_pool_id(shard)
    return cast(SegmentPool, t.load_or_create(app, pid, lambda: SegmentPool.create(pid)))


def _allocate(app: SpliceApplication, tenant: str, t: Touched, network_id: str) -> int:
    """A VNI from the tenant's home shard; a full shard hands over to the next one."""
    home = vnis.home_shard(tenant)
    for k in range(vnis.SEGMENT_SHARDS):
        pool = _segments(app, t, (home + k) % vnis.SEGMENT_SHARDS)
        if not pool.full:  # a full one is left unchanged: not written
            return pool.allocate(network_id)
    raise ExhaustedError(f"every VNI in {vnis.VNI_MIN}..{vnis.VNI_MAX} is in use", None)


def _release(app: SpliceApplication, t: Touched, vni: int, network_id: str) -> None:
    """Give a VNI back to the pool that dealt it: its shard's, or else the pool from before the
    shards (shard 0), which may have dealt VNIs past its range."""
    for shard in dict.fromkeys((vnis.shard_of(vni), 0)):
        pid = shard_pool_id(shard)
        pool = t.touched(pid) or app.get_or_none(pid)
        if isinstance(pool, SegmentPool) and pool.allocated.get(vni) == network_id:
            t.add(pool)
            pool.release(vni, network_id)
            return


def create_network(app: SpliceApplication, tenant: str, cmd: c.CreateNetwork) -> Decision:
    cidr, gateway = check_network(cmd.cidr, cmd.gateway)
    t = Touched()
    consume(app, tenant, t, "network")
    nid = net_id(tenant, new_public_id())
    vni = _allocate(app, tenant, t, nid)  # in this decision's write: never given twice
    net = Network.create(nid, cmd.name, cidr, gateway, vni)
    t.add(net)
    return Decision(net, t.list())


def delete_network(app: SpliceApplication, tenant: str, cmd: c.DeleteNetwork) -> Decision:
    t = Touched()
    net: Network = app.get_live(net_id(tenant, cmd.id), "network")
    net.delete()
    t.add(net)
    release(app, tenant, t, "network")
    if net.segmentation_id:  # 0: created before networks had a VNI, nothing to give back
        _release(app, t, net.segmentation_id, net.id)
    return Decision(net, t.list())


def set_network_external(app: SpliceApplication, tenant: str, cmd: c.SetNetworkExternal) -> Decision:
    net: Network = app.get_live(net_id(cmd.tenant, cmd.id), "network")
    gateways = 0
    for port_public in set(net.allocations.values()):
        port = app.get_or_none(port_id(cmd.tenant, port_public))
        if port is not None and not port.deleted and port.device_owner.startswith("router_gateway:"):
            gateways += 1
    net.set_external(cmd.external, gateways)
    return Decision(net, [net])


def new_port(
    app: SpliceApplication,
    tenant: str,
    t: Touched,
    network_public: str,
    owner: str,
    *,
    ip: str | None = None,
    gateway: bool = False,
    name: str | None = None,
    host: str | None = None,
    field: str = "$.network_id",
) -> Port:
    """Allocate an address on the network and make the port that holds it."""
    net: Network = t.get(app, net_id(tenant, network_public), "network", field)
    t.add(net)
    consume(app, tenant, t, "port")
    pid = port_id(tenant, new_public_id())
    address = net.allocate(public_id(pid), ip, gateway=gateway)
    port = Port.create(pid, network_public, address, owner, name=name, host=host)
    t.add(port)
    return port


def drop_port(app: SpliceApplication, tenant: str, t: Touched, public: str) -> None:
    port = app.get_or_none(port_id(tenant, public))
    if port is None or port.deleted:
        return
    port.delete()
    t.add(port)
    nid = net_id(tenant, port.network_id)
    net: Network | None = cast(Network | None, t.touched(nid)) or app.get_or_none(nid)
    if net is not None:
        net.release(port.ip_address, public)
        t.add(net)
    release(app, tenant, t, "port")


def create_port(app: SpliceApplication, tenant: str, cmd: c.CreatePort) -> Decision:
    t = Touched()
    port = new_port(app, tenant, t, cmd.network_id, "compute", ip=cmd.ip_address, name=cmd.name, host=cmd.host)
    return Decision(port, t.list())


def update_port(app: SpliceApplication, tenant: str, cmd: c.UpdatePort) -> Decision:
    port: Port = app.get_live(port_id(tenant, cmd.id), "port")
    port.update(cmd.name if cmd.name is not None else port.name, cmd.host if cmd.host is not None else port.host)
    return Decision(port, [port])


def delete_port(app: SpliceApplication, tenant: str, cmd: c.DeletePort) -> Decision:
    port: Port = app.get_live(port_id(tenant, cmd.id), "port")
    if port.device_owner != "compute":
        raise InUseError(f"the port belongs to {port.device_owner}: delete that instead", "$.id")
    if port.taps:
        raise InUseError(f"{len(port.taps)} tap(s) use this port ({', '.join(port.taps)}): "
                         "delete them first", "$.id")
    t = Touched()
    drop_port(app, tenant, t, cmd.id)
    return Decision(port, t.list())


# -- routers ----------------------------------------------------------------------------------


def router_id(tenant: str, public: str) -> str:
    return aggregate_id(tenant, Router.AGGREGATE, public)


def vips_stay(app: SpliceApplication, router: Router, network_id: str, field: str) -> None:
    """A leg that holds routed load balancers' VIPs stays until they go."""
    lbs = routed_lbs(app, router, network_id)
    if lbs:
        raise InUseError(f"{len(lbs)} routed load balancer(s) have their VIP on this leg: "
                         f"{', '.join(sorted(public_id(lb.id) for lb in lbs))}", field)


def create_router(app: SpliceApplication, tenant: str, cmd: c.CreateRouter) -> Decision:
    t = Touched()
    if cmd.service_type_id:
        st: ServiceType = app.get_live(st_id(cmd.service_type_id), "service type", "$.service_type_id")
    else:
        st = default_type(app, "$.service_type_id")
    consume(app, tenant, t, "router")
    router = Router.create(router_id(tenant, new_public_id()), cmd.name, public_id(st.id))
    st.use(router.id)
    t.add(router, st)
    place(app, t, router, ROUTER_PROVIDER)  # a live host with the router driver, or it waits
    return Decision(router, t.list())


def add_router_interface(app: SpliceApplication, tenant: str, cmd: c.AddRouterInterface) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    t.add(router)
    port = new_port(app, tenant, t, cmd.network_id, f"router_interface:{cmd.id}", gateway=True)
    router.add_interface(cmd.network_id, public_id(port.id), port.ip_address)
    return Decision(router, t.list())


def remove_router_interface(
    app: SpliceApplication, tenant: str, cmd: c.RemoveRouterInterface
) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    t.add(router)
    vips_stay(app, router, cmd.network_id, "$.network_id")
    drop_port(app, tenant, t, router.remove_interface(cmd.network_id))
    return Decision(router, t.list())


def set_router_gateway(app: SpliceApplication, tenant: str, cmd: c.SetRouterGateway) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    t.add(router)
    net: Network = t.get(app, net_id(tenant, cmd.network_id), "network", "$.network_id")
    if not net.external:
        raise InvalidError("a router's gateway must be on an external network "
                           "(an admin flags one with network.set_external)", "$.network_id")
    if router.gateway is not None and router.gateway.network_id != cmd.network_id:
        vips_stay(app, router, router.gateway.network_id, "$.network_id")
    old = router.clear_gateway()
    if old:
        drop_port(app, tenant, t, old)
    port = new_port(app, tenant, t, cmd.network_id, f"router_gateway:{cmd.id}")
    router.set_gateway(cmd.network_id, public_id(port.id), port.ip_address, cmd.enable_snat)
    return Decision(router, t.list())


def clear_router_gateway(app: SpliceApplication, tenant: str, cmd: c.ClearRouterGateway) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    t.add(router)
    if router.gateway is not None:
        vips_stay(app, router, router.gateway.network_id, "$.id")
    old = router.clear_gateway()
    if old is None:
        raise InvalidError("the router has no gateway", "$.id")
    drop_port(app, tenant, t, old)
    return Decision(router, t.list())


def delete_router(app: SpliceApplication, tenant: str, cmd: c.DeleteRouter) -> Decision:
    t = Touched()
    router: Router = app.get_live(router_id(tenant, cmd.id), "router")
    old = router.clear_gateway()
    router.delete()
    t.add(router)
    if old:
        drop_port(app, tenant, t, old)
    unplace(app, t, router)
    st = app.get_or_none(st_id(router.service_type_id))
    if st is not None:
        st.release(router.id)
        t.add(st)
    release(app, tenant, t, "router")
    return Decision(router, t.list())
