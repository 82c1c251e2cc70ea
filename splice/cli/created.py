"""The children a create made, as the CLI prints them under its `ok` line: a tree of each
listener (its L7 policies and rules) and each pool (its health monitor and members), with ids.

`-o json` prints the reply itself (`listeners`, `pools`, `members`, `l7policies`, `rules`).
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.tree import Tree

CHILD_FIELDS = ("listeners", "pools", "members", "l7policies", "rules")


def _node(kind: str, label: str, ident: Any) -> str:
    return f"[bold]{kind}[/] {escape(label)} [dim]{escape(str(ident))}[/]"


def _rule(parent: Tree, r: dict[str, Any]) -> None:
    label = f"{r.get('type')} {r.get('compare_type')} {r.get('value')}"
    parent.add(_node("l7rule", label, r.get("id")))


def _policy(parent: Tree, p: dict[str, Any]) -> None:
    label = " ".join(str(x) for x in (p.get("name"), p.get("action")) if x)
    branch = parent.add(_node("l7policy", label, p.get("id")))
    for r in p.get("rules") or []:
        _rule(branch, r)


def _member(parent: Tree, m: dict[str, Any]) -> None:
    label = f"{m.get('address')}:{m.get('protocol_port')}"
    if m.get("name"):
        label = f"{m['name']} {label}"
    parent.add(_node("member", label, m.get("id")))


def tree(reply: dict[str, Any]) -> Tree | None:
    """The reply's children as a tree (None when it has none)."""
    if not any(reply.get(f) for f in CHILD_FIELDS):
        return None
    root = Tree("[dim]created[/]")
    for li in reply.get("listeners") or []:
        label = f"{li.get('name')} {li.get('protocol')}:{li.get('protocol_port')}"
        branch = root.add(_node("listener", label, li.get("id")))
        for p in li.get("l7policies") or []:
            _policy(branch, p)
    for pool in reply.get("pools") or []:
        branch = root.add(_node("pool", str(pool.get("name")), pool.get("id")))
        if pool.get("healthmonitor"):
            branch.add(f"[bold]healthmonitor[/] {escape(str(pool['healthmonitor']))}")
        for m in pool.get("members") or []:
            _member(branch, m)
    for m in reply.get("members") or []:
        _member(root, m)
    for p in reply.get("l7policies") or []:
        _policy(root, p)
    for r in reply.get("rules") or []:
        _rule(root, r)
    return root
