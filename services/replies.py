"""The children a create made, in its reply: what an Octavia user expects back.

`loadbalancer.create` answers the ids of the listeners, pools, members, L7 policies and rules of
its body (`Ok.listeners`, `Ok.pools`), `pool.create` and `member.batch_update` the pool's
members, `listener.create` its L7 policies, `l7policy.create` its rules. They are read from the
load balancer's state as the command left it: from the decision itself when it was just
written, from the load balancer at the reply's version when the reply is an earlier one (a
command sent again with its command id).
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from splice.events import contracts as c
from splice.events.lbaas import L7Policy, Listener, Member, Pool
from splice.events.lbaas_fold import LoadBalancerState

from .common_handlers import SpliceApplication
from .domain import aggregate_id

log = structlog.get_logger("splice.cmd")

WITH_CHILDREN = (c.CreateLoadBalancer, c.CreatePool, c.ReplaceMembers, c.CreateListener,
                 c.CreateL7Policy)
CHILD_FIELDS = ("listeners", "pools", "members", "l7policies", "rules")


def _member(m: Member) -> c.CreatedMember:
    return c.CreatedMember(id=m.id, address=m.address, protocol_port=m.protocol_port, name=m.name)


def _pool(p: Pool) -> c.CreatedPool:
    return c.CreatedPool(id=p.id, name=p.name, members=[_member(m) for m in p.members],
                         healthmonitor=p.healthmonitor.type if p.healthmonitor else None)


def _policy(p: L7Policy) -> c.CreatedL7Policy:
    rules = [c.CreatedL7Rule(id=r.id, type=r.type, compare_type=r.compare_type, value=r.value)
             for r in p.rules]
    return c.CreatedL7Policy(id=p.id, name=p.name, action=p.action, position=p.position,
                             rules=rules)


def _listener(li: Listener) -> c.CreatedListener:
    return c.CreatedListener(id=li.id, name=li.name, protocol=li.protocol,
                             protocol_port=li.protocol_port, default_pool_id=li.default_pool_id,
                             l7policies=[_policy(p) for p in li.l7policies])


def created(cmd: Any, state: LoadBalancerState, result_id: str) -> dict[str, Any]:
    """The reply's child fields for `cmd`, from the load balancer's state after it (empty for a
    command that makes no children)."""
    if isinstance(cmd, c.CreateLoadBalancer):
        return {"listeners": [_listener(li) for li in state.listeners.values()],
                "pools": [_pool(p) for p in state.pools.values()]}
    if isinstance(cmd, c.CreatePool | c.ReplaceMembers):
        pool = state.pools.get(result_id if isinstance(cmd, c.CreatePool) else cmd.pool_id)
        return {"members": [_member(m) for m in pool.members] if pool else []}
    if isinstance(cmd, c.CreateListener):
        li = state.listeners.get(result_id)
        return {"l7policies": [_policy(p) for p in li.l7policies] if li else []}
    if isinstance(cmd, c.CreateL7Policy):
        li = state.listeners.get(cmd.listener_id)
        policy = next((p for p in (li.l7policies if li else []) if p.id == result_id), None)
        return {"rules": _policy(policy).rules if policy else []}
    return {}


def fresh(cmd: Any, subject: Any, result_id: str) -> dict[str, Any]:
    """The child fields of a reply just decided (`subject`: the decision's aggregate)."""
    if not isinstance(cmd, WITH_CHILDREN):
        return {}
    state = getattr(subject, "state", None)
    return created(cmd, state, result_id) if isinstance(state, LoadBalancerState) else {}


def completed(app: SpliceApplication, tenant: str, cmd: Any, reply: c.Ok) -> c.Ok:
    """An earlier reply of a create with children, given them from the load balancer as that
    reply's version left it. Unchanged for other commands, or when they are there already."""
    if not isinstance(cmd, WITH_CHILDREN) or any(
            getattr(reply, f) is not msgspec.UNSET for f in CHILD_FIELDS):
        return reply
    public = reply.id if isinstance(cmd, c.CreateLoadBalancer) else cmd.loadbalancer_id
    agg_id = aggregate_id(tenant, "loadbalancer", public)
    try:
        lb: Any = app.repository.get(agg_id, version=reply.version)
    except Exception as e:  # the reply stands without them (the log says why)
        log.warning("children of an earlier reply not found", aggregate=agg_id,
                    version=reply.version, error=repr(e))
        return reply
    state = getattr(lb, "state", None)
    if not isinstance(state, LoadBalancerState):
        return reply
    return msgspec.structs.replace(reply, **created(cmd, state, reply.id))
