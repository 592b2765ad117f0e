"""Durations: Go's syntax as Istio accepts it, parsed to seconds and written back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.api.duration import (
    DurationSyntaxError,
    format_duration,
    parse_duration,
    parse_duration_nanos,
)

UNITS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3s", 3.0),
        ("0.5s", 0.5),
        ("100ms", 0.1),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2m3.5s", 123.5),
        (".25s", 0.25),
        ("1.s", 1.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("250us", 0.00025),
        ("1.000000001s", 1.000000001),
    ],
)
def test_accepted(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    "text", ["", "3x", "3", "s", "-1s", "+1s", "1 s", "1S", "1d", "ms", ".s", "1h-5m", " 1s"]
)
def test_rejected(text: str) -> None:
    with pytest.raises(DurationSyntaxError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0s"), (300.0, "5m"), (5400.0, "90m"), (7200.0, "2h"), (0.1, "100ms"), (1.25, "1.25s")],
)
def test_formatting(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS))), min_size=1, max_size=4
    )
)
def test_parts_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{number}{unit}" for number, unit in parts)
    assert parse_duration_nanos(text) == sum(number * UNITS[unit] for number, unit in parts)


@given(st.integers(0, 10**15))
def test_format_then_parse_is_exact_to_the_microsecond(micros: int) -> None:
    seconds = micros / 1e6
    assert round(parse_duration(format_duration(seconds)) * 1e6) == micros


@given(st.integers(0, 10**6), st.integers(0, 999_999_999))
def test_fractions_are_exact_to_the_nanosecond(whole: int, nanos: int) -> None:
    text = f"{whole}.{nanos:09d}s"
    assert parse_duration_nanos(text) == whole * 10**9 + nanos


@given(st.text(alphabet="0123456789.smhunµx+- ", max_size=12))
def test_never_crashes_and_agrees_with_itself(text: str) -> None:
    try:
        nanos = parse_duration_nanos(text)
    except DurationSyntaxError:
        return
    assert nanos >= 0
    assert parse_duration_nanos(format_duration(nanos / 1e9)) == pytest.approx(nanos, rel=1e-9)
