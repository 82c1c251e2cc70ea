"""Building a load balancer's tree from its inputs: the decisions (ids) and the rules.

The rules beyond types are `splice.events.lbaas_rules`; each builder applies the ones of its part
(with ``provider``, the load balancer's: what it can serve) and raises their `RuleViolation`
(the aggregate turns it into the domain's `invalid`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from splice.events import lbaas_rules as rules
from splice.events.lbaas import (
    L7Policy,
    L7PolicyIn,
    L7Rule,
    L7RuleIn,
    Listener,
    ListenerIn,
    Member,
    MemberIn,
    Pool,
    PoolIn,
)

from .domain import InvalidError


def new_id() -> str:
    return str(uuid.uuid4())


@contextmanager
def refusals() -> Iterator[None]:
    """The rules' violations are the domain's `invalid` refusals, with the field named."""
    try:
        yield
    except rules.RuleViolation as e:
        raise InvalidError(e.message, e.field) from None


# -- building parts from inputs (decisions: ids are chosen here) ------------------------------


def build_members(members: list[MemberIn], where: str,
                  keep: dict[tuple[str, int], str] | None = None) -> list[Member]:
    rules.check_members(members, where)
    fields = MemberIn.__struct_fields__
    return [
        Member(id=(keep or {}).get((m.address, m.protocol_port)) or new_id(),
               **{f: getattr(m, f) for f in fields})
        for m in members
    ]


def build_pool(p: PoolIn, where: str, provider: str = "") -> Pool:
    rules.check_served_pool(provider, p, where)
    rules.check_persistence(p.session_persistence, p.protocol, f"{where}.session_persistence")
    rules.check_monitor(p.healthmonitor, f"{where}.healthmonitor")
    return Pool(
        id=new_id(), name=p.name, protocol=p.protocol, lb_algorithm=p.lb_algorithm,
        session_persistence=p.session_persistence,
        members=build_members(p.members, f"{where}.members"),
        healthmonitor=p.healthmonitor, admin_state_up=p.admin_state_up,
    )


def build_rule(r: L7RuleIn, where: str) -> L7Rule:
    rules.check_rule(r, where)
    return L7Rule(id=new_id(), **{f: getattr(r, f) for f in L7RuleIn.__struct_fields__})


def _pool_named(pools: dict[str, Pool], name: str, field: str) -> str:
    by_name = {p.name: p.id for p in pools.values()}
    if name not in by_name:
        raise rules.RuleViolation(f"no pool named {name!r}", field)
    return by_name[name]


def build_policy(p: L7PolicyIn, listener_protocol: str, pools: dict[str, Pool],
                 where: str) -> L7Policy:
    pool_id = p.redirect_pool_id
    if p.redirect_pool is not None:
        pool_id = _pool_named(pools, p.redirect_pool, f"{where}.redirect_pool")
    rules.check_policy(p, listener_protocol, pool_id, {i: x.protocol for i, x in pools.items()},
                       where)
    return L7Policy(
        id=new_id(), action=p.action, position=p.position, name=p.name,
        redirect_pool_id=pool_id if p.action == "REDIRECT_TO_POOL" else None,
        redirect_url=p.redirect_url if p.action == "REDIRECT_TO_URL" else None,
        redirect_http_code=p.redirect_http_code,
        rules=[build_rule(r, f"{where}.rules[{i}]") for i, r in enumerate(p.rules)],
        admin_state_up=p.admin_state_up,
    )


def build_listener(li: ListenerIn, pools: dict[str, Pool], listeners: dict[str, Listener],
                   where: str, provider: str = "") -> Listener:
    rules.check_served_listener(provider, li, where)
    rules.check_listener(li, {x.protocol_port for x in listeners.values()},
                         {x.name for x in listeners.values()}, where)
    pool_id = li.default_pool_id
    if li.default_pool is not None:
        pool_id = _pool_named(pools, li.default_pool, f"{where}.default_pool")
    if pool_id is not None:
        check_pool_fits(pools, pool_id, li.protocol, f"{where}.default_pool_id")
    policies = [build_policy(p, li.protocol, pools, f"{where}.l7policies[{i}]")
                for i, p in enumerate(li.l7policies)]
    return Listener(
        id=new_id(), name=li.name, protocol=li.protocol, protocol_port=li.protocol_port,
        connection_limit=li.connection_limit, timeout_client_data=li.timeout_client_data,
        timeout_member_connect=li.timeout_member_connect,
        timeout_member_data=li.timeout_member_data, default_pool_id=pool_id,
        l7policies=sorted(policies, key=lambda p: p.position), admin_state_up=li.admin_state_up,
    )


def check_pool_fits(pools: dict[str, Pool], pool_id: str, protocol: str, field: str) -> None:
    pool = pools.get(pool_id)
    if pool is None:
        raise rules.RuleViolation(f"pool {pool_id} is not in this load balancer", field)
    rules.check_pool_protocol(protocol, pool.protocol, field)
