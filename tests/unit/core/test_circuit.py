"""Circuit breaker counters and their overflow statistics."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trellis.core.circuit import ResourceLimits
from trellis.core.config import CircuitBreakerThresholds

LIMITS = CircuitBreakerThresholds(
    max_connections=2, max_pending_requests=1, max_requests=3, max_retries=1
)


def acquire_until_refused(acquire: Callable[[], bool]) -> int:
    granted = 0
    while acquire():
        granted += 1
    return granted


@pytest.mark.parametrize(
    ("resource", "limit", "overflow"),
    [
        ("connection", 2, "upstream_cx_overflow"),
        ("pending", 1, "upstream_rq_pending_overflow"),
        ("request", 3, "upstream_rq_pending_overflow"),
        ("retry", 1, "upstream_rq_retry_overflow"),
    ],
)
def test_each_resource_is_capped_and_counts_overflow(
    resource: str, limit: int, overflow: str
) -> None:
    limits = ResourceLimits(LIMITS)
    acquire = getattr(limits, f"try_acquire_{resource}")
    release = getattr(limits, f"release_{resource}")
    assert acquire_until_refused(acquire) == limit
    assert getattr(limits, overflow) == 1
    assert not acquire()
    assert getattr(limits, overflow) == 2
    release()
    assert acquire()
    assert getattr(limits, overflow) == 2


def test_defaults_and_remaining() -> None:
    limits = ResourceLimits(CircuitBreakerThresholds())
    assert limits.remaining_connections == 1024
    assert limits.remaining_retries == 3
    assert limits.try_acquire_request()
    assert limits.requests == 1
    assert limits.remaining_requests == 1023
    assert limits.remaining_pending == 1024


def test_release_never_goes_negative() -> None:
    limits = ResourceLimits(LIMITS)
    limits.release_connection()
    limits.release_pending()
    limits.release_request()
    limits.release_retry()
    assert (limits.connections, limits.pending_requests, limits.requests, limits.retries) == (
        0,
        0,
        0,
        0,
    )
    assert acquire_until_refused(limits.try_acquire_connection) == 2


def test_new_thresholds_apply_to_current_counts() -> None:
    limits = ResourceLimits(LIMITS)
    assert acquire_until_refused(limits.try_acquire_request) == 3
    limits.thresholds = CircuitBreakerThresholds(max_requests=4)
    assert limits.try_acquire_request()
    assert not limits.try_acquire_request()
