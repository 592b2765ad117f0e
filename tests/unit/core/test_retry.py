"""Retry conditions (Envoy's retry_on table), retry budget and back-off bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.core.circuit import ResourceLimits
from trellis.core.config import RETRY_ON_NAMES, CircuitBreakerThresholds, RetryOn, RetryPolicy
from trellis.core.retry import (
    RetryDecision,
    RetryState,
    UpstreamFailure,
    is_retriable,
)

F = UpstreamFailure

# retry_on name -> failures it covers (Envoy: resets count as 5xx / gateway errors).
FAILURE_TABLE: dict[str, set[UpstreamFailure]] = {
    "5xx": {F.CONNECT_FAILURE, F.RESET, F.REFUSED_STREAM, F.PER_TRY_TIMEOUT},
    "gateway-error": {F.CONNECT_FAILURE, F.RESET, F.REFUSED_STREAM, F.PER_TRY_TIMEOUT},
    "reset": {F.CONNECT_FAILURE, F.RESET, F.REFUSED_STREAM, F.PER_TRY_TIMEOUT},
    "connect-failure": {F.CONNECT_FAILURE},
    "refused-stream": {F.REFUSED_STREAM},
    "retriable-status-codes": set(),
}


def policy(names: str, **kwargs: object) -> RetryPolicy:
    flags = RetryOn.NONE
    for name in filter(None, names.split(",")):
        flags |= RETRY_ON_NAMES[name]
    return RetryPolicy(flags, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(FAILURE_TABLE))
@pytest.mark.parametrize("failure", list(UpstreamFailure))
def test_failure_table(name: str, failure: UpstreamFailure) -> None:
    expected = failure in FAILURE_TABLE[name]
    assert is_retriable(policy(name), status=None, failure=failure) is expected


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("5xx", 500, True),
        ("5xx", 503, True),
        ("5xx", 599, True),
        ("5xx", 499, False),
        ("5xx", 200, False),
        ("gateway-error", 502, True),
        ("gateway-error", 503, True),
        ("gateway-error", 504, True),
        ("gateway-error", 500, False),
        ("gateway-error", 501, False),
        ("reset", 503, False),
        ("connect-failure", 503, False),
        ("refused-stream", 503, False),
        ("retriable-status-codes", 409, True),
        ("retriable-status-codes", 503, False),
    ],
)
def test_status_table(name: str, status: int, expected: bool) -> None:
    p = policy(name, retriable_status_codes=frozenset({409, 429}))
    assert is_retriable(p, status=status, failure=None) is expected


def test_retriable_codes_need_the_condition() -> None:
    p = policy("5xx", retriable_status_codes=frozenset({409}))
    assert not is_retriable(p, status=409, failure=None)


def test_nothing_to_judge() -> None:
    assert not is_retriable(policy("5xx,reset"), status=None, failure=None)


@given(
    st.sets(st.sampled_from(sorted(FAILURE_TABLE))),
    st.integers(100, 599),
    st.frozensets(st.integers(100, 599), max_size=4),
)
def test_status_decisions_match_reference(
    names: set[str], status: int, codes: frozenset[int]
) -> None:
    p = policy(",".join(names), retriable_status_codes=codes)
    expected = (
        ("5xx" in names and status >= 500)
        or ("gateway-error" in names and status in (502, 503, 504))
        or ("retriable-status-codes" in names and status in codes)
    )
    assert is_retriable(p, status=status, failure=None) is expected


@given(st.sets(st.sampled_from(sorted(FAILURE_TABLE))), st.sampled_from(list(UpstreamFailure)))
def test_failure_decisions_are_the_union_of_conditions(
    names: set[str], failure: UpstreamFailure
) -> None:
    expected = any(failure in FAILURE_TABLE[n] for n in names)
    assert is_retriable(policy(",".join(names)), status=None, failure=failure) is expected


# --- retry state ----------------------------------------------------------------------------


def test_num_retries_limits_retries() -> None:
    state = RetryState(policy("5xx", num_retries=2), random.Random(1))
    assert state.decide(status=503, failure=None) is RetryDecision.RETRY
    assert state.decide(status=None, failure=F.RESET) is RetryDecision.RETRY
    assert state.retries_used == 2
    assert not state.attempt_allowed()
    assert state.decide(status=503, failure=None) is RetryDecision.LIMIT_EXCEEDED
    assert state.decide(status=200, failure=None) is RetryDecision.NO_RETRY
    assert state.retries_used == 2


def test_attempt_allowed_and_record_attempt() -> None:
    state = RetryState(policy("reset", num_retries=1), random.Random(1))
    assert state.attempt_allowed()
    state.record_attempt()
    assert not state.attempt_allowed()


def test_retry_budget_is_held_until_next_decision_or_finish() -> None:
    limits = ResourceLimits(CircuitBreakerThresholds(max_retries=1))
    first = RetryState(policy("5xx", num_retries=3), random.Random(1), limits)
    second = RetryState(policy("5xx", num_retries=3), random.Random(2), limits)
    assert first.decide(status=503, failure=None) is RetryDecision.RETRY
    assert limits.retries == 1
    # Another request cannot retry while the budget is taken; its retry still counts as used.
    assert second.decide(status=503, failure=None) is RetryDecision.OVERFLOW
    assert second.retries_used == 1
    assert limits.upstream_rq_retry_overflow == 1
    # The retried attempt succeeded: the next decision frees the budget.
    assert first.decide(status=200, failure=None) is RetryDecision.NO_RETRY
    assert limits.retries == 0
    assert second.decide(status=503, failure=None) is RetryDecision.RETRY
    second.finish()
    second.finish()
    assert limits.retries == 0


# --- back-off ---------------------------------------------------------------------------------


class _AlmostOne(random.Random):
    def random(self) -> float:
        return 0.999999


def test_backoff_windows_double_up_to_the_cap() -> None:
    state = RetryState(policy("5xx", base_interval=0.025, max_interval=0.25), _AlmostOne())
    windows = [round(state.backoff() / 0.999999, 6) for _ in range(7)]
    assert windows == [0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25]


@given(
    st.floats(0.001, 1.0),
    st.floats(1.0, 20.0),
    st.integers(0, 2**32),
)
def test_backoff_bounds(base: float, factor: float, seed: int) -> None:
    max_interval = base * factor
    state = RetryState(
        policy("5xx", base_interval=base, max_interval=max_interval), random.Random(seed)
    )
    for n in range(1, 12):
        delay = state.backoff()
        assert 0.0 <= delay < min(base * 2 ** (n - 1), max_interval) + 1e-12


def test_backoff_is_jittered() -> None:
    state = RetryState(policy("5xx"), random.Random(3))
    delays = {RetryState(policy("5xx"), random.Random(s)).backoff() for s in range(20)}
    assert len(delays) == 20
    assert state.backoff() < 0.025
