"""Retry decisions with Envoy's `retry_on` semantics and back-off.

What each `retry_on` condition covers (Envoy's router and `RetryStateImpl`):

| outcome              | 5xx | gateway-error | reset | connect-failure | refused-stream |
|----------------------|-----|---------------|-------|-----------------|----------------|
| status 500-599       | yes | 502, 503, 504 |       |                 |                |
| connect failure      | yes | yes           | yes   | yes             |                |
| reset before headers | yes | yes           | yes   |                 |                |
| REFUSED_STREAM       | yes | yes           | yes   |                 | yes            |
| per-try timeout      | yes | yes           | yes   |                 |                |

`retriable-status-codes` covers the statuses in `retriable_status_codes` only.
A per-try timeout is a local reset of the attempt, so only the conditions that
retry any reset cover it. The overall route timeout is never retried.
"""

from __future__ import annotations

import enum
import random

from trellis.core.circuit import ResourceLimits
from trellis.core.config import RetryOn, RetryPolicy


class UpstreamFailure(enum.Enum):
    """How an attempt ended without a complete response head."""

    CONNECT_FAILURE = "connect_failure"  # connection refused / connect timeout
    RESET = "reset"  # closed or reset before a complete response head
    REFUSED_STREAM = "refused_stream"  # HTTP/2 RST_STREAM(REFUSED_STREAM)
    PER_TRY_TIMEOUT = "per_try_timeout"


_ANY_RESET = RetryOn.SERVER_ERROR | RetryOn.GATEWAY_ERROR | RetryOn.RESET
_CONNECT = _ANY_RESET | RetryOn.CONNECT_FAILURE
_REFUSED = _ANY_RESET | RetryOn.REFUSED_STREAM


def _failure_conditions(failure: UpstreamFailure) -> RetryOn:
    if failure is UpstreamFailure.CONNECT_FAILURE:
        return _CONNECT
    if failure is UpstreamFailure.REFUSED_STREAM:
        return _REFUSED
    return _ANY_RESET


def is_retriable(
    policy: RetryPolicy, *, status: int | None, failure: UpstreamFailure | None
) -> bool:
    """Whether `policy.retry_on` covers this outcome: a failure, else a response status."""
    retry_on = policy.retry_on
    if failure is not None:
        return bool(retry_on & _failure_conditions(failure))
    if status is None:
        return False
    if retry_on & RetryOn.SERVER_ERROR and 500 <= status <= 599:
        return True
    if retry_on & RetryOn.GATEWAY_ERROR and 502 <= status <= 504:
        return True
    return bool(retry_on & RetryOn.RETRIABLE_STATUS_CODES) and (
        status in policy.retriable_status_codes
    )


class RetryDecision(enum.Enum):
    RETRY = "retry"
    NO_RETRY = "no_retry"  # the outcome is not covered by retry_on
    LIMIT_EXCEEDED = "limit_exceeded"  # num_retries used up (response flag URX)
    OVERFLOW = "overflow"  # the cluster's max_retries circuit breaker (response flag UO)


class RetryState:
    """Retry bookkeeping for one downstream request.

    `decide` is Envoy's `shouldRetry`: it releases the retry budget held for the
    previous retry, checks the condition and `num_retries` (a retry counts as used
    even when the circuit breaker then refuses it), and takes one unit of the
    cluster's retry budget, held until the next `decide` or `finish`.
    """

    __slots__ = ("_holding", "_limits", "_rng", "_window", "policy", "retries_used")

    def __init__(
        self, policy: RetryPolicy, rng: random.Random, limits: ResourceLimits | None = None
    ) -> None:
        self.policy = policy
        self.retries_used = 0
        self._rng = rng
        self._limits = limits
        self._holding = False
        self._window = min(policy.base_interval, policy.max_interval)

    def attempt_allowed(self) -> bool:
        """Whether another retry fits in `num_retries`."""
        return self.retries_used < self.policy.num_retries

    def record_attempt(self) -> None:
        self.retries_used += 1

    def backoff(self) -> float:
        """Seconds to wait before the next retry: uniform in [0, window), where the window
        starts at `base_interval` and doubles per retry up to `max_interval`."""
        window = self._window
        self._window = min(window * 2, self.policy.max_interval)
        return self._rng.random() * window

    def decide(self, *, status: int | None, failure: UpstreamFailure | None) -> RetryDecision:
        self._release()
        if not is_retriable(self.policy, status=status, failure=failure):
            return RetryDecision.NO_RETRY
        if not self.attempt_allowed():
            return RetryDecision.LIMIT_EXCEEDED
        self.record_attempt()
        limits = self._limits
        if limits is not None:
            if not limits.try_acquire_retry():
                return RetryDecision.OVERFLOW
            self._holding = True
        return RetryDecision.RETRY

    def finish(self) -> None:
        """The request is over: give back any retry budget still held."""
        self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            assert self._limits is not None
            self._limits.release_retry()
