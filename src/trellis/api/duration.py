"""Durations as Istio accepts them, parsed to seconds.

Istio's CRDs validate durations with Go's `time.ParseDuration` (its CEL
`duration()`), so manifests use Go's syntax: one or more decimal numbers, each
with an optional fraction and a unit, e.g. "10s", "0.5s", "100ms", "1m",
"1h30m", "1.5h". Units: ns, us (or µs), ms, s, m, h. A bare "0" is zero. The
protobuf JSON form ("1.500s") is a subset of this. Trellis rejects a sign
(durations in config are never negative) and non-string values (`timeout: 10`
is an error in Istio too, where it is not a duration string).

Values are held as float seconds and written back in the shortest exact Go
form ("300s" -> "5m", "0.1s" -> "100ms").
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer
from pydantic_core import PydanticCustomError

_NANOS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_OUTPUT_UNITS = (("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000))
_MAX_NANOS = (1 << 63) - 1  # Go's time.Duration limit, about 292 years


class DurationSyntaxError(ValueError):
    """The text is not a duration Istio would accept."""


def parse_duration_nanos(text: str) -> int:
    """Parse Go duration syntax into whole nanoseconds (fractions of a ns truncate)."""
    if text == "0":
        return 0
    if not text:
        raise DurationSyntaxError("empty duration")
    if text[0] in "+-":
        raise DurationSyntaxError(f"invalid duration {text!r}: durations may not be signed")
    total = 0
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise DurationSyntaxError(
                f"invalid duration {text!r}: expected numbers with units "
                "ns, us, ms, s, m or h, like '10s', '0.5s', '100ms' or '1h30m'"
            )
        number, unit = match.group(1), match.group(2)
        whole, _, fraction = number.partition(".")
        scale = _NANOS_PER_UNIT[unit]
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
        position = match.end()
    if total > _MAX_NANOS:
        raise DurationSyntaxError(f"invalid duration {text!r}: out of range")
    return total


def parse_duration(text: str) -> float:
    """Parse Go duration syntax into seconds."""
    return parse_duration_nanos(text) / 1e9


def format_duration(seconds: float) -> str:
    """The shortest exact Go-style spelling: 300.0 -> "5m", 0.1 -> "100ms", 1.25 -> "1.25s"."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    for unit, scale in _OUTPUT_UNITS:
        if nanos % scale == 0:
            return f"{nanos // scale}{unit}"
    for unit, scale in (("ms", 1_000_000), ("us", 1_000), ("ns", 1)):
        if nanos % scale == 0 and nanos < 1_000_000_000:
            return f"{nanos // scale}{unit}"
    whole, fraction = divmod(nanos, 1_000_000_000)
    return f"{whole}.{fraction:09d}".rstrip("0") + "s"


def _validate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise PydanticCustomError(
            "duration_type",
            "expected a duration string like '10s', '0.5s', '100ms' or '1m', got {value}",
            {"value": repr(value)},
        )
    try:
        return parse_duration(value)
    except DurationSyntaxError as exc:
        raise PydanticCustomError("duration", "{reason}", {"reason": str(exc)}) from None


Duration = Annotated[
    float,
    BeforeValidator(_validate),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A duration field: YAML/JSON text in, float seconds in the model, text out in JSON mode."""


def _at_least_1ms(value: float) -> float:
    if value < 0.001:
        raise ValueError("must be at least 1ms")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_at_least_1ms)]
"""A duration Istio requires to be at least 1ms (timeouts of connections, tries, sweeps)."""
