"""A request's attempts upstream: host choice, pooled connection, retries and timers.

`Attempts` is the part of the router's `Stream` that deals with the upstream
side of one request before its response starts: picking a host, waiting for a
pooled connection, the per-try and route timeouts, and retrying what the
route's policy says is retriable. `Stream` (trellis.runtime.router) adds the
downstream request, the response and the endings; the attributes below are
its slots.
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import TYPE_CHECKING

from trellis.core.metrics import ResponseFlag
from trellis.core.outlier import Outcome
from trellis.core.retry import RetryDecision, RetryState, UpstreamFailure, is_retriable
from trellis.runtime.deadline import Deadline
from trellis.runtime.upstream import UpstreamConnection

if TYPE_CHECKING:
    from trellis.runtime.cluster import ClusterRuntime, HostRuntime
    from trellis.runtime.http_context import HttpContext, RouteRuntime

RESET_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: "


class Attempts(abc.ABC):
    """Upstream attempts of one request (a base of `Stream`, which holds the state and
    implements the endings declared abstract here)."""

    __slots__ = (
        "_backoff",
        "_global_timer",
        "_try_timer",
        "body",
        "bound",
        "cluster",
        "ctx",
        "done",
        "flags",
        "head",
        "holding_client",
        "host",
        "last_host",
        "pending_on",
        "replayable",
        "request_done",
        "response_started",
        "retry",
        "route",
        "tried",
        "upstream",
        "upstream_principal",
        "upstream_start",
    )

    # Set by `Stream.__init__`.

    ctx: HttpContext
    route: RouteRuntime | None
    cluster: ClusterRuntime | None
    host: HostRuntime | None
    last_host: HostRuntime | None
    pending_on: HostRuntime | None
    upstream: UpstreamConnection | None
    upstream_principal: str | None
    upstream_start: float
    retry: RetryState | None
    tried: list[int]
    head: bytes
    body: list[bytes]
    replayable: bool
    request_done: bool
    response_started: bool
    holding_client: bool
    bound: bool
    done: bool
    flags: ResponseFlag
    _global_timer: Deadline | None
    _try_timer: Deadline | None
    _backoff: asyncio.TimerHandle | None

    # How a request ends: `Stream`'s.
    @abc.abstractmethod
    def local_reply(self, code: int, body: bytes, flag: ResponseFlag) -> None:
        """Implemented by `Stream`."""

    @abc.abstractmethod
    def _abort_response(self, flag: ResponseFlag) -> None:
        """Implemented by `Stream`."""

    @abc.abstractmethod
    def _release_client(self) -> None:
        """Implemented by `Stream`."""

    def _attempt(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        if not cluster.hosts:
            self.local_reply(503, b"no healthy upstream", ResponseFlag.NO_HEALTHY_UPSTREAM)
            return
        if not cluster.limits.try_acquire_request():
            self._overflow()
            return
        retry = self.retry
        if retry is None:
            index = cluster.choose_host()
        else:
            policy = retry.policy
            exclude = self.tried if policy.avoid_previous_hosts else ()
            index = cluster.choose_host(exclude, policy.host_selection_retry_max_attempts)
        if index is None:
            cluster.limits.release_request()
            self.local_reply(503, b"no healthy upstream", ResponseFlag.NO_HEALTHY_UPSTREAM)
            return
        host = cluster.hosts[index]
        self.host = host
        self.last_host = host
        if retry is not None:  # only a retry looks at the hosts tried before
            self.tried.append(index)
        host.stats.active_requests += 1
        host.stats.total_requests += 1
        conn = host.pool.take_idle()
        if conn is not None:
            self.on_pool_ready(conn)
            return
        if not cluster.limits.try_acquire_pending():
            self._end_attempt()
            self._overflow()
            return
        self.pending_on = host
        host.pool.wait(self)

    def _overflow(self) -> None:
        self.local_reply(503, RESET_BODY + b"overflow", ResponseFlag.UPSTREAM_OVERFLOW)

    def on_pool_ready(self, conn: UpstreamConnection) -> None:
        if self.pending_on is not None:
            self.pending_on = None
            assert self.cluster is not None
            self.cluster.limits.release_pending()
        if self.done:
            conn.host.pool.release(conn)
            return
        conn.listener = self  # type: ignore[assignment]  # a Stream: it listens
        self.upstream = conn
        self.upstream_principal = conn.peer_principal
        self.bound = True
        self.upstream_start = time.monotonic()
        if self.body:
            conn.write(self.head + b"".join(self.body))
            if not self.replayable:
                self.body.clear()
        else:
            conn.write(self.head)
        if self.holding_client:
            self._release_client()
        if self.request_done and self.retry is not None:
            self._start_try_timer()

    def on_pool_failure(self, reason: str) -> None:
        if self.pending_on is not None:
            self.pending_on = None
            assert self.cluster is not None
            self.cluster.limits.release_pending()
        if self.done:
            return
        self._attempt_failed(
            UpstreamFailure.CONNECT_FAILURE, ResponseFlag.UPSTREAM_CONNECTION_FAILURE, reason
        )

    def _start_try_timer(self) -> None:
        retry = self.retry
        if (
            retry is not None
            and retry.policy.per_try_timeout is not None
            and self._try_timer is None
        ):
            self._try_timer = self.ctx.deadlines.schedule(
                retry.policy.per_try_timeout, self._on_try_timeout
            )

    def _end_attempt(self) -> None:
        """Release what the current attempt holds (not the connection)."""
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None
        host = self.host
        if host is not None:
            self.host = None
            host.stats.active_requests -= 1
            assert self.cluster is not None
            self.cluster.limits.release_request()
            if self.pending_on is not None:
                self.pending_on.pool.cancel(self)
                self.pending_on = None
                self.cluster.limits.release_pending()

    def _drop_upstream(self) -> None:
        """Abandon the current upstream connection (it cannot be reused)."""
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.listener = None
            conn.close()
        self._end_attempt()

    def _retry(self, status: int | None, failure: UpstreamFailure | None) -> bool:
        """Schedule a retry of this outcome if the policy allows; True when scheduled.

        Sets URX when the outcome was retriable but the retries are used up, and
        UO when the cluster's retry budget refused it (as Envoy does).
        """
        retry = self.retry
        if retry is None or self.response_started or self.done:
            return False
        if not self.replayable:
            if is_retriable(retry.policy, status=status, failure=failure):
                self.flags |= ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED
            return False
        decision = retry.decide(status=status, failure=failure)
        if decision is RetryDecision.LIMIT_EXCEEDED:
            self.flags |= ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED
        elif decision is RetryDecision.OVERFLOW:
            self.flags |= ResponseFlag.UPSTREAM_OVERFLOW
        if decision is not RetryDecision.RETRY:
            return False
        self._drop_upstream()
        cluster = self.cluster
        assert cluster is not None
        self.ctx.note_retry(cluster)
        self._backoff = self.ctx.loop.call_later(retry.backoff(), self._retry_now)
        return True

    def _retry_now(self) -> None:
        self._backoff = None
        if not self.done:
            self._attempt()

    def _attempt_failed(self, failure: UpstreamFailure, flag: ResponseFlag, reason: str) -> None:
        """No usable response from this attempt: retry, or answer with a local reply."""
        host = self.host
        if host is not None:
            host.stats.failures += 1
            if host.cluster.outlier is not None:
                host.cluster.report(host, Outcome.LOCAL_FAILURE)
        self._drop_upstream()
        if self._retry(None, failure):
            return
        if failure is UpstreamFailure.PER_TRY_TIMEOUT:
            self.local_reply(504, b"upstream request timeout", flag)
        else:
            self.local_reply(503, RESET_BODY + reason.encode(), flag)

    def _start_global_timer(self) -> None:
        """Envoy's route timeout runs from the end of the downstream request."""
        route = self.route
        if route is not None and route.timeout is not None and self._global_timer is None:
            self._global_timer = self.ctx.deadlines.schedule(route.timeout, self._on_global_timeout)

    def _on_try_timeout(self) -> None:
        self._try_timer = None
        if self.done:
            return
        if self.response_started:
            self._abort_response(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)
            return
        self._attempt_failed(
            UpstreamFailure.PER_TRY_TIMEOUT, ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "timeout"
        )

    def _on_global_timeout(self) -> None:
        self._global_timer = None
        if self.done:
            return
        if self.response_started:
            self._abort_response(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)
            return
        host = self.host
        if host is not None and host.cluster.outlier is not None:
            host.cluster.report(host, Outcome.LOCAL_FAILURE)
        self._drop_upstream()
        self.local_reply(504, b"upstream request timeout", ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)
