"""The published documents: the JSON Schema compiles under ajv's strict defaults (draft 2020-12),
the AsyncAPI 3 document has no error or warning by @asyncapi/parser, and both say what the
server does (every command, reply, event, view; replies on the requester's inbox; parameters
with their grammar). The Node checks need the packages `./dev setup` installs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from splice.documents import asyncapi
from splice.events import contracts
from splice.events.contracts import COMMANDS, EVENT_TYPES, scope_of
from splice.events.documents import json_schema
from splice.events.wire import Failed
from splice.projections.views import QUERY_VIEWS

NODE_DIR = Path(__file__).parent.parent / "examples" / "node"


def node_script(script: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run one of examples/node's scripts: (exit code, its last stdout line as JSON, stderr)."""
    node = shutil.which("node")
    assert node, "node is missing: ./dev setup installs Debian's nodejs"
    assert (NODE_DIR / "node_modules").is_dir(), "Node packages missing: run ./dev setup"
    res = subprocess.run(
        [node, str(NODE_DIR / script), *args],
        capture_output=True, text=True, timeout=60, cwd=NODE_DIR,
    )
    lines = res.stdout.strip().splitlines()
    return res.returncode, json.loads(lines[-1]) if lines else {}, res.stderr


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("documents")
    paths = {"schema": d / "schema.json", "asyncapi": d / "asyncapi.json"}
    paths["schema"].write_text(json.dumps(json_schema()))
    paths["asyncapi"].write_text(json.dumps(asyncapi()))
    return paths


def test_the_json_schema_compiles_under_ajv_strict_with_every_message_by_name(
    documents: dict[str, Path],
) -> None:
    rc, summary, err = node_script("check_schema.mjs", str(documents["schema"]))
    assert rc == 0, err
    assert summary == {
        "compiled": True,
        "commands": len(COMMANDS),
        "replies": 2,
        "events": len(EVENT_TYPES),
        "failed": 0,
    }


def test_ajv_refuses_a_schema_with_an_unknown_keyword_or_a_pattern_invalid_under_u(
    documents: dict[str, Path], tmp_path: Path
) -> None:
    unknown = {**json_schema(), "commands": {}}
    bad_pattern = json_schema()
    bad_pattern["$defs"]["CreateServiceType"]["properties"]["name"]["pattern"] = r"^[a\_]$"
    for i, doc in enumerate((unknown, bad_pattern)):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(doc))
        rc, _, err = node_script("check_schema.mjs", str(path))
        assert rc == 1, err


def test_the_asyncapi_document_has_no_error_and_no_warning(documents: dict[str, Path]) -> None:
    rc, summary, err = node_script("check_asyncapi.mjs", str(documents["asyncapi"]))
    assert rc == 0, err
    assert summary["parsed"] is True
    assert (summary["errors"], summary["warnings"]) == (0, 0), err
    doc = json.loads(documents["asyncapi"].read_text())
    assert summary["channels"] == len(doc["channels"])
    assert summary["operations"] == len(doc["operations"])


def test_the_schema_names_every_command_reply_and_event_and_commands_are_strict() -> None:
    doc = json_schema()
    defs = doc["$defs"]
    assert set(defs["commands"]["$defs"]) == {f"{a}.{v}" for a, v in COMMANDS}
    assert set(defs["replies"]["$defs"]) == {"Ok", "Failed"}
    assert set(defs["events"]["$defs"]) == set(EVENT_TYPES)
    tenant = {"admin": "_admin", "host": "_host", "tenant": "<tenant>"}
    for (agg, verb), ref in zip(COMMANDS, defs["commands"]["$defs"].values(), strict=True):
        assert f"splice.cmd.{tenant[scope_of(agg, verb)]}.{agg}.{verb}" in ref["description"]
        body = defs[ref["$ref"].rsplit("/", 1)[1]]
        assert "type" not in body.get("required", []), (agg, verb)  # the subject names it
        assert body["additionalProperties"] is False, (agg, verb)  # unknown fields: invalid
    create = defs["CreateServiceType"]
    assert {"name", "providers"} <= set(create["required"])
    # events stay open (forward compatible), also where they share a type with commands
    for ref in defs["events"]["$defs"].values():
        assert "additionalProperties" not in defs[ref["$ref"].rsplit("/", 1)[1]]
    assert "additionalProperties" not in defs["HealthMonitor"]
    assert defs["HealthMonitor.command"]["additionalProperties"] is False


def test_the_generators_left_the_contracts_index() -> None:
    assert not hasattr(contracts, "json_schema")
    assert not hasattr(contracts, "asyncapi")


def _target(doc: dict[str, Any], ref: dict[str, str]) -> Any:
    node: Any = doc
    for part in ref["$ref"].removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_command_and_query_replies_on_the_requesters_inbox_with_its_schemas() -> None:
    doc = asyncapi()
    ops, channels = doc["operations"], doc["channels"]
    for agg, verb in COMMANDS:
        op = ops[f"send_{agg}_{verb}"]
        channel = _target(doc, op["channel"])
        assert channel["address"].endswith(f".{agg}.{verb}")
        assert op["summary"].strip()
        reply = _target(doc, op["reply"]["channel"])
        assert reply["address"] == "{inbox}"
        assert [m["$ref"].rsplit("/", 1)[1] for m in op["reply"]["messages"]] == ["Ok", "Failed"]
    for name, view in QUERY_VIEWS.items():
        op = ops[f"query_{name}"]
        assert _target(doc, op["channel"])["address"] == f"splice.qry.{{tenant}}.{name}"
        request = doc["components"]["schemas"][f"Query.{name}"]
        assert {"limit", "cursor", "min_seq", "wait", *view.filters} <= set(request["properties"])
        assert request["additionalProperties"] is False
        replies = [m["$ref"].rsplit("/", 1)[1] for m in op["reply"]["messages"]]
        assert replies == [f"page.{name}", "QueryFailed"]
        row = doc["components"]["schemas"][f"Row.{name}"]["properties"]
        assert not set(view.hidden) & set(row)
    assert all(c["address"] for c in channels.values())  # no null address anywhere
    assert all(op["summary"].strip() for op in ops.values())
    assert channels["heartbeats"]["address"] == "splice.hb.{host}"
    assert channels["events"]["address"] == "splice.evt.{tenant}.{aggregate}.{id}.{type}"
    server = doc["servers"]["nats"]
    assert server["protocol"] == "nats" and "nats" in server["bindings"]


def test_parameter_patterns_agree_with_the_servers_checks() -> None:
    from splice.services.requests import parse

    params = asyncapi()["components"]["parameters"]
    tenant = re.compile(params["tenant"]["x-pattern"])
    assert params["query_tenant"]["x-pattern"] == params["tenant"]["x-pattern"]
    for token in ("acme", "a-1", "_admin", "_host", "Acme", "-a", "a_b", "a" * 64, "_x", "é"):
        refused = parse(f"splice.cmd.{token}.network.create", b"{}")
        error = refused.error if isinstance(refused, Failed) else None
        invalid = error is not None and (error.code, error.field) == ("invalid", "subject")
        assert bool(tenant.fullmatch(token)) == (not invalid), token
    assert set(params["type"]["enum"]) == set(EVENT_TYPES)
    host = re.compile(params["host"]["x-pattern"])
    assert host.fullmatch("vm-1") and not host.fullmatch("vm.1")
    for p in params.values():
        assert p["description"].strip()
        assert "x-pattern" in p or "enum" in p
