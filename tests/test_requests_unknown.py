"""A command body's unknown fields: the check for flat bodies (`flat_unknown`, from the field
names) names the same field as the full walk (`unknown_field`, against the command encoded
again), and leaves any body holding an object or array to that walk."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from splice.events.contracts import COMMANDS
from splice.services.requests import _NESTED, flat_unknown, unknown_field

TYPES = sorted(set(COMMANDS.values()), key=lambda t: t.__name__)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=5))


@st.composite
def bodies(draw: Any) -> tuple[type, dict[str, Any]]:
    t = draw(st.sampled_from(TYPES))
    keys = st.sampled_from([*t.__struct_encode_fields__, "type", "wieght", "x", "", "Type"])
    values = st.one_of(SCALARS, st.just({"a": 1}), st.just([1]), st.just([]))
    return t, draw(st.dictionaries(keys, values, max_size=6))


@given(bodies())
def test_a_flat_body_gets_the_walks_answer_and_a_nested_one_goes_to_the_walk(
    case: tuple[type, dict[str, Any]],
) -> None:
    t, body = case
    # the encoded command has every field (no defaults are omitted) and its tag
    known = {name: None for name in (*t.__struct_encode_fields__, "type")}
    got = flat_unknown(body, t)
    walk = unknown_field(body, known, "$")
    flat_prefix = []
    for key, value in body.items():
        if isinstance(value, dict | list):
            break
        flat_prefix.append(key)
    unknown_in_prefix = [k for k in flat_prefix if k not in known]
    if unknown_in_prefix:
        assert got == walk == f"$.{unknown_in_prefix[0]}"
    elif len(flat_prefix) < len(body):
        assert got is _NESTED
    else:
        assert got is None and walk is None


def test_a_body_that_is_not_an_object_goes_to_the_walk() -> None:
    t = TYPES[0]
    assert flat_unknown([1], t) is _NESTED
    assert flat_unknown("x", t) is _NESTED
