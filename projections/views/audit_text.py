"""What each event type changed, in domain terms: the audit log's summaries.

One function per event type (`SUMMARIES`, keyed by the registry's wire names): it reads the
event's own fields and, where a change needs its old value ("weight 1 → 5"), the resource's
folded fields before the event. tests/projections/test_audit_text.py fails if a type of the
registry has none. An event type this release does not know still gets the generic summary
(`audit.summarize`).

What a tenant wrote (names, descriptions, addresses) is quoted as plain text: control
characters escaped, long values cut. Nothing here interprets it; printing it safely (rich
markup escaped) is the CLI's part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

F = Mapping[str, Any]
Summary = Callable[[F, F | None], str]
MAX_TEXT = 60


def text(value: Any) -> str:
    """A tenant's value as one short line: control characters escaped, cut to MAX_TEXT."""
    s = value if type(value) is str else str(value)
    if not s.isprintable():  # the common case skips the loop over characters (replay's hot path)
        s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= MAX_TEXT else s[: MAX_TEXT - 1] + "…"


def short(ident: Any) -> str:
    """An id as people read it in a log: its first 8 characters (the uuid part of an
    aggregate id such as <tenant>.network.<uuid>)."""
    return text(str(ident or "?").rsplit(".", 1)[-1][:8])


def named(obj: Any, fallback_id: Any = None) -> str:
    """'web' for an entity with a name, else its short id."""
    if isinstance(obj, Mapping):
        if obj.get("name"):
            return text(obj["name"])
        return short(obj.get("id") or fallback_id)
    return short(fallback_id)


def val(value: Any) -> str:
    """A field's value in a change: strings quoted (a description may hold spaces)."""
    return f"'{text(value)}'" if isinstance(value, str) else text(value)


def change(old: Any, new: Any) -> str:
    return f"{val(old)} → {val(new)}"


def diff(before: F | None, now: F, keys: tuple[str, ...]) -> str:
    """'weight 1 → 5, backup False → True' for the keys that changed (all of them, as set,
    when there is nothing before)."""
    parts = []
    for k in keys:
        if k not in now:
            continue
        new = now[k]
        if before is None or k not in before:
            parts.append(f"{k} {val(new)}")
        elif (old := before[k]) != new:
            parts.append(f"{k} {val(old)} → {val(new)}")
    return ", ".join(parts) or "nothing changed"


def _of(before: F | None, key: str) -> Any:
    return (before or {}).get(key)


def child_before(before: F | None, single: str, plural: str, ident: Any,
                 nested: str | None = None) -> F | None:
    """The last known state of a child (a member, a pool, a listener) of the resource before
    this event: the one its previous event of that kind carried, else the one in the lists its
    creation carried (`nested`: members inside pools)."""
    last = _of(before, single)
    if isinstance(last, Mapping) and last.get("id") == ident:
        return last
    for item in _of(before, plural) or []:
        if not isinstance(item, Mapping):
            continue
        if item.get("id") == ident:
            return item
        for sub in (item.get(nested) or []) if nested else []:
            if isinstance(sub, Mapping) and sub.get("id") == ident:
                return sub
    return None


def pool_name(before: F | None, pool_id: Any) -> str:
    pool = child_before(before, "pool", "pools", pool_id)
    return named(pool, pool_id)


def listener_name(before: F | None, listener_id: Any) -> str:
    return named(child_before(before, "listener", "listeners", listener_id), listener_id)


def member_text(m: F) -> str:
    return f"{text(m.get('address'))}:{text(m.get('protocol_port'))}"


def providers(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{text(k)}={text(v)}" for k, v in value.items()) or "none"
    return text(value)


def insertion(value: Any) -> str:
    if not isinstance(value, Mapping):
        return ""
    where = f" on router {short(value['router_id'])}" if value.get("router_id") else ""
    return f", {text(value.get('mode'))} by {text(value.get('provider'))}{where}"


def rule_text(r: F) -> str:
    parts = [text(r.get("action")), text(r.get("protocol") or "any")]
    for key, word in (("source_cidr", "from"), ("source_port", "sport"),
                      ("destination_cidr", "to"), ("destination_port", "port")):
        if r.get(key):
            parts.append(f"{word} {text(r[key])}")
    return " ".join(parts)


def forward_text(f: F) -> str:
    return (f"{text(f.get('protocol'))} :{text(f.get('external_port'))} → "
            f"{text(f.get('internal_address'))}:{text(f.get('internal_port'))}")


def hops_text(hops: Any) -> str:
    if not isinstance(hops, list):
        return "?"
    return " → ".join(f"{text(h.get('kind'))} {short(h.get('service_id'))} "
                      f"({text(h.get('insertion'))})" for h in hops if isinstance(h, Mapping))


def classifier_text(c: Any) -> str:
    if not isinstance(c, Mapping):
        return "?"
    parts = [text(c.get("protocol") or "any")]
    for key, word in (("source_cidr", "from"), ("destination_cidr", "to"),
                      ("destination_port", "port"), ("logical_source_port", "port-id")):
        if c.get(key):
            parts.append(f"{word} {text(c[key])}")
    return " ".join(parts)


def placed(f: F, what: str) -> str:
    if f.get("host"):
        moved = f" (from {text(f['previous_host'])})" if f.get("previous_host") else ""
        return f"{what} placed on host {text(f['host'])}{moved}"
    if f.get("waiting_for"):
        return f"{what} waits for a host that offers {text(f['waiting_for'])}"
    return f"{what} on no host"


def statuses(f: F) -> str:
    parts = []
    if f.get("loadbalancer"):
        parts.append(f"load balancer {text(f['loadbalancer'])}")
    for kind in ("listeners", "pools", "members"):
        for ident, status in (f.get(kind) or {}).items():
            parts.append(f"{kind[:-1]} {short(ident)} {text(status)}")
    return "operating status: " + (", ".join(parts) or "unchanged")


def _member_updated(f: F, b: F | None) -> str:
    m = f.get("member") or {}
    old = child_before(b, "member", "pools", m.get("id"), nested="members")
    if old is None:
        old = child_before(b, "member", "members", m.get("id"))
    what = diff(old, m, ("weight", "backup", "admin_state_up", "name"))
    return f"member {member_text(m)} of pool {pool_name(b, f.get('pool_id'))}: {what}"


def _pool_updated(f: F, b: F | None) -> str:
    p = f.get("pool") or {}
    old = child_before(b, "pool", "pools", p.get("id"))
    what = diff(old, p, ("name", "lb_algorithm", "session_persistence", "admin_state_up"))
    return f"pool {named(p)} updated: {what}"


def _listener_updated(f: F, b: F | None) -> str:
    li = f.get("listener") or {}
    old = child_before(b, "listener", "listeners", li.get("id"))
    what = diff(old, li, ("name", "connection_limit", "timeout_client_data",
                          "timeout_member_connect", "timeout_member_data", "default_pool_id",
                          "admin_state_up"))
    return f"listener {named(li)} updated: {what}"


def _lb_created(f: F, b: F | None) -> str:
    pools = f.get("pools") or []
    members = sum(len(p.get("members") or []) for p in pools if isinstance(p, Mapping))
    return (f"load balancer {text(f.get('name'))} created, VIP {text(f.get('vip_address'))} "
            f"on network {short(f.get('vip_network_id'))}{insertion(f.get('insertion'))}; "
            f"{len(f.get('listeners') or [])} listener(s), {len(pools)} pool(s), "
            f"{members} member(s)"
            + (f", description {val(f['description'])}" if f.get("description") else ""))


def _quota_consumed(f: F, b: F | None) -> str:
    return (f"quota {text(f.get('resource'))} consumed 1: {text(f.get('used'))} used "
            f"(of {text(f.get('limit'))})")


def _quota_limits(f: F, b: F | None) -> str:
    old = _of(b, "limits") or {}
    new = f.get("limits") or {}
    parts = [f"{text(k)} {change(old[k], v)}" if k in old else f"{text(k)} {text(v)}"
             for k, v in new.items() if old.get(k) != v]
    return "quota limits set: " + (", ".join(parts) or "nothing changed")


SUMMARIES: dict[str, Summary] = {
    # service types (the operator's)
    "ServiceTypeCreated": lambda f, b: (
        f"service type {text(f.get('name'))} created: {providers(f.get('providers'))}"
        + (f", description {val(f['description'])}" if f.get("description") else "")),
    "ServiceTypeUpdated": lambda f, b: (
        f"service type {text(f.get('name'))} updated: "
        + diff(b, f, ("name", "description", "providers"))),
    "ServiceTypeDefaultSet": lambda f, b: (
        f"service type {text(_of(b, 'name') or '?')} made the default"),
    "ServiceTypeDefaultCleared": lambda f, b: (
        f"service type {text(_of(b, 'name') or '?')} no longer the default"),
    "ServiceTypeUsed": lambda f, b: f"service type used by {short(f.get('user_id'))}",
    "ServiceTypeReleased": lambda f, b: f"service type released by {short(f.get('user_id'))}",
    "ServiceTypeDeleted": lambda f, b: f"service type {text(_of(b, 'name') or '?')} deleted",
    "ServiceTypeNameCreated": lambda f, b: f"name {text(f.get('name'))} registered",
    "ServiceTypeNameClaimed": lambda f, b: (
        f"name {text(f.get('name'))} claimed by service type {short(f.get('service_type_id'))}"),
    "ServiceTypeNameReleased": lambda f, b: f"name {text(f.get('name'))} released",
    "DefaultServiceTypeCreated": lambda f, b: "default service type slot created",
    "DefaultServiceTypeChanged": lambda f, b: (
        f"default service type {short(f.get('previous_id')) if f.get('previous_id') else 'none'}"
        f" → {short(f.get('service_type_id')) if f.get('service_type_id') else 'none'}"),
    # hosts and scheduling
    "HostRegistryCreated": lambda f, b: "host registry created",
    "HostRegistered": lambda f, b: (
        f"host {text(f.get('host'))} registered, offers "
        f"{', '.join(text(p) for p in f.get('providers') or []) or 'nothing'}"
        + (f", underlay {text(f['underlay_ip'])}" if f.get("underlay_ip") else "")),
    "HostLost": lambda f, b: f"host {text(f.get('host'))} declared lost",
    "ServicePlaced": lambda f, b: (
        f"service {short(f.get('service_id'))} ({text(f.get('provider'))}) placed on host "
        f"{text(f.get('host'))}"),
    "ServiceWaiting": lambda f, b: (
        f"service {short(f.get('service_id'))} waits for a host that offers "
        f"{text(f.get('provider'))}"),
    "ServiceUnplaced": lambda f, b: (
        f"service {short(f.get('service_id'))} unplaced"
        + (f" from host {text(f['host'])}" if f.get("host") else "")),
    # quotas
    "QuotaCreated": lambda f, b: f"quota of tenant {text(f.get('tenant'))} created",
    "QuotaLimitsSet": _quota_limits,
    "QuotaConsumed": _quota_consumed,
    "QuotaReleased": lambda f, b: (
        f"quota {text(f.get('resource'))} released 1: {text(f.get('used'))} used"),
    # networks, segments, addresses, ports
    "NetworkCreated": lambda f, b: (
        f"network {text(f.get('name'))} created: {text(f.get('cidr'))}, gateway "
        f"{text(f.get('gateway'))}, VNI {text(f.get('segmentation_id'))}"),
    "NetworkDeleted": lambda f, b: f"network {text(_of(b, 'name') or '?')} deleted",
    "NetworkExternalSet": lambda f, b: (
        f"network {text(_of(b, 'name') or '?')} "
        + ("made external" if f.get("external") else "no longer external")),
    "SegmentPoolCreated": lambda f, b: "segment pool created",
    "SegmentAllocated": lambda f, b: (
        f"VNI {text(f.get('segmentation_id'))} allocated to network {short(f.get('network_id'))}"),
    "SegmentReleased": lambda f, b: (
        f"VNI {text(f.get('segmentation_id'))} released by network {short(f.get('network_id'))}"),
    "AddressAllocated": lambda f, b: (
        f"address {text(f.get('ip_address'))} allocated to port {short(f.get('port_id'))}"),
    "AddressReleased": lambda f, b: (
        f"address {text(f.get('ip_address'))} released by port {short(f.get('port_id'))}"),
    "PortCreated": lambda f, b: (
        f"port {text(f['name']) + ' ' if f.get('name') else ''}created: "
        f"{text(f.get('ip_address'))} ({text(f.get('mac_address'))}) "
        f"on network {short(f.get('network_id'))}"
        + (f", owner {text(f['device_owner'])}" if f.get("device_owner") else "")
        + (f", host {text(f['host'])}" if f.get("host") else "")),
    "PortUpdated": lambda f, b: f"port updated: {diff(b, f, ('name', 'host'))}",
    "PortDeleted": lambda f, b: f"port {text(_of(b, 'ip_address') or '?')} deleted",
    # routers
    "RouterCreated": lambda f, b: (
        f"router {text(f.get('name'))} created, service type {short(f.get('service_type_id'))}"),
    "RouterInterfaceAdded": lambda f, b: (
        f"interface {text(f.get('ip_address'))} on network {short(f.get('network_id'))} added"),
    "RouterInterfaceRemoved": lambda f, b: (
        f"interface on network {short(f.get('network_id'))} removed"),
    "RouterGatewaySet": lambda f, b: (
        f"gateway {text(f.get('ip_address'))} on network {short(f.get('network_id'))} set, SNAT "
        + ("on" if f.get("enable_snat") else "off")),
    "RouterGatewayCleared": lambda f, b: "gateway cleared",
    "RouterServiceAttached": lambda f, b: f"service {short(f.get('service_id'))} attached",
    "RouterServiceDetached": lambda f, b: f"service {short(f.get('service_id'))} detached",
    "RouterDeleted": lambda f, b: f"router {text(_of(b, 'name') or '?')} deleted",
    # load balancers
    "LoadBalancerCreated": _lb_created,
    "LoadBalancerUpdated": lambda f, b: (
        f"load balancer updated: {diff(b, f, ('name', 'description', 'admin_state_up'))}"),
    "LoadBalancerScheduled": lambda f, b: placed(f, "load balancer"),
    "ListenerCreated": lambda f, b: (
        f"listener {named(f.get('listener'))} added: "
        f"{text((f.get('listener') or {}).get('protocol'))} port "
        f"{text((f.get('listener') or {}).get('protocol_port'))}"),
    "ListenerUpdated": _listener_updated,
    "ListenerDeleted": lambda f, b: (
        f"listener {listener_name(b, f.get('listener_id'))} deleted"),
    "PoolCreated": lambda f, b: (
        f"pool {named(f.get('pool'))} added: {text((f.get('pool') or {}).get('protocol'))}, "
        f"{text((f.get('pool') or {}).get('lb_algorithm'))}, "
        f"{len((f.get('pool') or {}).get('members') or [])} member(s)"),
    "PoolUpdated": _pool_updated,
    "PoolDeleted": lambda f, b: f"pool {pool_name(b, f.get('pool_id'))} deleted",
    "MemberCreated": lambda f, b: (
        f"member {member_text(f.get('member') or {})} added to pool "
        f"{pool_name(b, f.get('pool_id'))}"
        + (f" (weight {text(f['member']['weight'])})"
           if (f.get("member") or {}).get("weight", 1) != 1 else "")),
    "MemberUpdated": _member_updated,
    "MemberDeleted": lambda f, b: (
        f"member {member_text(child_before(b, 'member', 'pools', f.get('member_id'), 'members') or {})}"
        f" removed from pool {pool_name(b, f.get('pool_id'))}"
        if child_before(b, "member", "pools", f.get("member_id"), "members")
        else f"member {short(f.get('member_id'))} removed from pool "
             f"{pool_name(b, f.get('pool_id'))}"),
    "MembersReplaced": lambda f, b: (
        f"members of pool {pool_name(b, f.get('pool_id'))} replaced: "
        + (", ".join(member_text(m) for m in f.get("members") or []) or "none")),
    "HealthMonitorSet": lambda f, b: (
        f"health monitor of pool {pool_name(b, f.get('pool_id'))} set: "
        f"{text((f.get('healthmonitor') or {}).get('type'))} every "
        f"{text((f.get('healthmonitor') or {}).get('delay'))} s"),
    "HealthMonitorDeleted": lambda f, b: (
        f"health monitor of pool {pool_name(b, f.get('pool_id'))} deleted"),
    "L7PolicySet": lambda f, b: (
        f"L7 policy {named(f.get('policy'))} set on listener "
        f"{listener_name(b, f.get('listener_id'))}: "
        f"{text((f.get('policy') or {}).get('action'))}, "
        f"{len((f.get('policy') or {}).get('rules') or [])} rule(s)"),
    "L7PolicyDeleted": lambda f, b: (
        f"L7 policy {short(f.get('policy_id'))} deleted from listener "
        f"{listener_name(b, f.get('listener_id'))}"),
    "LoadBalancerDeleteRequested": lambda f, b: "load balancer delete requested",
    "LoadBalancerProvisioned": lambda f, b: (
        f"generation {text(f.get('generation'))} ACTIVE on host {text(f.get('host'))}"),
    "LoadBalancerProvisioningFailed": lambda f, b: (
        f"generation {text(f.get('generation'))} ERROR on host {text(f.get('host'))}: "
        f"{text(f.get('reason'))}"),
    "LoadBalancerProvisioningTimedOut": lambda f, b: (
        f"generation {text(f.get('generation'))} timed out: {text(f.get('reason'))}"),
    "LoadBalancerDeleted": lambda f, b: f"load balancer {text(_of(b, 'name') or '?')} deleted",
    "LoadBalancerOperatingStatusChanged": lambda f, b: statuses(f),
    # firewalls, NAT, taps
    "FirewallCreated": lambda f, b: (
        f"firewall {text(f.get('name'))} created: {len(f.get('rules') or [])} rule(s), "
        f"default {text(f.get('default_action'))}{insertion(f.get('insertion'))}"),
    "FirewallUpdated": lambda f, b: (
        f"firewall updated: {diff(b, f, ('name', 'default_action'))}"),
    "FirewallRuleInserted": lambda f, b: (
        f"rule {rule_text(f.get('rule') or {})} inserted at {text(f.get('index'))}"),
    "FirewallRuleMoved": lambda f, b: (
        f"rule {short(f.get('rule_id'))} moved to {text(f.get('index'))}"),
    "FirewallRuleRemoved": lambda f, b: f"rule {short(f.get('rule_id'))} removed",
    "FirewallDeleted": lambda f, b: f"firewall {text(_of(b, 'name') or '?')} deleted",
    "NatCreated": lambda f, b: (
        f"NAT {text(f.get('name'))} created: "
        + (", ".join(forward_text(x) for x in f.get("port_forwards") or []) or "no forwards")
        + insertion(f.get("insertion"))),
    "PortForwardAdded": lambda f, b: (
        f"port forward {forward_text(f.get('forward') or {})} added"),
    "PortForwardRemoved": lambda f, b: f"port forward {short(f.get('forward_id'))} removed",
    "NatDeleted": lambda f, b: f"NAT {text(_of(b, 'name') or '?')} deleted",
    "TapCreated": lambda f, b: (
        f"tap {text(f.get('name'))} created: port {short(f.get('port_id'))} "
        f"({text(f.get('direction'))}) copied to port {short(f.get('monitor_port_id'))}"),
    "TapDeleted": lambda f, b: f"tap {text(_of(b, 'name') or '?')} deleted",
    "PortTapAttached": lambda f, b: f"tap {short(f.get('tap_id'))} attached to the port",
    "PortTapDetached": lambda f, b: f"tap {short(f.get('tap_id'))} detached from the port",
    "ServiceScheduled": lambda f, b: placed(f, "service"),
    # service chains
    "ServiceChainAttached": lambda f, b: f"joined chain {short(f.get('chain_id'))}",
    "ServiceChainDetached": lambda f, b: f"left chain {short(f.get('chain_id'))}",
    "ServiceChainCreated": lambda f, b: (
        f"chain {text(f.get('name'))} created on router {short(f.get('router_id'))}: "
        f"{classifier_text(f.get('classifier'))} through {hops_text(f.get('hops'))}, "
        f"priority {text(f.get('priority'))}"
        + (", symmetric" if f.get("symmetric") else "")),
    "ServiceChainUpdated": lambda f, b: (
        f"chain updated: {diff(b, f, ('name', 'priority', 'symmetric'))}"
        + ("; classifier " + classifier_text(f.get("classifier"))
           if _of(b, "classifier") != f.get("classifier") else "")
        + ("; hops " + hops_text(f.get("hops")) if _of(b, "hops") != f.get("hops") else "")),
    "ServiceChainDeleted": lambda f, b: f"chain {text(_of(b, 'name') or '?')} deleted",
}

# Events that change the resource's own attributes: their `changes` are a diff against the
# resource's folded fields. Other events (parts, counters, placements) say what they did in
# their summary; their `changes` are the fields they set.
UPDATES = frozenset({
    "ServiceTypeUpdated", "LoadBalancerUpdated", "PortUpdated", "FirewallUpdated",
    "ServiceChainUpdated", "NetworkExternalSet", "QuotaLimitsSet",
})
