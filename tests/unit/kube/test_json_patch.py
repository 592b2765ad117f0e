"""The JSONPatch diff: applying it (with the `jsonpatch` package) gives the new document."""

from __future__ import annotations

from typing import Any

import jsonpatch
from hypothesis import given
from hypothesis import strategies as st

from trellis.kube.json_patch import diff, pointer_token

KEYS = st.sampled_from(["a", "b", "x/y", "t~1", "metadata", ""])
SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


@given(JSON, JSON)
def test_applying_the_diff_gives_the_new_document(old: Any, new: Any) -> None:
    patched = jsonpatch.apply_patch({"doc": old}, diff({"doc": old}, {"doc": new}))
    assert patched == {"doc": new}
    assert [type(v) for v in _leaves(patched)] == [type(v) for v in _leaves({"doc": new})]


def test_equal_documents_need_no_patch() -> None:
    assert diff({"a": [1, {"b": True}]}, {"a": [1, {"b": True}]}) == []


def test_booleans_are_not_numbers() -> None:
    assert diff({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]


def test_appending_adds_items() -> None:
    assert diff({"l": [1]}, {"l": [1, 2, 3]}) == [
        {"op": "add", "path": "/l/1", "value": 2},
        {"op": "add", "path": "/l/2", "value": 3},
    ]


def test_pointer_tokens_escape() -> None:
    assert pointer_token("sidecar.trellis.io/status") == "sidecar.trellis.io~1status"
    assert pointer_token("a~b/c") == "a~0b~1c"


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _leaves(value[key])]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]
