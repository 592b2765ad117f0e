"""Per-listener HTTP state built once per config: route table, compiled routes, sinks.

Everything here is computed when a config is applied so that the per-request
work is a few dict lookups and list operations.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from trellis.core.config import (
    ClusterAction,
    HttpConnectionManager,
    RedirectAction,
    Route,
    TrafficDirection,
    VirtualHost,
)
from trellis.core.headers import (
    HOP_BY_HOP,
    CompiledMutation,
    RequestIds,
    append_forwarded_for,
    forwardable_response,
    set_forwarded_proto,
    strip_hop_by_hop,
)
from trellis.core.peer_metadata import is_mesh_cluster
from trellis.core.routing import RouteTable, WeightedPicker, redirect_location, rewrite_path
from trellis.runtime import wire
from trellis.runtime.cluster import ClusterManager, ClusterRuntime
from trellis.runtime.deadline import Deadlines
from trellis.runtime.wire import Headers

if TYPE_CHECKING:
    from trellis.core.peer_metadata import PeerExchange
    from trellis.runtime.router import Stream
    from trellis.runtime.tracing import Tracer

_CHUNKED = (b"transfer-encoding", b"chunked")
_SERVER = (b"server", wire.SERVER_NAME)
_CLOSE = (b"connection", b"close")


Mutations = tuple[CompiledMutation, ...]


class RouteRuntime:
    """A route with everything it needs at request time precomputed.

    Header mutations and the weighted-cluster picker come compiled from the
    route table; here they are joined with the cluster runtimes they lead to.
    """

    __slots__ = (
        "_clusters",
        "_mesh",
        "_mutations",
        "_picker",
        "_rewrites_prefix",
        "_route_mutations",
        "action",
        "host_rewrite",
        "retry_policy",
        "route",
        "timeout",
        "vhost",
    )

    def __init__(
        self, route: Route, vhost: VirtualHost, table: RouteTable, clusters: ClusterManager
    ) -> None:
        self.route = route
        self.vhost = vhost
        action = route.action
        self.action = action
        self.timeout: float | None = None
        self.retry_policy = None
        self.host_rewrite: bytes | None = None
        self._picker: WeightedPicker | None = None
        self._rewrites_prefix = False
        # Weighted cluster (by identity) -> its runtime, None while CDS lacks it.
        self._clusters: dict[int, ClusterRuntime | None] = {}
        # Envoy applies weighted cluster, route, virtual host, then route configuration
        # mutations; the whole sequence is joined once per (route, cluster).
        compiled = table.mutations(route)
        self._route_mutations = (compiled.request, compiled.response)
        self._mutations: dict[int, tuple[Mutations, Mutations]] = {}
        # The clusters (by identity) whose requests carry our peer metadata.
        self._mesh: frozenset[int] = frozenset()
        if isinstance(action, ClusterAction):
            self.timeout = action.timeout
            self.retry_policy = action.retry_policy
            self._rewrites_prefix = action.prefix_rewrite is not None
            if action.host_rewrite is not None:
                self.host_rewrite = action.host_rewrite.encode("latin-1")
            self._picker = table.picker(action)
            for wc in action.clusters:
                runtime = clusters.clusters.get(wc.name)
                self._clusters[id(wc)] = runtime
                own = table.mutations(wc)
                self._mutations[id(runtime)] = (
                    (*own.request, *compiled.request),
                    (*own.response, *compiled.response),
                )
            self._mesh = frozenset(
                id(runtime)
                for runtime in self._clusters.values()
                if runtime is not None and is_mesh_cluster(runtime.config.name)
            )

    def pick_cluster(self, rng: random.Random) -> ClusterRuntime | None:
        picker = self._picker
        if picker is None:
            return None
        clusters = picker.clusters
        picked = clusters[0] if len(clusters) == 1 else picker.pick(rng.randrange(picker.total))
        return self._clusters.get(id(picked))

    def request_head(self, stream: Stream, cluster: ClusterRuntime) -> bytes:
        """The request head sent upstream (same bytes for every retry)."""
        ctx = stream.ctx
        config = ctx.config
        headers = stream.headers
        has_host, has_request_id, has_proto, hop_by_hop = _scan_request(headers)
        if hop_by_hop:  # rare from clients: strip, then look again at what is left
            headers = strip_hop_by_hop(headers, keep_upgrade=stream.upgrade)
            has_host, has_request_id, has_proto, _ = _scan_request(headers)
        host_value = self.host_rewrite
        if not has_host:
            headers.insert(0, (b"host", host_value or stream.authority.encode("latin-1")))
        elif host_value is not None:
            headers[:] = [(b"host", host_value) if item[0] == b"host" else item for item in headers]
        if not has_request_id and config.generate_request_id:
            request_id = stream.request_id = ctx.request_ids.take()
            headers.append((b"x-request-id", request_id))
        if has_proto or config.use_remote_address:
            set_forwarded_proto(headers, stream.conn.scheme, overwrite=config.use_remote_address)
        else:
            headers.append((b"x-forwarded-proto", stream.conn.scheme))
        if config.use_remote_address and not config.skip_xff_append:
            append_forwarded_for(headers, stream.conn.remote_ip)
        for mutation in self._mutations.get(id(cluster), self._route_mutations)[0]:
            mutation.apply(headers)
        if stream.trace is not None and ctx.tracer is not None:
            ctx.tracer.inject(stream.trace, headers)
        exchange = ctx.outbound_exchange
        if exchange is not None and id(cluster) in self._mesh:
            headers.extend(exchange.headers)  # tell the server's sidecar who we are
        if stream.request_chunked:
            headers.append(_CHUNKED)
        path = stream.path
        if self._rewrites_prefix:
            action = self.action
            assert isinstance(action, ClusterAction)
            path = rewrite_path(path, self.route, action)
        return wire.request_head(stream.method, path.encode("latin-1"), headers)

    def response_head(self, stream: Stream, status: int, headers: Headers) -> bytes:
        """The response head sent downstream; decides framing and keep-alive."""
        upgrade = status == 101
        out, has_length, upstream_chunked = forwardable_response(headers, upgrade)
        ctx = stream.ctx
        exchange = ctx.outbound_exchange
        cluster = stream.cluster
        if exchange is not None:
            if id(cluster) in self._mesh:
                stream.peer_workload = exchange.take(out)
        elif stream.peer_workload is not None and ctx.inbound_exchange is not None:
            out.extend(ctx.inbound_exchange.headers)
        mutations = self._mutations.get(id(cluster), self._route_mutations)[1]
        for mutation in mutations:
            mutation.apply(out)
        # The connection's last activity is when these response bytes arrived.
        service_ms = int((stream.conn.last_activity - stream.upstream_start) * 1000)
        out.append((b"x-envoy-upstream-service-time", b"%d" % service_ms))
        if mutations:
            replace_server(out)  # a configured `server` header yields to the proxy's
        else:
            out.append(_SERVER)
        conn = stream.conn
        if not upgrade and not has_length and not stream.is_head and status not in (204, 304):
            # Re-framed as chunked; without chunking upstream the body ends when it closes.
            stream.response_until_close = not upstream_chunked
            if conn.http11:
                out.append(_CHUNKED)
                stream.response_chunked = True
            else:
                stream.keep_alive = False
        if not stream.keep_alive or conn.draining:
            stream.keep_alive = False
            out.append(_CLOSE)
        return wire.response_head(status, out)

    def mutate_response(self, headers: Headers) -> None:
        for mutation in self._route_mutations[1]:
            mutation.apply(headers)

    def redirect_location(self, scheme: bytes, authority: str, path: str) -> bytes:
        action = self.action
        assert isinstance(action, RedirectAction)
        location = redirect_location(scheme.decode(), authority, path, self.route, action)
        return location.encode("latin-1")


# Request headers `request_head` looks for: those it sets, and the hop-by-hop ones.
_NOTED = HOP_BY_HOP | {b"host", b"x-request-id", b"x-forwarded-proto"}


def _scan_request(headers: Headers) -> tuple[bool, bool, bool, bool]:
    """Whether `headers` hold a host, an x-request-id, an x-forwarded-proto and any
    hop-by-hop header: one pass over the names."""
    host = request_id = proto = hop_by_hop = False
    for name, _ in headers:
        if name in _NOTED:
            if name == b"host":
                host = True
            elif name == b"x-request-id":
                request_id = True
            elif name == b"x-forwarded-proto":
                proto = True
            else:
                hop_by_hop = True
    return host, request_id, proto, hop_by_hop


def replace_server(headers: Headers) -> None:
    for i, (name, _) in enumerate(headers):
        if name == b"server":
            headers[i] = _SERVER
            return
    headers.append(_SERVER)


class HttpContext:
    """The HTTP connection manager of one listener, compiled."""

    __slots__ = (
        "_routes",
        "authz",
        "buffer_limit",
        "clusters",
        "config",
        "deadlines",
        "direction",
        "inbound_exchange",
        "listener_name",
        "loop",
        "note_retry",
        "outbound_exchange",
        "record",
        "request_ids",
        "rng",
        "table",
        "tracer",
    )

    def __init__(
        self,
        listener_name: str,
        config: HttpConnectionManager,
        direction: TrafficDirection,
        clusters: ClusterManager,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random,
        buffer_limit: int,
        record: Callable[[Stream], None],
        note_retry: Callable[[ClusterRuntime], None],
        deadlines: Deadlines,
        tracer: Tracer | None = None,
        exchange: PeerExchange | None = None,
    ) -> None:
        self.listener_name = listener_name
        # Istio's metadata exchange, by direction (None: this side does not take part).
        inbound = direction is TrafficDirection.INBOUND
        self.inbound_exchange = exchange if inbound else None
        self.outbound_exchange = None if inbound else exchange
        self.tracer = tracer  # None: tracing off, trace headers pass untouched
        self.config = config
        self.direction = direction
        self.clusters = clusters
        self.loop = loop
        self.deadlines = deadlines
        self.rng = rng
        self.request_ids = RequestIds(rng)
        self.buffer_limit = buffer_limit
        self.record = record
        self.note_retry = note_retry
        self.authz = config.authz  # None: no RBAC filter, nothing to evaluate
        route_config = config.route_config
        assert route_config is not None, "RDS routes are resolved before a context is built"
        self.table = RouteTable(route_config)
        self._routes: dict[int, RouteRuntime] = {}
        for vhost in route_config.virtual_hosts:
            for route in vhost.routes:
                self._routes[id(route)] = RouteRuntime(route, vhost, self.table, clusters)

    def select(self, stream: Stream) -> RouteRuntime | None:
        table = self.table
        if table.matches_pseudo_headers:
            found = table.select_route(
                stream.authority,
                stream.path,
                stream.headers,
                method=stream.method.decode("latin-1"),
                scheme=stream.conn.scheme.decode("latin-1"),
            )
        else:
            found = table.select_route(stream.authority, stream.path, stream.headers)
        if found is None:
            return None
        return self._routes[id(found[1])]
