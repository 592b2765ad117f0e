"""The router: one downstream request forwarded upstream, with retries and timeouts.

A `Stream` lives from the downstream request's headers to the end of its
response. Decisions (route, host, retry or not) come from `trellis.core`; this
module moves the bytes, owns the timers and records the outcome.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from trellis.core.authz import DENIED_BODY, DENIED_STATUS, AuthzDecision
from trellis.core.config import ClusterAction, DirectResponseAction, RedirectAction
from trellis.core.metrics import ResponseFlag
from trellis.core.outlier import outcome_for_status
from trellis.core.retry import RetryState, UpstreamFailure
from trellis.runtime import wire
from trellis.runtime.attempt import Attempts
from trellis.runtime.deadline import Deadline
from trellis.runtime.tunnel import Tunnel
from trellis.runtime.upstream import UpstreamConnection
from trellis.runtime.wire import Headers

if TYPE_CHECKING:
    from trellis.core.peer_metadata import WorkloadMetadata
    from trellis.runtime.cluster import ClusterRuntime, HostRuntime
    from trellis.runtime.downstream import DownstreamHttp1
    from trellis.runtime.http_context import HttpContext, RouteRuntime
    from trellis.runtime.tracing import ActiveTrace


class Stream(Attempts):
    """Router state for one request; the downstream connection owns it."""

    __slots__ = (
        "authority",
        "authz",
        "begun",
        "body_bytes",
        "conn",
        "headers",
        "is_head",
        "keep_alive",
        "method",
        "path",
        "peer_workload",
        "request_chunked",
        "request_head_bytes",
        "request_id",
        "response_bytes",
        "response_chunked",
        "response_code",
        "response_head_bytes",
        "response_until_close",
        "start",
        "trace",
        "tunnel",
        "upgrade",
        "upstream_keep_alive",
    )

    def __init__(
        self,
        conn: DownstreamHttp1,
        ctx: HttpContext,
        method: bytes,
        authority: str,
        path: str,
        headers: Headers,
        keep_alive: bool,
        upgrade: bool,
        request_chunked: bool,
        has_body: bool,
    ) -> None:
        self.conn = conn
        self.ctx = ctx
        self.method = method
        self.authority = authority
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.request_chunked = request_chunked
        self.is_head = method == b"HEAD"
        self.start = conn.last_activity  # when the head's last bytes arrived: just now
        self.upstream_start = 0.0
        self.upstream_keep_alive = True
        self.upstream_principal: str | None = None  # the upstream's SPIFFE ID over mTLS
        self.route: RouteRuntime | None = None
        self.cluster: ClusterRuntime | None = None
        self.host: HostRuntime | None = None
        self.last_host: HostRuntime | None = None
        self.request_id: bytes | None = None  # the x-request-id the proxy generated
        self.authz: AuthzDecision | None = None  # the RBAC filters' decision, if any
        self.upstream: UpstreamConnection | None = None
        self.pending_on: HostRuntime | None = None
        self.head = b""
        # Head sizes count in Istio's request/response byte metrics.
        self.request_head_bytes = 0
        self.response_head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.replayable = True
        self.request_done = not has_body
        self.bound = False
        self.begun = False
        self.holding_client = False  # paused the client while its body waits for upstream
        self.response_started = False
        self.response_until_close = False
        self.response_chunked = False
        self.response_code = 0
        self.response_bytes = 0
        self.flags = ResponseFlag.NONE
        self.retry: RetryState | None = None
        self.tried: list[int] = []
        self._global_timer: Deadline | None = None
        self._try_timer: Deadline | None = None
        self._backoff: asyncio.TimerHandle | None = None
        self.tunnel: Tunnel | None = None  # an upgrade request's byte pipe
        # The peer's workload from the metadata exchange (inbound: the client's, taken
        # off the request; outbound: the server's, taken off the response).
        self.peer_workload: WorkloadMetadata | None = None
        self.trace: ActiveTrace | None = None  # set when the connection manager traces
        self.done = False

    # -- request side (called by the downstream connection) -----------------------

    def begin(self) -> None:
        """Route the request and act on the route's action."""
        self.begun = True
        ctx = self.ctx
        if ctx.inbound_exchange is not None:
            self.peer_workload = ctx.inbound_exchange.take(self.headers)
        if ctx.tracer is not None:
            self.trace = ctx.tracer.start(self)
        if ctx.authz is not None:
            decision = self.authz = ctx.authz.decide(self.conn.authz_request(self))
            if not decision.allowed:
                self.local_reply(DENIED_STATUS, DENIED_BODY, ResponseFlag.NONE)
                return
        route = ctx.select(self)
        if route is None:
            self.local_reply(404, b"", ResponseFlag.NO_ROUTE_FOUND)
            return
        self.route = route
        action = route.route.action
        if isinstance(action, ClusterAction):
            self._forward(route, action)
        elif isinstance(action, DirectResponseAction):
            self.local_reply(action.status, action.body, ResponseFlag.NONE, mutate=True)
        elif isinstance(action, RedirectAction):
            location = route.redirect_location(self.conn.scheme, self.authority, self.path)
            self.local_reply(
                action.response_code, b"", ResponseFlag.NONE, extra=[(b"location", location)]
            )

    def _forward(self, route: RouteRuntime, action: ClusterAction) -> None:
        cluster = route.pick_cluster(self.ctx.rng)
        if cluster is None:
            self.local_reply(503, b"", ResponseFlag.NO_CLUSTER_FOUND)
            return
        self.cluster = cluster
        if route.retry_policy is not None:
            self.retry = RetryState(route.retry_policy, self.ctx.rng, cluster.limits)
        else:
            self.replayable = False
        self.head = route.request_head(self, cluster)
        timeout = route.timeout
        if timeout is not None and self.request_done:  # `_start_global_timer`, inlined
            self._global_timer = self.ctx.deadlines.schedule(timeout, self._on_global_timeout)
        self._attempt()

    def on_request_body(self, data: bytes) -> None:
        if self.done:
            return
        if self.request_chunked:
            data = wire.chunk(data)
        self.body_bytes += len(data)
        upstream = self.upstream
        if self.replayable:
            self.body.append(data)
            if self.body_bytes > self.ctx.config.max_retry_buffer_bytes:
                self.replayable = False
                if upstream is not None:
                    self.body.clear()
        elif upstream is None:
            self.body.append(data)
            if self.body_bytes > self.ctx.buffer_limit and not self.holding_client:
                self.holding_client = True  # one pause, undone once the upstream is there
                self.conn.pause_reading()
        if upstream is not None:
            upstream.write(data)

    def on_request_complete(self) -> None:
        if self.done:
            return
        self.request_done = True
        if self.request_chunked:
            self.on_request_body_raw(wire.LAST_CHUNK)
        if self._global_timer is None:  # (a body-less request started it in `_forward`)
            self._start_global_timer()
        if self.upstream is not None and self.retry is not None:
            self._start_try_timer()

    def on_request_body_raw(self, data: bytes) -> None:
        if self.replayable or self.upstream is None:
            self.body.append(data)
        if self.upstream is not None:
            self.upstream.write(data)

    def on_downstream_closed(self) -> None:
        """The client went away before the response finished."""
        if self.done:
            return
        self.flags |= ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
        self._drop_upstream()
        self._finish()

    # -- response side (called by the upstream connection) -------------------------

    def on_response_headers(self, status: int, headers: Headers, keep_alive: bool) -> None:
        if self.done:
            return
        if status < 200 and status != 101:
            if status == 100 and self.ctx.config.proxy_100_continue:
                self.conn.write(wire.CONTINUE_100)
            return
        host = self.host
        if status >= 500 and host is not None:
            host.stats.failures += 1
        if host is not None and host.cluster.outlier is not None:
            host.cluster.report(host, outcome_for_status(status))
        if self.retry is not None and self._retry(status, None):
            return
        self.response_started = True
        self.response_code = status
        self.upstream_keep_alive = keep_alive
        assert self.route is not None
        head = self.route.response_head(self, status, headers)
        self.response_head_bytes = len(head)
        self.conn.write(head)
        if self.is_head:
            # httptools cannot be told a response answers HEAD: finish here and
            # do not reuse the connection, its parser may expect a body.
            self._drop_upstream()
            self._finish()

    def on_response_body(self, data: bytes) -> None:
        if self.done or not self.response_started:
            return
        self.response_bytes += len(data)
        self.conn.write(wire.chunk(data) if self.response_chunked else data)

    def on_response_complete(self) -> None:
        tunnel = self.tunnel
        if self.done or not self.response_started or (tunnel is not None and tunnel.open):
            return
        if self.response_code == 101:
            return  # the upgrade exception follows
        if self.response_chunked:
            self.conn.write(wire.LAST_CHUNK)
        conn = self.upstream
        self.upstream = None
        host = self.host
        if host is not None and self.response_code < 500:
            host.stats.successes += 1
        self._end_attempt()
        if conn is not None and host is not None:
            if self.request_done and self.upstream_keep_alive:
                host.pool.release(conn)
            else:
                conn.listener = None
                conn.close()
        self._finish()

    def on_upstream_reset(self, reason: str) -> None:
        if self.done:
            return
        self.upstream = None
        if self.tunnel is not None and self.tunnel.open:
            self._end_attempt()
            self.conn.close()
            self._finish()
            return
        if self.response_started:
            if self.response_until_close:  # the close is the end of this body
                self.upstream_keep_alive = False
                self.on_response_complete()
            else:
                self._abort_response(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION)
            return
        self._attempt_failed(
            UpstreamFailure.RESET, ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, reason
        )

    def on_upstream_upgrade(self, rest: bytes) -> None:
        upstream = self.upstream
        if self.done or self.response_code != 101 or upstream is None:
            self._drop_upstream()
            return
        self._cancel_timers()
        if self.tunnel is None:
            self.tunnel = Tunnel(self)
        self.tunnel.start(upstream, rest)

    def on_upstream_data(self, data: bytes) -> None:
        """Bytes from the upstream once the tunnel is up."""
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)

    def end_tunnel(self) -> None:
        """Both directions of the tunnel ended."""
        if not self.done:
            self._drop_upstream()
            self.conn.close()
            self._finish()

    def pause_downstream(self) -> None:
        self.conn.pause_reading()

    def resume_downstream(self) -> None:
        self.conn.resume_reading()

    # -- endings ------------------------------------------------------------------

    def local_reply(
        self,
        code: int,
        body: bytes,
        flag: ResponseFlag,
        *,
        extra: Headers | None = None,
        mutate: bool = False,
    ) -> None:
        if self.done:
            return
        self._cancel_timers()
        self.flags |= flag
        self.response_code = code
        self.response_bytes = 0 if self.is_head else len(body)
        headers = list(extra) if extra else []
        if self.peer_workload is not None and self.ctx.inbound_exchange is not None:
            headers.extend(self.ctx.inbound_exchange.headers)  # answer the client's metadata
        if mutate and self.route is not None:
            self.route.mutate_response(headers)
        close = not self.keep_alive or self.conn.draining or not self.request_done
        self.response_started = True
        self.keep_alive = not close
        self.conn.write(
            wire.local_reply(code, body, close=close, extra=headers, head_only=self.is_head)
        )
        self._finish()

    def stream_timeout(self, body: bytes, flag: ResponseFlag) -> None:
        """Request or stream-idle timeout: 408 if nothing was sent yet, else a reset."""
        if self.done:
            return
        if self.response_started:
            self._abort_response(flag)
            return
        self._drop_upstream()
        self.keep_alive = False
        self.local_reply(408, body, flag)

    def _abort_response(self, flag: ResponseFlag) -> None:
        """The response already started: all we can do is cut the connection."""
        self.flags |= flag
        self._drop_upstream()
        self.keep_alive = False
        self.conn.close()
        self._finish()

    def _cancel_timers(self) -> None:
        # Three tests rather than a loop over a tuple: this runs for every request.
        if self._global_timer is not None:
            self._global_timer.cancel()
            self._global_timer = None
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None

    def _release_client(self) -> None:
        if self.holding_client:
            self.holding_client = False
            self.conn.resume_reading()

    def _finish(self) -> None:
        if self.done:
            return
        if self.holding_client:
            self._release_client()
        self.done = True
        self._cancel_timers()
        if self.host is not None:  # (usually released already, with the response)
            self._end_attempt()
        if self.retry is not None:
            self.retry.finish()
        self.ctx.record(self)
        self.conn.stream_finished(self)
