"""One tenant default everywhere in the CLI: `--tenant/-t`, else $SPLICE_TENANT, else the
credentials' own tenant; with none of them (the operator's credentials belong to no tenant) a
usage error naming `--tenant` and SPLICE_TENANT, never a guessed tenant; every tenant's only
with `--all-tenants`. Against a real nats-server, `splice serve` and `splice projector`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from splice.cli import common
from splice.natsserver import NatsServer

SPLICE = str(Path(sys.executable).parent / "splice")
MARKUP = "see [bold red]boom[/bold red] [link=http://x]y[/link]"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPLICE, *args], env=env, capture_output=True, text=True, timeout=60)


def ok(env: dict[str, str], *args: str) -> str:
    res = run(env, *args)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def until_listed(env: dict[str, str], ident: str, *args: str) -> list[dict[str, Any]]:
    """`<args> -o json` once the projector has a row `ident` in it (polls, with a deadline)."""
    deadline = time.monotonic() + 20
    while True:
        items: list[dict[str, Any]] = json.loads(ok(env, *args, "-o", "json"))
        if any(ident in (i.get("id"), i.get("aggregate_id")) for i in items):
            return items
        assert time.monotonic() < deadline, (args, items)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("tenancy")
    server = NatsServer(store_dir=base / "nats")
    server.start()
    env = {k: v for k, v in os.environ.items() if k not in ("SPLICE_TENANT", "SPLICE_CREDS")}
    env.update(SPLICE_NATS_URL=server.url, SPLICE_STATE_DIR=str(base / "st"),
               SPLICE_ACTOR="tenancy-test", SPLICE_LOG_LEVEL="WARNING", COLUMNS="200")
    procs = [subprocess.Popen([SPLICE, part], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for part in ("serve", "projector")]
    try:
        deadline = time.monotonic() + 30
        while run(env, "servicetype", "create", "tenancy", "-p", "loadbalancer=haproxy",
                  "--default").returncode != 0:
            assert time.monotonic() < deadline, "the command service did not answer"
            time.sleep(0.2)
        yield env
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        server.stop()


def names_the_tenant_options(res: subprocess.CompletedProcess[str]) -> bool:
    text = " ".join(res.stderr.split())
    return res.returncode == 2 and "--tenant" in text and "SPLICE_TENANT" in text


def test_without_a_tenant_every_tenant_scoped_verb_fails_naming_tenant_and_acts_nowhere(
    env: dict[str, str],
) -> None:
    verbs = [
        ("network", "create", "--name", "n", "--cidr", "10.91.0.0/24"),
        ("network", "list"),
        ("network", "show", "n"),
        ("loadbalancer", "status", "lb"),
        ("query", "networks"),
        ("audit",),
        ("events",),
        ("state", "--at", "1"),
    ]
    for args in verbs:
        res = run(env, *args)
        assert names_the_tenant_options(res), (args, res.returncode, res.stdout, res.stderr)
    everyone = json.loads(ok(env, "query", "networks", "--all-tenants"))
    assert everyone == []  # the refused create went nowhere (no `demo`, no other)
    bad = run(env, "network", "list", "-t", "Not.A.Tenant")
    assert bad.returncode == 2 and "'--tenant'" in bad.stderr, bad.stderr


def test_splice_tenant_is_the_default_that_dash_t_overrides_and_all_tenants_reads_both(
    env: dict[str, str],
) -> None:
    acme = dict(env, SPLICE_TENANT="acme")
    mine = ok(acme, "network", "create", "--name", "a", "--cidr", "10.92.0.0/24", "-o", "value")
    theirs = ok(acme, "network", "create", "-t", "globex", "--name", "g", "--cidr",
                "10.93.0.0/24", "-o", "value")
    mine, theirs = mine.strip(), theirs.strip()
    listed = until_listed(acme, mine, "network", "list")
    assert [n["id"] for n in listed] == [mine]
    assert [n["id"] for n in until_listed(acme, theirs, "network", "list", "-t", "globex")] == [
        theirs]
    both = until_listed(acme, theirs, "network", "list", "--all-tenants")
    assert {(n["id"], n["tenant"]) for n in both} >= {(mine, "acme"), (theirs, "globex")}
    audited = {r["aggregate_id"]: r["tenant"] for r in until_listed(acme, mine, "audit")}
    assert mine in audited and theirs not in audited and set(audited.values()) == {"acme"}
    every = until_listed(acme, theirs, "audit", "--all-tenants")
    assert {mine, theirs} <= {r["aggregate_id"] for r in every}
    events = [json.loads(line) for line in ok(acme, "events", "-o", "json").splitlines()]
    assert mine in {e["aggregate_id"] for e in events}
    assert {e["subject"].split(".")[2] for e in events} == {"acme"}
    seq = max(e["seq"] for e in events)
    state = json.loads(ok(acme, "state", "--at", str(seq)))  # $SPLICE_TENANT, as the others
    assert [n["id"] for n in state["networks"]] == [mine]
    history = json.loads(ok(acme, "history", theirs, "-o", "json"))
    assert history == []  # globex's network is not in acme's history
    assert len(json.loads(ok(acme, "history", theirs, "-t", "globex", "-o", "json"))) == 1


def test_what_a_tenant_wrote_is_printed_as_text_not_markup(env: dict[str, str]) -> None:
    acme = dict(env, SPLICE_TENANT="acme")
    net = ok(acme, "network", "create", "--name", "m", "--cidr", "10.94.0.0/24",
             "-o", "value").strip()
    pools = [{"name": "web", "protocol": "HTTP", "members": []}]
    lb = ok(acme, "loadbalancer", "create", "--name", "marked", "--vip-network-id", net,
            "--description", MARKUP, "--pools", json.dumps(pools), "-o", "value").strip()
    until_listed(acme, lb, "audit")
    shown = ok(acme, "audit")
    assert MARKUP in shown, shown
    shown = ok(acme, "loadbalancer", "show", lb, "-c", "description")  # show's field table
    assert MARKUP in shown, shown
    with common.out.capture() as table:  # the read verbs' tables: cells are text too
        common.table([{"description": MARKUP}], ["description"], title="[blink]t[/blink]")
    assert MARKUP in table.get() and "[blink]t[/blink]" in table.get()


def complete(env: dict[str, str], line: str) -> list[str]:
    """What bash would offer for `line` (the words so far, the last one incomplete), through
    the script `splice --install-completion` installs, run by a real bash."""
    home = Path(env["SPLICE_STATE_DIR"]).parent / "home"
    home.mkdir(exist_ok=True)
    script = home / ".bash_completions" / "splice.sh"
    if not script.exists():
        installed = run(dict(env, HOME=str(home), SHELL="/bin/bash"), "--install-completion",
                        "bash")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert str(script) in (home / ".bashrc").read_text()
    words = line.split(" ")
    probe = (f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
             f"COMP_CWORD={len(words) - 1}; _splice_completion splice; "
             'printf "%s\\n" "${COMPREPLY[@]}"')
    path = f"{Path(SPLICE).parent}:{env['PATH']}"
    res = subprocess.run(["bash", "-c", probe], env=dict(env, PATH=path), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [w for w in res.stdout.splitlines() if w]


def test_shell_completion_offers_verbs_options_and_the_tenants_names(
    env: dict[str, str],
) -> None:
    acme = dict(env, SPLICE_TENANT="acme")
    assert "loadbalancer" in complete(acme, "splice loadb")
    assert {"--vip-network-id", "--vip-address"} <= set(
        complete(acme, "splice loadbalancer create --vip"))
    assert "--all-tenants" in complete(acme, "splice audit --all")
    net = ok(acme, "network", "create", "--name", "completed-net", "--cidr", "10.95.0.0/24",
             "-o", "value").strip()
    ok(acme, "network", "create", "-t", "globex", "--name", "completed-other", "--cidr",
       "10.96.0.0/24")
    until_listed(acme, net, "network", "list")
    assert complete(acme, "splice network show completed-") == ["completed-net"]
    assert complete(acme, f"splice network delete {net[:6]}") == [net]
    assert "completed-net" in complete(acme, "splice port create --network-id compl")
    assert complete(env, "splice network show completed-") == []  # no tenant: nothing offered
    shown = run(env, "--show-completion")
    assert shown.returncode == 0 and "_SPLICE_COMPLETE" in shown.stdout, shown.stderr
