"""The services routed on a router (firewalls and NAT, provider ``nftables``) as the nftables
tables of its namespace. Pure: no I/O.

A routed firewall or NAT has no placement of its own: its insertion (`InsertionState`, mode
``routed``) names its router, and it is realised wherever that router is, in the router's
namespace. So the agent folds every firewall and NAT, and for each router placed on its host
picks those routed on it (`routed_on`); `tables` turns them into the namespace's tables:

* the router's NAT table: the port forwards of all its NATs (merged with `forwards_of`, NATs in
  id order: the first forward of a protocol and external port wins) as DNAT from the external
  address, plus masquerade when SNAT is on; none without an external gateway (a forward needs
  the router's external address); its guard cuts the flows of a forward that went;
* one firewall table per firewall, its rules in order, its default action as the policy; its
  guard cuts the open flows the new rules refuse.

``accept_dnat`` is on for every routed firewall: a port forward passes a default-deny firewall
on the same router. A port forward is the tenant's explicit decision to expose that internal
address and port at the router, and both live on the same router (as Neutron's FWaaS sits with
the router's floating IPs and port forwardings); without it, every forward would also need an
allow rule for its *internal* address and port, and deleting that rule would silently break
the forward. The cost: firewall rules cannot narrow a forward (by source, say); the tenant
changes or removes the forward instead.

A firewall whose state cannot be rendered (it was not built by the command side) fails closed:
its table holds no rule and drops everything new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from splice.events.advanced_fold import FirewallState, NatState

from ..nftables import plan as nft
from ..nftables.conntrack import FirewallGuard, NatGuard
from ..nftables.render import (
    Ruleset,
    UnsafeValueError,
    firewall_table,
    forwards_of,
    nat_table,
    render_firewall,
    render_nat,
)

log = structlog.get_logger("splice.agent.router")

NFTABLES_PROVIDER = "nftables"  # the provider of routed firewalls and NAT this driver realises
ACCEPT_DNAT = True  # see the module's docstring


def routed_on(router_agg_id: str, firewalls: Mapping[str, FirewallState],
              nats: Mapping[str, NatState]) -> tuple[list[tuple[str, FirewallState]], list[NatState]]:
    """The live firewalls (with their public ids) and NATs routed on this router (by aggregate
    id ``<tenant>.router.<uuid>``), of provider ``nftables``, in aggregate id order."""
    tenant, router = router_agg_id.split(".", 1)[0], router_agg_id.rsplit(".", 1)[1]

    def mine(agg_id: str, kind: str, s: FirewallState | NatState) -> bool:
        ins = s.insertion
        return (agg_id.startswith(f"{tenant}.{kind}.") and not s.deleted and ins is not None
                and ins.mode == "routed" and ins.router_id == router
                and ins.provider == NFTABLES_PROVIDER)

    fws = [(a.rsplit(".", 1)[1], s) for a, s in sorted(firewalls.items()) if mine(a, "firewall", s)]
    return fws, [s for a, s in sorted(nats.items()) if mine(a, "nat", s)]


def nat_desired(router_id: str, prefix: str, nats: Sequence[NatState], *, external_if: str,
                external_address: str, snat: bool) -> nft.Desired | None:
    """The router's NAT table (None when it would hold nothing)."""
    forwards = forwards_of(nats)
    if not forwards and not snat:
        return None
    table = nat_table(prefix, router_id)
    try:
        ruleset = render_nat(table, forwards, external_interface=external_if,
                             external_addresses=[external_address], snat=snat)
    except UnsafeValueError as e:
        log.warning("port forwards not renderable: none kept", router=router_id, error=str(e))
        if not snat:
            return None
        forwards = []
        ruleset = render_nat(table, [], external_interface=external_if,
                             external_addresses=[external_address], snat=snat)
    return nft.Desired(router_id, ruleset, NatGuard.of(forwards, [external_address], snat))


def firewall_desired(firewall_id: str, state: FirewallState, prefix: str) -> nft.Desired:
    table = firewall_table(prefix, firewall_id)
    try:
        ruleset: Ruleset = render_firewall(state, table, accept_dnat=ACCEPT_DNAT)
    except UnsafeValueError as e:
        log.warning("firewall not renderable: its table drops everything new",
                    firewall=firewall_id, error=str(e))
        state = FirewallState(name=state.name, default_action="deny")
        ruleset = render_firewall(state, table, accept_dnat=False)
        return nft.Desired(firewall_id, ruleset, FirewallGuard.of(state))
    return nft.Desired(firewall_id, ruleset, FirewallGuard.of(state, accept_dnat=ACCEPT_DNAT))


def firewalls_desired(firewalls: Sequence[tuple[str, FirewallState]],
                      prefix: str) -> tuple[nft.Desired, ...]:
    return tuple(firewall_desired(fid, s, prefix) for fid, s in firewalls)
