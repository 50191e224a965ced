"""The nesting bound on request bodies: exact whether the body is scanned or not.

A body with few brackets skips the scan (nesting never exceeds the number of
openers); these check that the shortcut and the scan give the same answer as
the true depth, at the bound and past it, with brackets hidden in strings.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homing.server.errors import HTTPProblem
from homing.server.inputs import _nesting_within, json_object

LIMIT = 32

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(alphabet='[]{}"\\ab', max_size=12)
)
_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(_values, st.integers(min_value=0, max_value=8))
def test_the_answer_is_the_true_depth_against_the_bound(value: Any, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert _nesting_within(raw, limit) == (_depth(value) <= limit)


def test_at_the_bound_and_one_past_it() -> None:
    at = b"[" * LIMIT + b"]" * LIMIT
    past = b"[" * (LIMIT + 1) + b"]" * (LIMIT + 1)
    assert _nesting_within(at, LIMIT)
    assert not _nesting_within(past, LIMIT)


def test_brackets_in_strings_are_not_nesting() -> None:
    # More openers than the bound, all inside a string: the scan runs and says shallow.
    body = json.dumps({"note": "[{" * 100 + '\\"[['}).encode()
    assert body.count(b"[") + body.count(b"{") > LIMIT
    assert _nesting_within(body, LIMIT)
    assert json_object(body) == json.loads(body)


def test_a_check_in_sized_body_is_parsed_and_a_deep_one_refused() -> None:
    checkin = {"firmware_version": "1.0.0", "trust": {"root": 3, "pins_matched": ["x" * 44]}}
    assert json_object(json.dumps(checkin).encode()) == checkin
    deep = b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(HTTPProblem) as refused:
        json_object(deep)
    assert refused.value.status == 400
    assert "nests deeper than 32 levels" in refused.value.message
