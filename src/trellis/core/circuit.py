"""Circuit breaking: a cluster's resource counters checked against its thresholds.

Like Envoy, a resource can be taken while its count is below the threshold;
each refusal counts in the matching overflow counter:

- connections -> `upstream_cx_overflow` (the request waits for a connection);
- pending requests and requests -> `upstream_rq_pending_overflow` (the request
  fails with 503 and response flag `UO`);
- retries -> `upstream_rq_retry_overflow` (the retry is not made).
"""

from __future__ import annotations

from trellis.core.config import CircuitBreakerThresholds


class ResourceLimits:
    """Mutable counters for one cluster; the runtime acquires and releases them."""

    __slots__ = (
        "connections",
        "pending_requests",
        "requests",
        "retries",
        "thresholds",
        "upstream_cx_overflow",
        "upstream_rq_pending_overflow",
        "upstream_rq_retry_overflow",
    )

    def __init__(self, thresholds: CircuitBreakerThresholds) -> None:
        self.thresholds = thresholds  # may be replaced when the cluster config changes
        self.connections = 0
        self.pending_requests = 0
        self.requests = 0
        self.retries = 0
        self.upstream_cx_overflow = 0
        self.upstream_rq_pending_overflow = 0
        self.upstream_rq_retry_overflow = 0

    def try_acquire_connection(self) -> bool:
        if self.connections < self.thresholds.max_connections:
            self.connections += 1
            return True
        self.upstream_cx_overflow += 1
        return False

    def release_connection(self) -> None:
        if self.connections > 0:
            self.connections -= 1

    def try_acquire_pending(self) -> bool:
        if self.pending_requests < self.thresholds.max_pending_requests:
            self.pending_requests += 1
            return True
        self.upstream_rq_pending_overflow += 1
        return False

    def release_pending(self) -> None:
        if self.pending_requests > 0:
            self.pending_requests -= 1

    def try_acquire_request(self) -> bool:
        if self.requests < self.thresholds.max_requests:
            self.requests += 1
            return True
        self.upstream_rq_pending_overflow += 1
        return False

    def release_request(self) -> None:
        if self.requests > 0:
            self.requests -= 1

    def try_acquire_retry(self) -> bool:
        if self.retries < self.thresholds.max_retries:
            self.retries += 1
            return True
        self.upstream_rq_retry_overflow += 1
        return False

    def release_retry(self) -> None:
        if self.retries > 0:
            self.retries -= 1

    @property
    def remaining_connections(self) -> int:
        return max(0, self.thresholds.max_connections - self.connections)

    @property
    def remaining_pending(self) -> int:
        return max(0, self.thresholds.max_pending_requests - self.pending_requests)

    @property
    def remaining_requests(self) -> int:
        return max(0, self.thresholds.max_requests - self.requests)

    @property
    def remaining_retries(self) -> int:
        return max(0, self.thresholds.max_retries - self.retries)
