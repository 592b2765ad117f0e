"""Route retry policies with Istio's defaults (`pilot/.../route/retry/retry.go`).

Without `retries`, a route retries twice on
`connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
with no retriable status codes (Istio's EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY
default), avoids hosts already tried (`previous_hosts`) and tries up to 5
times to pick a new host. `attempts: 0` turns retries off; `retryOn` replaces
the conditions, and status codes in it become `retriable_status_codes`.

Difference from Istio: `unavailable`, `cancelled`, `deadline-exceeded`,
`internal` and `resource-exhausted` are gRPC-status conditions
(`x-envoy-retry-grpc-on`). They never fire on the HTTP/1.1 routes the
Trellis proxy serves, and the proxy does not accept them, so they are
dropped from its routes. A policy left with no condition is omitted. Other
Envoy conditions the proxy does not implement are an error.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc

from trellis.api.networking import HTTPRetry, VirtualService
from trellis.core.config import RETRY_ON_NAMES
from trellis.xds.mesh.build import duration, pack, u32
from trellis.xds.mesh.errors import unsupported
from trellis.xds.protos import previous_hosts_pb2

DEFAULT_ATTEMPTS = 2
DEFAULT_RETRY_ON = (
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
)
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
GRPC_ONLY_CONDITIONS = frozenset(
    {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
RETRIABLE_STATUS_CODES = "retriable-status-codes"


def default_retry_policy() -> rc.RetryPolicy | None:
    """The policy of a route whose rule has no `retries` (and of the default route)."""
    return _policy(DEFAULT_ATTEMPTS, DEFAULT_RETRY_ON, (), None)


def retry_policy(
    retries: HTTPRetry | None, service: VirtualService, path: str
) -> rc.RetryPolicy | None:
    """The Envoy policy of one VirtualService rule; None when retries are off."""
    if retries is None:
        return default_retry_policy()
    if retries.attempts <= 0:
        return None
    if retries.retry_remote_localities:
        raise unsupported(
            service, f"{path}.retryRemoteLocalities", "localities are not supported by Trellis"
        )
    conditions: tuple[str, ...] = DEFAULT_RETRY_ON
    codes: tuple[int, ...] = ()
    if retries.retry_on:
        conditions = retries.retry_on_conditions
        codes = retries.retriable_status_codes
        if codes and RETRIABLE_STATUS_CODES not in conditions:
            conditions += (RETRIABLE_STATUS_CODES,)
    for condition in conditions:
        if condition not in RETRY_ON_NAMES and condition not in GRPC_ONLY_CONDITIONS:
            names = ", ".join(RETRY_ON_NAMES)
            raise unsupported(
                service,
                f"{path}.retryOn",
                f"retry condition {condition!r} is not supported by the Trellis proxy "
                f"(supported: {names})",
            )
    return _policy(retries.attempts, conditions, codes, retries.per_try_timeout)


def _policy(
    attempts: int, conditions: tuple[str, ...], codes: tuple[int, ...], per_try: float | None
) -> rc.RetryPolicy | None:
    kept = [condition for condition in conditions if condition not in GRPC_ONLY_CONDITIONS]
    if not kept:
        return None
    policy = rc.RetryPolicy(
        retry_on=",".join(dict.fromkeys(kept)),
        num_retries=u32(attempts),
        retriable_status_codes=sorted(set(codes)),
        host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )
    policy.retry_host_predicate.add(
        name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())
    )
    if per_try is not None:
        policy.per_try_timeout.CopyFrom(duration(per_try))
    return policy
