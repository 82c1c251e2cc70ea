"""The server decides what the schema says: the command decoder and the published JSON Schema agree.

For every command type, hypothesis builds bodies from the command's msgspec type (not from the
schema, so the schema is checked, not copied): valid ones from the types' constraints, and
near-misses of each constraint (a trailing newline or a control character on a pattern string,
non-ASCII digits such as Arabic-Indic `\\u0668\\u0660` and fullwidth `\\uff11\\uff10`, numbers
just out of range, wrong JSON types, a missing required field, an unknown field such as
`wieght`, a string one too long or too short, an enum value in the wrong case, a wrong or
missing `type`). Each body gets two verdicts:

- the server's: `splice.services.requests.parse`, the function the command service runs on every
  request (subject and size checks, then msgspec's decode into the command's tagged type); a few
  bodies also go over NATS to a real command service;
- the schema's: python-jsonschema's `Draft202012Validator` on the published schema (what
  `splice schema` prints) at that command's definition. python-jsonschema evaluates `pattern`
  with Python's `re`, whose `$` also matches before a final newline and whose `\\d` matches any
  Unicode digit: the very differences a JavaScript client sees. So each body is validated twice,
  once as python-jsonschema does it and once with `pattern` read as ECMA-262 reads it (a
  translation to Python `re` that refuses what is not valid under ECMA-262's `u` flag, which is
  how ajv compiles patterns); the translation is itself checked against Node when Node exists.

The verdicts must be equal. Rules the schema cannot express are kept out by construction:

- **State**: ids that must exist, names taken, quotas, the default service type, insertion
  (router or service type, not both), the load balancer tree's cross-references and rules
  (`events/lbaas_rules.py`: a listener's default pool, protocols that suit each other, persistence
  per protocol, an L7 rule's key per type). The handlers decide them after decoding; the verdict
  compared here is the decode's, which reads no state. Over NATS, only commands whose answer for
  a well-formed body does not depend on its values are sent (ids that exist nowhere: `not_found`;
  a service type with a fresh name: ok).
- **Semantics beyond a pattern**: a CIDR's host bits, an address inside its network, a port
  range's `low <= high`: also the domain's, after decoding, so equally outside both verdicts.
- **Payload size** (64 KiB before decoding): lists have at most two items, so every body is far
  below it (asserted for each body, not filtered).
- **Nesting depth**: bodies nest only as deep as the types do.
- **How a JSON number is written**: JSON Schema's `integer` is a mathematical integer, so `80.0`
  and `8e1` are integers there; msgspec refuses a fraction or exponent for an `int`. The
  generators never write an integral float for an integer field (they do write `1.5`).
- **What JSON Schema never sees**: duplicate keys and lone surrogates live in the text, not in the
  parsed value; they are not generated.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from typing import Any

import msgspec.inspect as mi
import nats
import pytest
from helpers import request, stream_messages
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, validators
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from typer.testing import CliRunner

from splice.events.contracts import COMMANDS, scope_of
from splice.events.wire import MAX_PAYLOAD
from splice.natsserver import NatsServer
from splice.services.requests import parse
from splice.services.service import CommandService

TENANT = "acme"
SCHEMA_URI = "urn:splice:schema"

# -- the published schema --------------------------------------------------------------------


@cache
def published_schema() -> dict[str, Any]:
    """The JSON Schema document exactly as `splice schema` prints it."""
    from splice.cli import app

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def _pointer(*tokens: str) -> str:
    return "#/" + "/".join(t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _at(doc: Any, tokens: tuple[str, ...]) -> bool:
    for t in tokens:
        if not isinstance(doc, dict) or t not in doc:
            return False
        doc = doc[t]
    return True


def _locate(candidates: list[tuple[str, ...]], what: str) -> str:
    """The JSON pointer of the first candidate the published schema has."""
    doc = published_schema()
    for tokens in candidates:
        if _at(doc, tokens):
            return _pointer(*tokens)
    raise LookupError(f"the published schema has no definition for {what}")


def command_pointer(aggregate: str, verb: str) -> str:
    """Where the published schema defines the command sent on `…<aggregate>.<verb>`.

    `#/$defs/commands/$defs/<aggregate>.<verb>` as the document says; older layouts (a top-level
    map keyed by subject, or the class's own definition) are read too.
    """
    tag = f"{aggregate}.{verb}"
    by_subject = [("commands", k) for k in published_schema().get("commands", {})
                  if k.startswith("splice.cmd.") and k.endswith("." + tag)]
    return _locate([("$defs", "commands", "$defs", tag), *by_subject,
                    ("$defs", COMMANDS[(aggregate, verb)].__name__)], tag)


def event_pointer(type_name: str) -> str:
    """Where the published schema defines the event whose `Splice-Topic` is `type_name`."""
    return _locate([("$defs", "events", "$defs", type_name), ("events", type_name),
                    ("$defs", type_name)], type_name)


# -- `pattern` as ECMA-262 reads it (with the `u` flag, as ajv compiles it) --------------------


class NotEcmaPattern(ValueError):
    """A pattern that ECMA-262 refuses under the `u` flag, or one this translation cannot read."""


_ECMA_SPACE = "\\t\\n\\v\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
_CLASS_ESCAPES = {"d": "0-9", "w": "A-Za-z0-9_", "s": _ECMA_SPACE}
_SYNTAX = set("^$\\.*+?()[]{}|/")
_QUANTIFIER = re.compile(r"\{[0-9]+(,[0-9]*)?\}")


def ecma_to_python(pattern: str) -> str:
    """A Python `re` pattern that matches exactly what `new RegExp(pattern, "u")` matches.

    `$` is the end of input (Python's `\\Z`), `\\d` `\\w` `\\s` are ECMA's classes, `.` stops at
    ECMA's line terminators. Identity escapes outside the syntax characters, lone braces and
    brackets, Python-only syntax (`\\A`, `\\Z`, `(?P`, inline flags) are refused, as ECMA-262's
    `u` flag refuses them.
    """
    out: list[str] = []
    i, in_class, n = 0, False, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise NotEcmaPattern(f"{pattern!r}: a trailing backslash")
            e = pattern[i + 1]
            i += 2
            if e in _CLASS_ESCAPES:
                out.append(_CLASS_ESCAPES[e] if in_class else f"[{_CLASS_ESCAPES[e]}]")
            elif e in "DWS":
                if in_class:
                    raise NotEcmaPattern(f"{pattern!r}: \\{e} inside a class is not translated")
                out.append(f"[^{_CLASS_ESCAPES[e.lower()]}]")
            elif e in "bB":
                out.append("\\x08" if in_class and e == "b" else "\\" + e)
                if in_class and e == "B":
                    raise NotEcmaPattern(f"{pattern!r}: \\B inside a class")
            elif e in "fnrtv":
                out.append("\\" + e)
            elif e == "0":
                if i < n and pattern[i].isdigit():
                    raise NotEcmaPattern(f"{pattern!r}: \\0 followed by a digit")
                out.append("\\x00")
            elif e == "x":
                hexa = pattern[i : i + 2]
                if not re.fullmatch(r"[0-9A-Fa-f]{2}", hexa):
                    raise NotEcmaPattern(f"{pattern!r}: \\x needs two hex digits")
                out.append("\\x" + hexa)
                i += 2
            elif e == "u":
                braced = re.match(r"\{([0-9A-Fa-f]{1,6})\}", pattern[i:])
                if braced:
                    out.append(f"\\U{int(braced.group(1), 16):08x}")
                    i += braced.end()
                elif re.fullmatch(r"[0-9A-Fa-f]{4}", pattern[i : i + 4]):
                    out.append("\\u" + pattern[i : i + 4])
                    i += 4
                else:
                    raise NotEcmaPattern(f"{pattern!r}: a bad \\u escape")
            elif e == "c" and i < n and pattern[i].isascii() and pattern[i].isalpha():
                out.append(f"\\x{ord(pattern[i]) % 32:02x}")
                i += 1
            elif e in _SYNTAX or (e == "-" and in_class):
                out.append("\\" + e)
            else:
                # \A \Z \p \k \1 and every identity escape such as \" or \' : refused by the
                # `u` flag (or, for \p \k and backreferences, not used by Splice's patterns)
                raise NotEcmaPattern(f"{pattern!r}: \\{e} is not an ECMA-262 escape under /u")
            continue
        if in_class:
            if c == "]":
                in_class = False
            elif c == "[":
                out.append("\\[")
                i += 1
                continue
            out.append(c)
            i += 1
            continue
        if c == "[":
            if pattern[i + 1 : i + 2] == "]" or pattern[i + 1 : i + 3] == "^]":
                raise NotEcmaPattern(f"{pattern!r}: an empty class reads differently in Python")
            in_class = True
            out.append(c)
        elif c == "$":
            out.append("\\Z")
        elif c == ".":
            out.append("[^\\n\\r\\u2028\\u2029]")
        elif c == "(" and pattern.startswith("(?", i):
            group = re.match(r"\(\?(?:[:=!]|<[=!])", pattern[i:])
            if group is None:
                raise NotEcmaPattern(f"{pattern!r}: a group syntax ECMA-262 does not have")
            out.append(group.group(0))
            i += group.end()
            continue
        elif c == "{":
            q = _QUANTIFIER.match(pattern, i)
            if q is None:
                raise NotEcmaPattern(f"{pattern!r}: a lone '{{' is refused under /u")
            out.append(q.group(0))
            i = q.end()
            continue
        elif c in "}]":
            raise NotEcmaPattern(f"{pattern!r}: a lone {c!r} is refused under /u")
        else:
            out.append(c)
        i += 1
    if in_class:
        raise NotEcmaPattern(f"{pattern!r}: an unterminated class")
    return "".join(out)


@cache
def ecma_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(ecma_to_python(pattern), re.ASCII)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if isinstance(instance, str) and not ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r} (ECMA-262)")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def _schema_uri() -> str:
    return str(published_schema().get("$id", SCHEMA_URI))


@cache
def _registry() -> Registry:
    return Registry().with_resource(_schema_uri(), DRAFT202012.create_resource(published_schema()))


@cache
def validators_for(pointer: str) -> tuple[Any, Any]:
    """python-jsonschema's Draft 2020-12 validator, and the same with ECMA-262's `pattern`."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": _schema_uri() + pointer}
    return (
        Draft202012Validator(root, registry=_registry()),
        EcmaValidator(root, registry=_registry()),
    )


def schema_patterns() -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.add(node["pattern"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(published_schema())
    return found


# -- bodies from the command types -------------------------------------------------------------

Labelled = tuple[Any, str]  # a JSON value and the near-miss it carries
NON_ASCII_DIGITS = (0x0660, 0xFF10, 0x0966)  # Arabic-Indic, fullwidth, Devanagari


def _unwrap(t: Any) -> Any:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _int_bounds(t: mi.IntType) -> tuple[int | None, int | None]:
    lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
    hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
    return lo, hi


def _regex_body(pattern: str) -> str:
    """The pattern for hypothesis' generator (anchors off, `$(?!\\n)` kept as `$`)."""
    core = pattern
    core = core.removeprefix("^")
    for end in ("$(?!\\n)", "$"):
        if core.endswith(end):
            core = core[: -len(end)]
            break
    return core


_MEMO: dict[tuple[str, int], tuple[Any, Any]] = {}


def _memo(kind: str, build: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One strategy per type and kind, built once (the type is kept alive with it)."""

    def get(t: Any) -> Any:
        key = (kind, id(t))
        if key not in _MEMO:
            _MEMO[key] = (t, build(t))
        return _MEMO[key][1]

    return get


@cache
def command_type(aggregate: str, verb: str) -> mi.StructType:
    t = mi.type_info(COMMANDS[(aggregate, verb)])
    assert isinstance(t, mi.StructType)
    return t


def valid(t: Any) -> st.SearchStrategy[Any]:
    """JSON values the type accepts, by its own constraints."""
    return _valid(_unwrap(t))  # type: ignore[no-any-return]


def near(t: Any) -> st.SearchStrategy[Labelled]:
    """A value of the type's shape with exactly one constraint missed, and which one."""
    return _near(_unwrap(t))  # type: ignore[no-any-return]


def _build_valid(t: Any) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.StructType):
        return _struct(t)
    if isinstance(t, mi.UnionType):
        return st.one_of(*[valid(x) for x in t.types])
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        lo, hi = _int_bounds(t)
        return st.integers(
            min_value=lo if lo is not None else -(2**40), max_value=hi if hi is not None else 2**40
        )
    if isinstance(t, mi.StrType):
        lo, hi = t.min_length or 0, t.max_length
        if t.pattern is None:
            return st.text(min_size=lo, max_size=hi if hi is not None else 80)
        return st.from_regex(_regex_body(t.pattern), fullmatch=True).filter(
            lambda s: lo <= len(s) <= (hi if hi is not None else 10**6)
        )
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    if isinstance(t, mi.ListType):
        hi = 2 if t.max_length is None else min(t.max_length, 2)
        return st.lists(valid(t.item_type), min_size=t.min_length or 0, max_size=max(hi, t.min_length or 0))
    if isinstance(t, mi.DictType):
        return st.dictionaries(valid(t.key_type), valid(t.value_type),
                               min_size=t.min_length or 0, max_size=max(2, t.min_length or 0))
    raise NotImplementedError(f"no generator for {t!r}")


def _build_struct(t: mi.StructType) -> st.SearchStrategy[dict[str, Any]]:
    required = {f.encode_name: valid(f.type) for f in t.fields if f.required}
    optional = {f.encode_name: valid(f.type) for f in t.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


def _swap_digit(s: str, base: int) -> str:
    for i, ch in enumerate(s):
        if "0" <= ch <= "9":
            return s[:i] + chr(base + int(ch)) + s[i + 1 :]
    return chr(base + 8) + chr(base)  # eighty, in the digits of that script


def _typo(name: str) -> str:
    """`weight` → `wieght`: two letters swapped (or a letter doubled in a short name)."""
    for i in range(1, len(name) - 1):
        if name[i] != name[i + 1] and name[i].isalpha() and name[i + 1].isalpha():
            return name[:i] + name[i + 1] + name[i] + name[i + 2 :]
    return name + name[-1]


def _build_near(t: Any) -> st.SearchStrategy[Labelled]:
    wrong_type: st.SearchStrategy[Labelled] = st.sampled_from(
        [([], "wrong type: array"), ({}, "wrong type: object"), ("x", "wrong type: string"),
         (7, "wrong type: integer"), (1.5, "wrong type: number"), (True, "wrong type: boolean"),
         (None, "wrong type: null")]
    )
    if isinstance(t, mi.StructType):
        return _near_struct(t) | wrong_type  # type: ignore[no-any-return]
    if isinstance(t, mi.UnionType):
        return st.one_of(*[near(x) for x in t.types if not isinstance(x, mi.NoneType)]) | wrong_type
    if isinstance(t, mi.IntType):
        lo, hi = _int_bounds(t)
        misses: list[Labelled] = [(1.5, "integer: fraction"), ("80", "integer: as string"),
                                  ("\u0668\u0660", "integer: non-ASCII digits"), (True, "integer: boolean")]
        if lo is not None:
            misses += [(lo - 1, "integer: below minimum"), (lo - 2**64, "integer: far below")]
        if hi is not None:
            misses += [(hi + 1, "integer: above maximum"), (hi + 2**64, "integer: far above")]
        return st.sampled_from(misses) | wrong_type
    if isinstance(t, mi.StrType):
        return _near_str(t) | wrong_type
    if isinstance(t, mi.LiteralType):
        values = list(t.values)
        strs = [v for v in values if isinstance(v, str)]
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        misses = [("BOGUS", "enum: unknown value")]
        misses += [(v.lower() if v.lower() != v else v.upper(), "enum: other case") for v in strs]
        misses += [(v + "\n", "enum: trailing newline") for v in strs]
        misses += [(v + 1, "enum: neighbour") for v in ints if v + 1 not in values]
        misses += [(str(v), "enum: number as string") for v in ints]
        return st.sampled_from(misses) | wrong_type
    if isinstance(t, mi.ListType):
        hi = t.max_length
        too_many: st.SearchStrategy[Labelled] = (
            st.lists(valid(t.item_type), min_size=hi + 1, max_size=hi + 1).map(
                lambda v: (v, "array: too many items"))
            if hi is not None and hi < 4 else st.nothing()
        )
        one_bad = st.tuples(st.lists(valid(t.item_type), max_size=1), near(t.item_type)).map(
            lambda p: ([*p[0], p[1][0]], p[1][1]))
        return one_bad | too_many | wrong_type
    if isinstance(t, mi.DictType):
        bad_key = st.tuples(_near_key(t.key_type), valid(t.value_type)).map(
            lambda p: ({p[0][0]: p[1]}, p[0][1]))
        bad_value = st.tuples(valid(t.key_type), near(t.value_type)).map(
            lambda p: ({p[0]: p[1][0]}, p[1][1]))
        empty = st.just(({}, "object: too few properties")) if t.min_length else st.nothing()
        return bad_key | bad_value | empty | wrong_type
    if isinstance(t, mi.BoolType):
        return st.sampled_from([("true", "boolean: as string"), (1, "boolean: as integer")])
    if isinstance(t, mi.NoneType):
        return st.sampled_from([("null", "null: as string"), (0, "null: as integer")])
    raise NotImplementedError(f"no near-miss for {t!r}")


def _near_key(t: Any) -> st.SearchStrategy[Labelled]:
    """A bad object key: a near-miss that is still a string."""
    return near(t).filter(lambda p: isinstance(p[0], str)).map(lambda p: (p[0], "key: " + p[1]))


def _build_near_str(t: mi.StrType) -> st.SearchStrategy[Labelled]:
    lo, hi = t.min_length or 0, t.max_length

    def misses(s: str) -> st.SearchStrategy[Labelled]:
        options: list[Labelled] = [
            (s + "\n", "string: trailing newline"),
            (s + "\r\n", "string: trailing CRLF"),
            ("\n" + s, "string: leading newline"),
            (s[:1] + "\x00" + s[1:], "string: NUL inside"),
            (s + "\u2028", "string: line separator"),
            (s + "\x85", "string: C1 control"),
        ]
        options += [(_swap_digit(s, base), "string: non-ASCII digit") for base in NON_ASCII_DIGITS]
        if hi is not None:
            options.append(((s or "a") + (s[-1:] or "a") * (hi + 1 - len(s or "a")),
                            "string: too long"))
        if lo > 0:
            options.append((s[: lo - 1], "string: too short"))
        if t.pattern is not None:
            options += [(" " + s, "string: leading space"), (s + " ", "string: trailing space")]
        return st.sampled_from(options)

    return valid(t).flatmap(misses)


def _build_near_struct(t: mi.StructType) -> st.SearchStrategy[Labelled]:
    fields = list(t.fields)
    required = [f for f in fields if f.required]

    @st.composite
    def build(draw: st.DrawFn) -> Labelled:
        body: dict[str, Any] = draw(_struct(t))
        names = {f.encode_name for f in fields}
        kinds = ["field", "unknown field", "typo"] + (["missing required"] if required else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "missing required":
            f = draw(st.sampled_from(required))
            body.pop(f.encode_name, None)
            return body, "object: missing required field"
        if kind == "unknown field":
            extra = draw(st.sampled_from(["wieght", "extra", "Name", "zzz"]).filter(
                lambda k: k not in names))
            body[extra] = draw(st.sampled_from([200, "x", None, True]))
            return body, "object: unknown field"
        if kind == "typo":
            f = draw(st.sampled_from(fields))
            typo = _typo(f.encode_name)
            if typo in names:
                typo = f.encode_name + "_"
            value = body.pop(f.encode_name, None)
            body[typo] = value if value is not None else draw(valid(f.type))
            return body, "object: misspelt field"
        f = draw(st.sampled_from(fields))
        value, label = draw(near(f.type))
        body[f.encode_name] = value
        return body, label

    return build()


_valid = _memo("valid", _build_valid)
_near = _memo("near", _build_near)
_struct = _memo("struct", _build_struct)
_near_struct = _memo("near struct", _build_near_struct)
_near_str = _memo("near str", _build_near_str)


@st.composite
def command_bodies(draw: st.DrawFn, aggregate: str, verb: str) -> tuple[bytes, str]:
    """A command body (its JSON text) and what it is: valid, or which near-miss."""
    t = command_type(aggregate, verb)
    if draw(st.booleans()):
        body, label = draw(_struct(t)), "valid"
    else:
        body, label = draw(_near_struct(t) | near(t))
    if isinstance(body, dict):
        tag = draw(st.sampled_from(["present", "absent", "absent", "wrong"]))
        if tag == "present":
            body = {"type": t.tag, **body}
        elif tag == "wrong":
            other = draw(st.sampled_from([f"{a}.{v}" for a, v in COMMANDS if (a, v) != (aggregate, verb)]))
            body = {"type": other, **body}
            label = "type: another command's tag" if label == "valid" else label
        event(f"type field {tag}")
    data = json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
    assert len(data) < MAX_PAYLOAD  # by construction (lists have at most two items)
    return data, label


def subject_of(aggregate: str, verb: str) -> str:
    tenant = {"admin": "_admin", "host": "_host"}.get(scope_of(aggregate, verb), TENANT)
    return f"splice.cmd.{tenant}.{aggregate}.{verb}"


def verdicts(aggregate: str, verb: str, data: bytes) -> tuple[Any, bool, bool]:
    """The server's answer (a Parsed or a Failed), python-jsonschema's and ECMA-262's verdicts."""
    server = parse(subject_of(aggregate, verb), data)
    plain, ecma = validators_for(command_pointer(aggregate, verb))
    instance = json.loads(data)
    return server, plain.is_valid(instance), ecma.is_valid(instance)


def explain(aggregate: str, verb: str, data: bytes) -> str:
    _, ecma = validators_for(command_pointer(aggregate, verb))
    instance = json.loads(data)
    errors = [f"  {'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}"
              for e in ecma.iter_errors(instance)]
    return "\n".join([f"{aggregate}.{verb} {data.decode()!r}",
                      f"server: {parse(subject_of(aggregate, verb), data)!r}",
                      "schema (ECMA-262 patterns):", *(errors or ["  valid"])])


# -- the tests ---------------------------------------------------------------------------------


def test_every_command_has_its_definition_in_the_published_schema() -> None:
    missing = []
    for aggregate, verb in COMMANDS:
        try:
            command_pointer(aggregate, verb)
        except LookupError as e:
            missing.append(str(e))
    assert not missing


def test_every_pattern_in_the_published_schema_is_valid_ecma262() -> None:
    refused = []
    for p in sorted(schema_patterns()):
        try:
            ecma_regex(p)
        except (NotEcmaPattern, re.error) as e:
            refused.append(str(e))
    assert not refused, "\n".join(refused)


PROBES = ["", "a", "0", "80", "\u0668\u0660", "\uff11\uff10", "10", "10\n", "a\n", "\na", "a\r", "a\u2028", "x y",
          "10.20.0.11", "10.20.0.11\n", "1\u0660.40.0.11", "10.0.0.0/24", "1024-65535", "\uff11\uff10\uff12\uff14-\uff16\uff15\uff15\uff13\uff15",
          "200", "200-204", "200\n", "/", "/a?b=c", "/x\n", "http://a.b:80/c", "GET", "haproxy",
          "haproxy\n", "acme", "_admin", "0c0c0c0c-0000-4000-8000-000000000000",
          "0c0c0c0c-0000-4000-8000-000000000000\n", "aa:bb:cc:dd:ee:ff", 'a"b', "a'b", "a\\b",
          "a`b", "\x85", "\u00e9", "\U0001f600"]


def test_the_ecma262_reading_of_the_patterns_is_nodes() -> None:
    """The translation used above answers as `new RegExp(p, "u").test(s)` does, in Node."""
    patterns = sorted(p for p in schema_patterns() if _translatable(p))
    script = ("const [ps, ss] = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "console.log(JSON.stringify(ps.map(p => { const r = new RegExp(p, 'u');"
              " return ss.map(s => r.test(s)); })));")
    out = subprocess.run(["node", "-e", script], input=json.dumps([patterns, PROBES]),
                         capture_output=True, text=True, check=True, timeout=60)
    node = json.loads(out.stdout)
    differ = [(p, s, node[i][j]) for i, p in enumerate(patterns) for j, s in enumerate(PROBES)
              if bool(ecma_regex(p).search(s)) != node[i][j]]
    assert not differ


def _translatable(p: str) -> bool:
    try:
        ecma_regex(p)
    except (NotEcmaPattern, re.error):
        return False
    return True


@pytest.mark.parametrize(("aggregate", "verb"), sorted(COMMANDS), ids=[f"{a}.{v}" for a, v in sorted(COMMANDS)])
@settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_server_and_published_schema_agree_on_command_bodies(
    aggregate: str, verb: str, data: st.DataObject
) -> None:
    body, label = data.draw(command_bodies(aggregate, verb))
    server, plain, ecma = verdicts(aggregate, verb, body)
    accepted = not hasattr(server, "error")
    event(f"{label}: {'accepted' if accepted else 'refused'}")
    assert accepted == ecma, explain(aggregate, verb, body)
    assert accepted == plain, "python-jsonschema (Python re) disagrees\n" + explain(aggregate, verb, body)
    if not accepted:
        assert server.error.code == "invalid", server


# -- a few bodies over NATS, to a real command service -----------------------------------------

UID = "0c0c0c0c-0000-4000-8000-000000000000"
MEMBER = {"address": "10.20.0.11", "protocol_port": 8080}
OVER_NATS: list[tuple[str, dict[str, Any]]] = [
    ("servicetype.create", {"name": "fresh", "providers": {"loadbalancer": "haproxy"}}),
    ("servicetype.create", {"type": "servicetype.create", "name": "typed",
                            "providers": {"loadbalancer": "haproxy"}}),
    ("servicetype.create", {"name": "gold\n", "providers": {"loadbalancer": "haproxy"}}),
    ("servicetype.create", {"name": "gold", "providers": {"loadbalancer": "haproxy\n"}}),
    ("servicetype.create", {"name": "gold", "actor": "alice\n", "providers": {"loadbalancer": "haproxy"}}),
    ("servicetype.create", {"name": "gold", "providers": {"loadbalancer": "haproxy"}, "wieght": 1}),
    ("member.create", {"loadbalancer_id": UID, "pool_id": UID, "member": MEMBER}),
    ("member.create", {"loadbalancer_id": UID, "pool_id": UID,
                       "member": {**MEMBER, "address": "10.20.0.11\n"}}),
    ("member.create", {"loadbalancer_id": UID, "pool_id": UID,
                       "member": {**MEMBER, "address": "1\u0660.40.0.11"}}),
    ("member.create", {"loadbalancer_id": UID, "pool_id": UID,
                       "member": {**MEMBER, "protocol_port": "\u0668\u0660"}}),
    ("member.update", {"loadbalancer_id": UID, "pool_id": UID, "id": UID, "weight": 200}),
    ("member.update", {"loadbalancer_id": UID, "pool_id": UID, "id": UID, "wieght": 200}),
    ("member.update", {"loadbalancer_id": UID, "pool_id": UID, "id": UID, "weight": 257}),
    ("firewall.insert_rule", {"id": UID, "rule": {"action": "allow", "protocol": "tcp",
                                                 "destination_port": "\uff11\uff10\uff12\uff14-\uff16\uff15\uff15\uff13\uff15"}}),
    ("loadbalancer.delete", {"id": UID}),
    ("loadbalancer.delete", {"id": UID.upper()}),
]


@pytest.fixture
async def service(fresh_nats: NatsServer) -> AsyncIterator[CommandService]:
    svc = CommandService(fresh_nats.url)
    await svc.start()
    yield svc
    await svc.stop()


async def test_over_nats_a_command_is_refused_as_invalid_exactly_when_the_schema_refuses_it(
    service: CommandService, fresh_nats: NatsServer
) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        for name, body in OVER_NATS:
            aggregate, verb = name.split(".")
            _, ecma = validators_for(command_pointer(aggregate, verb))
            before = len(await stream_messages(fresh_nats.url))
            reply = await request(nc, subject_of(aggregate, verb),
                                  {"command_id": str(uuid.uuid4()), **body})
            after = len(await stream_messages(fresh_nats.url))
            refused_as_invalid = not reply["ok"] and reply["error"]["code"] == "invalid"
            assert refused_as_invalid != ecma.is_valid(body), (name, body, reply)
            if refused_as_invalid:
                assert after == before, (name, body, "a refused command appended")
    finally:
        await nc.close()

