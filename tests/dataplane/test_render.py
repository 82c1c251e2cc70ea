"""Rendered haproxy configs: golden files (each passing ``haproxy -c``) and injection attempts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import msgspec
import pytest

from splice.agents.drivers.haproxy import process as haproxy
from splice.agents.drivers.haproxy.render import LbPaths, UnsafeValueError, quote, render
from tests.dataplane.specs import build, http_full, tcp_mix

GOLDEN = Path(__file__).with_name("golden")
PATHS = LbPaths("/var/lib/splice/lb/11111111")
CASES = {"http_full": http_full(), "tcp_mix": tcp_mix()}


def haproxy_check(path: Path) -> None:
    proc = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_config_matches_golden_file_and_passes_haproxy_check(case: str) -> None:
    text = render(build(CASES[case]), PATHS)
    golden = GOLDEN / f"{case}.cfg"
    if os.environ.get("SPLICE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    haproxy_check(golden)


def test_a_disabled_health_monitor_renders_no_checks() -> None:
    data = tcp_mix()
    for pool in data["pools"]:
        pool["healthmonitor"]["admin_state_up"] = False
    text = render(build(data), PATHS)
    assert " check " not in text and "timeout check" not in text
    assert " check inter " in render(build(tcp_mix()), PATHS)


def test_a_refused_config_is_kept_aside_and_the_current_one_untouched(tmp_path: Path) -> None:
    paths = LbPaths(str(tmp_path))
    good = render(build(tcp_mix()), paths)
    assert haproxy.write_checked(paths, good) is True
    assert haproxy.write_checked(paths, good) is False  # same text: nothing written
    with pytest.raises(haproxy.ConfigRejectedError):
        haproxy.write_checked(paths, good + "\nfrontend broken\n    bind nowhere:xx\n")
    assert Path(paths.config).read_text() == good
    assert Path(f"{paths.config}.rejected").exists()
    assert not Path(f"{paths.config}.new").exists()


# Values that try to escape their word or line: each must either be refused by validation or
# come out as one inert, quoted word.
HOSTILE = [
    "x\nbind 0.0.0.0:22",
    "x\r\n    server evil 6.6.6.6:22",
    "x\u2028bind :23",
    "a' 'b",
    "# comment the rest",
    "'; use_backend evil #",
    "{ always_true } || 1",
    "${HOME} \"quoted\" \\ back",
    "-f /etc/passwd",
    "x } if TRUE",
]
FIELDS = ["lb", "listener", "policy", "pool", "member", "value", "path", "regex", "url_path",
          "url", "header", "cookie", "app_cookie"]


def structure(text: str) -> list[str]:
    """The first word of every non-comment line: what directives the file holds."""
    return [line.split()[0] for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", FIELDS)
def test_hostile_values_cannot_add_a_directive(field: str, value: str, tmp_path: Path) -> None:
    if field == "url":
        value = "https://example.com/" + value
    elif field in ("path", "url_path"):
        value = "/" + value
    try:
        spec = build(http_full(**{field: value}))
    except msgspec.ValidationError:
        return  # refused by the wire's types: such a command is never accepted
    text = render(spec, PATHS)
    assert structure(text) == structure(render(build(http_full()), PATHS))
    assert len(text.splitlines()) == len(render(build(http_full()), PATHS).splitlines())
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    haproxy_check(config)


def test_line_breaks_are_refused_by_the_wire_naming_the_field() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\.rules\[0\]\.value"):
        build(http_full(value="ok\nbind :22"))


def test_header_and_cookie_names_outside_the_token_alphabet_are_refused() -> None:
    for field in ("header", "cookie", "app_cookie"):
        with pytest.raises(msgspec.ValidationError):
            build(http_full(**{field: "x)"}))


def test_the_renderer_refuses_a_line_break_even_when_handed_one() -> None:
    spec = build(http_full())
    pool = next(iter(spec.state.pools.values()))
    bad = msgspec.structs.replace(pool, name="web\nbind :22")  # bypasses the wire's checks
    spec.state.pools[pool.id] = bad
    with pytest.raises(UnsafeValueError):
        render(spec, PATHS)


def test_quoted_values_keep_every_character() -> None:
    value = "a #c ${HOME} {x} -f /etc/passwd"
    text = render(build(http_full(value=value)), PATHS)
    assert "-m str -- 'a #c ${HOME} {x} -f /etc/passwd'" in text


def test_a_single_quote_is_closed_escaped_and_reopened() -> None:
    assert quote("a'b") == "'a'\\''b'"
