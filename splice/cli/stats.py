"""`splice loadbalancer stats LB`: bytes in and out, open and total connections per listener,
per-pool and per-member state, as the agent of the load balancer's host last read them.

The load balancer is resolved in the read models like everywhere else (id or name, within the
tenant); its row names its host. The CLI then asks that host's agent on
``splice.stats.<tenant>.<host>.<lb id>`` (request/reply, `splice.agents.stats`): counters are
not events, so the read models do not hold them. Names come from the row's status tree.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from splice import client
from splice.agents.stats import subject
from splice.cli import complete, output
from splice.cli.common import NatsUrlOpt, TenantOpt, err, out, print_json, tenant_of, url_of
from splice.cli.kinds import KINDS
from splice.cli.resolve import find
from splice.cli.status import _status

ASK_TIMEOUT_S = 5.0
MAX_RETRY_WAIT_MS = 10_000.0


def names(status_tree: dict[str, Any] | None) -> dict[str, str]:
    """id → name (or address:port for a member without one), from the status tree."""
    found: dict[str, str] = {}
    lb = (status_tree or {}).get("loadbalancer") or {}

    def pool(p: dict[str, Any]) -> None:
        found[p.get("id", "")] = p.get("name") or ""
        for m in p.get("members") or []:
            found[m.get("id", "")] = m.get("name") or ""

    for li in lb.get("listeners") or []:
        found[li.get("id", "")] = li.get("name") or ""
        for p in li.get("pools") or []:
            pool(p)
    for p in lb.get("pools") or []:
        pool(p)
    return found


def ask(bus: client.Bus, row: dict[str, Any], tenant: str) -> dict[str, Any]:
    """The agent's reply; exits 1 with the reason when there is none."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    host = row.get("host")
    if not host:
        why = f" ({escape(str(row['status_reason']))})" if row.get("status_reason") else ""
        err.print(f"[red]unavailable[/]: load balancer {row['id']} is not placed on a host "
                  f"yet{why}: no counters")
        raise typer.Exit(1)
    where = subject(str(row.get("tenant") or tenant), str(host), str(row["id"]))
    for attempt in range(2):  # an agent that has not read the counters yet says when to ask
        try:
            reply = asyncio.run(client.request(bus, where, {}, timeout=ASK_TIMEOUT_S))
        except (NoRespondersError, NatsTimeout, TimeoutError):
            err.print(f"[red]unavailable[/]: the agent of host {escape(str(host))} did not "
                      f"answer on {where} (is it running?)")
            raise typer.Exit(1) from None
        wait_ms = (reply.get("error") or {}).get("retry_after_ms")
        if reply.get("ok") or not wait_ms or attempt:
            break
        time.sleep(min(float(wait_ms), MAX_RETRY_WAIT_MS) / 1000)
    if not reply.get("ok"):
        e = reply.get("error") or {}
        err.print(f"[red]{e.get('code')}[/]: {escape(str(e.get('message')))}")
        raise typer.Exit(1)
    return dict(reply["stats"])


def _n(value: Any) -> str:
    return "" if value is None else f"{value:,}"


def _label(name_of: dict[str, str], ident: str) -> str:
    name = name_of.get(ident) or ""
    return f"{escape(name)} [dim]{ident}[/]" if name else f"[dim]{ident}[/]"


def show(s: dict[str, Any], name_of: dict[str, str], now: float) -> None:
    age = max(0.0, now - float(s.get("at") or now))
    out.print(f"[bold]loadbalancer[/] {_label(name_of, s['loadbalancer_id'])}  "
              f"{_status(s.get('status'))}  [dim]{s.get('provider')} on "
              f"{escape(str(s.get('host')))}, read {age:.0f}s ago[/]")
    listeners = Table("listener", "port", "status", "bytes in", "bytes out", "active", "total",
                      title="listeners", title_justify="left")
    for lid, li in sorted(s.get("listeners", {}).items(), key=lambda kv: kv[1]["port"]):
        listeners.add_row(_label(name_of, lid), str(li["port"]), _status(li["status"]),
                          _n(li["bytes_in"]), _n(li["bytes_out"]), _n(li["active"]),
                          _n(li["total"]))
    out.print(listeners)
    pools = Table("pool", "status", "members up", "active", "total", title="pools",
                  title_justify="left")
    for pid, p in sorted(s.get("pools", {}).items()):
        pools.add_row(_label(name_of, pid), _status(p["status"]),
                      f"{p['members_up']}/{p['members']}", _n(p.get("active")), _n(p.get("total")))
    out.print(pools)
    members = Table("member", "address", "status", "check", "active", "total", "bytes in",
                    "bytes out", title="members", title_justify="left")
    for mid, m in sorted(s.get("members", {}).items(),
                         key=lambda kv: (kv[1]["pool_id"], kv[1]["address"], kv[1]["port"])):
        members.add_row(_label(name_of, mid), f"{m['address']}:{m['port']}",
                        _status(m["status"]), escape(m.get("check") or ""), _n(m.get("active")),
                        _n(m.get("total")), _n(m.get("bytes_in")), _n(m.get("bytes_out")))
    out.print(members)


def stats(
    ref: Annotated[str, typer.Argument(metavar="ID-OR-NAME", help="The load balancer.",
                                       autocompletion=complete.ref("loadbalancer"))],
    tenant: TenantOpt = None,
    nats_url: NatsUrlOpt = None,
    output_: Annotated[str, typer.Option(
        "-o", "--output", help="table, json, yaml, or value (one line per listener).")] = "table",
) -> None:
    """Bytes in/out and connections per listener, pool and member state, from the agent."""
    output.check_format(output_)
    bus = url_of(nats_url)
    who = tenant_of(bus, tenant)
    row = find(bus, who, KINDS["loadbalancer"], ref, "ID-OR-NAME")
    s = ask(bus, row, who)
    if output_ == "json":
        print_json(s)
    elif output_ == "yaml":
        sys.stdout.write(output.to_yaml(s))
    elif output_ == "value":
        for lid, li in sorted(s.get("listeners", {}).items(), key=lambda kv: kv[1]["port"]):
            sys.stdout.write("\t".join(str(v) for v in (
                lid, li["port"], li["status"], li["bytes_in"], li["bytes_out"], li["active"],
                li["total"])) + "\n")
    else:
        show(s, names(row.get("status_tree")), time.time())
