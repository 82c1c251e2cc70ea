"""Every resource kind the read side has a view for: its view, its columns, how to read a row.

The generic kinds (networks, ports, routers, firewalls, NAT, taps, chains) are query faces on
the `resources` table: a row's `fields` hold the resource's latest values, so they are lifted
to the top level here (`id`, `tenant`, `version` … plus `name`, `cidr` …). Health monitors have
no view of their own: one per pool, read from the pools view and named by their pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    name: str  # the CLI group: `splice <name> list`
    view: str  # splice.qry.<tenant>.<view>
    columns: tuple[str, ...]  # the list's columns (dotted paths into the flat row)
    generic: bool = False  # a `resources` face: lift `fields`
    parents: tuple[str, ...] = ()  # filters narrowing a name to a parent (loadbalancer_id…)
    deleted_filter: bool = True  # the view lists deleted rows only with {"deleted": null}
    admin: bool = False  # an admin-scoped view (service types): asked as _admin


STATUS = ("provisioning_status", "operating_status")

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("network", "networks", ("id", "name", "cidr", "gateway", "segmentation_id"),
             generic=True),
        Kind("port", "ports", ("id", "name", "network_id", "ip_address", "mac_address",
                               "device_owner", "host"), generic=True),
        Kind("router", "routers", ("id", "name", "service_type_id"), generic=True),
        Kind("firewall", "firewalls", ("id", "name", "default_action", "insertion.provider",
                                       "insertion.router_id", "rules"), generic=True),
        Kind("nat", "nats", ("id", "name", "insertion.provider", "insertion.router_id",
                             "port_forwards"), generic=True),
        Kind("tap", "taps", ("id", "name", "port_id", "monitor_port_id", "direction",
                             "insertion.provider"), generic=True),
        Kind("chain", "chains", ("id", "name", "router_id", "priority", "symmetric", "hops"),
             generic=True),
        Kind("loadbalancer", "loadbalancers", ("id", "name", "vip_address", *STATUS,
                                               "insertion.provider", "host")),
        Kind("listener", "listeners", ("id", "name", "loadbalancer_id", "protocol",
                                       "protocol_port", *STATUS),
             parents=("loadbalancer_id",), deleted_filter=False),
        Kind("pool", "pools", ("id", "name", "loadbalancer_id", "protocol", "lb_algorithm",
                               *STATUS), parents=("loadbalancer_id",), deleted_filter=False),
        Kind("member", "members", ("id", "name", "pool_id", "address", "protocol_port",
                                   "weight", *STATUS),
             parents=("loadbalancer_id", "pool_id"), deleted_filter=False),
        Kind("healthmonitor", "pools", ("pool_id", "pool_name", "type", "delay", "timeout",
                                        "max_retries", "provisioning_status"),
             parents=("loadbalancer_id",), deleted_filter=False),
        Kind("servicetype", "servicetypes", ("id", "name", "default", "providers",
                                             "description"), admin=True),
    )
}

# A command's id option -> the kind it names (the `id` argument names the command's own kind).
ID_OPTIONS: dict[str, str] = {
    "loadbalancer_id": "loadbalancer",
    "vip_network_id": "network",
    "network_id": "network",
    "router_id": "router",
    "service_type_id": "servicetype",
    "port_id": "port",
    "monitor_port_id": "port",
    "listener_id": "listener",
    "pool_id": "pool",
}


def lift(kind: Kind, row: dict[str, Any]) -> dict[str, Any]:
    """A view's row as the CLI shows it (generic rows: `fields` lifted to the top)."""
    if kind.generic and isinstance(row.get("fields"), dict):
        rest = {k: v for k, v in row.items() if k not in ("fields", "aggregate")}
        return {"id": row.get("id"), "name": row["fields"].get("name"),
                **{k: v for k, v in row["fields"].items() if k != "command_tenant"}, **rest}
    if kind.name == "healthmonitor":
        monitor = row.get("healthmonitor") or {}
        return {"pool_id": row["id"], "pool_name": row.get("name"),
                "loadbalancer_id": row.get("loadbalancer_id"), "tenant": row.get("tenant"),
                **monitor, "provisioning_status": row.get("provisioning_status")}
    return row
