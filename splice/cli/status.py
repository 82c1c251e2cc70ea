"""`splice loadbalancer status LB`: the status tree, as `openstack loadbalancer status show`.

The load balancer, its listeners, each listener's pools, each pool's health monitor and
members, each with its provisioning and operating status (the loadbalancers view's
`status_tree`); pools no listener uses hang under the load balancer itself.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.tree import Tree

from splice.cli import complete, output
from splice.cli.common import NatsUrlOpt, TenantOpt, out, print_json, tenant_of, url_of
from splice.cli.kinds import KINDS
from splice.cli.resolve import find

COLOURS = {"ACTIVE": "green", "ONLINE": "green", "ERROR": "red", "OFFLINE": "red",
           "DEGRADED": "yellow", "DRAINING": "yellow", "NO_MONITOR": "dim",
           "DELETED": "dim"}


def _status(value: Any) -> str:
    if not value:
        return ""
    text = str(value)
    colour = COLOURS.get(text, "yellow" if text.startswith("PENDING") else "")
    return f"[{colour}]{text}[/]" if colour else text


def _line(kind: str, node: dict[str, Any], label: str | None = None) -> str:
    name = label if label is not None else node.get("name") or ""
    statuses = " / ".join(s for s in (_status(node.get("provisioning_status")),
                                      _status(node.get("operating_status"))) if s)
    ident = f" [dim]{node['id']}[/]" if node.get("id") else ""
    return f"[bold]{kind}[/] {escape(str(name))}{ident}  {statuses}"


def _pool(parent: Tree, pool: dict[str, Any]) -> None:
    branch = parent.add(_line("pool", pool))
    monitor = pool.get("healthmonitor")
    if monitor:
        branch.add(_line("healthmonitor", monitor, str(monitor.get("type") or "")))
    for m in pool.get("members") or []:
        label = f"{m.get('address')}:{m.get('protocol_port')}"
        if m.get("name"):
            label = f"{m['name']} {label}"
        branch.add(_line("member", m, label))


def tree_of(status_tree: dict[str, Any], extra: str = "") -> Tree:
    lb = status_tree.get("loadbalancer") or {}
    root = Tree(_line("loadbalancer", lb) + extra)
    used: set[str] = set()
    for li in lb.get("listeners") or []:
        branch = root.add(_line("listener", li))
        for pool in li.get("pools") or []:
            used.add(pool.get("id"))
            _pool(branch, pool)
    for pool in lb.get("pools") or []:
        if pool.get("id") not in used:
            _pool(root, pool)
    return root


def status(
    ref: Annotated[str, typer.Argument(metavar="ID-OR-NAME", help="The load balancer.",
                                       autocompletion=complete.ref("loadbalancer"))],
    tenant: TenantOpt = None,
    nats_url: NatsUrlOpt = None,
    output_: Annotated[str, typer.Option("-o", "--output", help="table, json or yaml")] = "table",
) -> None:
    """The load balancer's status tree: listeners, pools, health monitors, members."""
    output.check_format(output_)
    bus = url_of(nats_url)
    row = find(bus, tenant_of(bus, tenant), KINDS["loadbalancer"], ref, "ID-OR-NAME")
    tree = row.get("status_tree") or {"loadbalancer": {"id": row["id"], "name": row.get("name")}}
    if output_ == "json":
        print_json(tree)
    elif output_ == "yaml":
        sys.stdout.write(output.to_yaml(tree))
    elif output_ == "value":
        lb = tree.get("loadbalancer") or {}
        sys.stdout.write(f"{lb.get('provisioning_status')}\t{lb.get('operating_status')}\n")
    else:
        extra = ""
        if row.get("host"):
            extra += f"  [dim]on {escape(str(row['host']))}[/]"
        if row.get("error"):
            extra += f"\n[red]{escape(str(row['error']))}[/]"
        out.print(tree_of(tree, extra))
