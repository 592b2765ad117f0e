"""Hop-by-hop stripping, header mutations, request ids and x-forwarded-* handling."""

from __future__ import annotations

import random
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.core.config import AppendAction, HeaderMutation, HeaderToAdd
from trellis.core.headers import (
    HOP_BY_HOP,
    CompiledMutation,
    append_forwarded_for,
    generate_request_id,
    has_formatter,
    set_forwarded_proto,
    strip_hop_by_hop,
)

H = list[tuple[bytes, bytes]]
A = AppendAction


# --- hop-by-hop --------------------------------------------------------------------------------


def test_hop_by_hop_set() -> None:
    assert {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding"} <= HOP_BY_HOP
    assert {b"upgrade", b"te"} <= HOP_BY_HOP
    assert b"proxy-authorization" not in HOP_BY_HOP


def test_strip_returns_the_same_list_when_clean() -> None:
    headers: H = [(b"host", b"a"), (b"accept", b"*/*")]
    assert strip_hop_by_hop(headers, keep_upgrade=False) is headers


def test_strip_removes_hop_by_hop_and_connection_listed_headers() -> None:
    headers: H = [
        (b"host", b"a"),
        (b"connection", b"keep-alive, X-Secret ,close"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"proxy-connection", b"keep-alive"),
        (b"upgrade", b"h2c"),
        (b"close", b"?"),
        (b"x-app", b"2"),
    ]
    out = strip_hop_by_hop(headers, keep_upgrade=False)
    assert out == [(b"host", b"a"), (b"x-app", b"2")]
    assert len(headers) == 9  # the input is left alone


def test_connection_cannot_remove_framing_or_host() -> None:
    headers: H = [
        (b"host", b"a"),
        (b"content-length", b"5"),
        (b"connection", b"content-length, host"),
    ]
    assert strip_hop_by_hop(headers, keep_upgrade=False) == headers[:2]


def test_te_keeps_only_trailers() -> None:
    headers: H = [(b"te", b"gzip;q=0.5, Trailers"), (b"a", b"1")]
    assert strip_hop_by_hop(headers, keep_upgrade=False) == [(b"te", b"trailers"), (b"a", b"1")]
    assert strip_hop_by_hop([(b"te", b"gzip")], keep_upgrade=False) == []
    two: H = [(b"te", b"gzip"), (b"te", b"trailers")]
    assert strip_hop_by_hop(two, keep_upgrade=False) == [(b"te", b"trailers")]


def test_upgrade_keeps_connection_and_upgrade() -> None:
    headers: H = [
        (b"connection", b"Upgrade, keep-alive"),
        (b"upgrade", b"websocket"),
        (b"keep-alive", b"timeout=5"),
        (b"sec-websocket-key", b"k"),
    ]
    out = strip_hop_by_hop(headers, keep_upgrade=True)
    assert out == [
        (b"connection", b"Upgrade, keep-alive"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"k"),
    ]
    assert strip_hop_by_hop(headers, keep_upgrade=False) == [(b"sec-websocket-key", b"k")]


# --- mutations ------------------------------------------------------------------------------


def mutation(
    *adds: tuple[str, str, AppendAction], remove: tuple[str, ...] = ()
) -> CompiledMutation:
    return CompiledMutation(
        HeaderMutation(tuple(HeaderToAdd(n, v, a) for n, v, a in adds), frozenset(remove))
    )


def test_append_adds_another_line() -> None:
    headers: H = [(b"x", b"1")]
    mutation(("x", "2", A.APPEND_IF_EXISTS_OR_ADD), ("y", "3", A.APPEND_IF_EXISTS_OR_ADD)).apply(
        headers
    )
    assert headers == [(b"x", b"1"), (b"x", b"2"), (b"y", b"3")]


def test_add_if_absent() -> None:
    m = mutation(("x", "new", A.ADD_IF_ABSENT))
    present: H = [(b"x", b"old")]
    m.apply(present)
    assert present == [(b"x", b"old")]
    absent: H = []
    m.apply(absent)
    assert absent == [(b"x", b"new")]


def test_overwrite_replaces_in_place_and_collapses_duplicates() -> None:
    headers: H = [(b"a", b"1"), (b"x", b"old1"), (b"b", b"2"), (b"x", b"old2")]
    mutation(("x", "new", A.OVERWRITE_IF_EXISTS_OR_ADD)).apply(headers)
    assert headers == [(b"a", b"1"), (b"x", b"new"), (b"b", b"2")]
    empty: H = []
    mutation(("x", "new", A.OVERWRITE_IF_EXISTS_OR_ADD)).apply(empty)
    assert empty == [(b"x", b"new")]


def test_overwrite_if_exists_only_when_present() -> None:
    m = mutation(("x", "new", A.OVERWRITE_IF_EXISTS))
    absent: H = [(b"a", b"1")]
    m.apply(absent)
    assert absent == [(b"a", b"1")]
    present: H = [(b"x", b"old")]
    m.apply(present)
    assert present == [(b"x", b"new")]


def test_removal_happens_before_additions() -> None:
    headers: H = [(b"x", b"old"), (b"keep", b"1")]
    m = mutation(
        ("x", "if-absent", A.ADD_IF_ABSENT),
        ("x", "only-if-present", A.OVERWRITE_IF_EXISTS),
        remove=("X",),
    )
    m.apply(headers)
    assert headers == [(b"keep", b"1"), (b"x", b"if-absent")]


def test_overwrites_apply_before_appends() -> None:
    headers: H = [(b"x", b"orig")]
    m = mutation(
        ("x", "appended", A.APPEND_IF_EXISTS_OR_ADD), ("x", "set", A.OVERWRITE_IF_EXISTS_OR_ADD)
    )
    m.apply(headers)
    assert headers == [(b"x", b"set"), (b"x", b"appended")]


def test_conditions_see_headers_before_this_mutation_adds_any() -> None:
    headers: H = []
    m = mutation(
        ("x", "1", A.ADD_IF_ABSENT), ("x", "2", A.ADD_IF_ABSENT), ("y", "3", A.OVERWRITE_IF_EXISTS)
    )
    m.apply(headers)
    assert headers == [(b"x", b"1"), (b"x", b"2")]


def test_empty_values_are_skipped_unless_kept() -> None:
    m = CompiledMutation(
        HeaderMutation(
            (HeaderToAdd("gone", ""), HeaderToAdd("kept", "", keep_empty_value=True)), frozenset()
        )
    )
    headers: H = []
    m.apply(headers)
    assert headers == [(b"kept", b"")]


def test_literal_values_and_names() -> None:
    headers: H = []
    mutation(
        ("X-Rate", "100%%", A.APPEND_IF_EXISTS_OR_ADD), ("x-u", "é", A.APPEND_IF_EXISTS_OR_ADD)
    ).apply(headers)
    assert headers == [(b"x-rate", b"100%"), (b"x-u", "é".encode())]


def test_empty_mutation() -> None:
    assert CompiledMutation(HeaderMutation()).empty
    assert not mutation(remove=("x",)).empty


def _reference_apply(headers: H, adds: list[tuple[str, str, AppendAction]], remove: set[str]) -> H:
    result = [h for h in headers if h[0].decode() not in remove]
    names = {h[0] for h in result}
    overwrites, appends = [], []
    for name, value, action in adds:
        key, val = name.encode(), value.encode()
        if not value:
            continue
        if action is A.APPEND_IF_EXISTS_OR_ADD or (action is A.ADD_IF_ABSENT and key not in names):
            appends.append((key, val))
        elif action is A.OVERWRITE_IF_EXISTS_OR_ADD or (
            action is A.OVERWRITE_IF_EXISTS and key in names
        ):
            overwrites.append((key, val))
    for key, val in overwrites:
        positions = [i for i, h in enumerate(result) if h[0] == key]
        if positions:
            result[positions[0]] = (key, val)
            result = [h for i, h in enumerate(result) if h[0] != key or i == positions[0]]
        else:
            result.append((key, val))
    return result + appends


names = st.sampled_from(["a", "b", "x"])
values = st.sampled_from(["", "1", "2", "v"])


@given(
    st.lists(st.tuples(names.map(str.encode), values.map(str.encode)), max_size=6),
    st.lists(st.tuples(names, values, st.sampled_from(list(AppendAction))), max_size=5),
    st.sets(names, max_size=2),
)
def test_mutation_matches_reference(
    headers: H, adds: list[tuple[str, str, AppendAction]], remove: set[str]
) -> None:
    expected = _reference_apply(headers, adds, remove)
    actual = list(headers)
    mutation(*adds, remove=tuple(remove)).apply(actual)
    assert actual == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", False),
        ("100%%", False),
        ("%DOWNSTREAM_REMOTE_ADDRESS%", True),
        ("a%%b%c%", True),
        ("%%%", True),
    ],
)
def test_has_formatter(value: str, expected: bool) -> None:
    assert has_formatter(value) is expected


# --- request id and forwarding headers ------------------------------------------------------

UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@given(st.integers(0, 2**32))
def test_request_id_is_a_uuid4(seed: int) -> None:
    rid = generate_request_id(random.Random(seed))
    assert UUID_RE.fullmatch(rid)
    parsed = uuid.UUID(rid.decode())
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122


def test_request_ids_are_distinct_and_reproducible() -> None:
    rng = random.Random(1)
    ids = {generate_request_id(rng) for _ in range(1000)}
    assert len(ids) == 1000
    assert generate_request_id(random.Random(5)) == generate_request_id(random.Random(5))


def test_append_forwarded_for() -> None:
    headers: H = [(b"host", b"a")]
    append_forwarded_for(headers, "10.0.0.1")
    assert headers == [(b"host", b"a"), (b"x-forwarded-for", b"10.0.0.1")]
    append_forwarded_for(headers, "10.0.0.2")
    assert headers[1] == (b"x-forwarded-for", b"10.0.0.1,10.0.0.2")


def test_append_forwarded_for_merges_lines() -> None:
    headers: H = [(b"x-forwarded-for", b"1.1.1.1"), (b"a", b"1"), (b"x-forwarded-for", b"2.2.2.2")]
    append_forwarded_for(headers, "::1")
    assert headers == [(b"x-forwarded-for", b"1.1.1.1,2.2.2.2,::1"), (b"a", b"1")]
    empty: H = [(b"x-forwarded-for", b"")]
    append_forwarded_for(empty, "3.3.3.3")
    assert empty == [(b"x-forwarded-for", b"3.3.3.3")]


def test_set_forwarded_proto() -> None:
    headers: H = []
    set_forwarded_proto(headers, b"http")
    assert headers == [(b"x-forwarded-proto", b"http")]
    set_forwarded_proto(headers, b"https")
    assert headers == [(b"x-forwarded-proto", b"http")]  # trusted as set by the peer
    set_forwarded_proto(headers, b"https", overwrite=True)
    assert headers == [(b"x-forwarded-proto", b"https")]
