"""Spans on the request path: continue or start a trace, pass it on, record the span.

One `Tracer` per HTTP connection manager that has `tracing`; without it the
router never calls in here (the cost of tracing off is one `is None` check).
Per request `start` reads the trace headers and decides sampling, the router's
request head gets `inject`ed, and `finish` hands a sampled request's span to
the `SpanExporter` (`trellis.runtime.trace_export`), which batches and sends it
off the request path.

Like Envoy's sidecars, an inbound connection manager records a SERVER span and
an outbound one a CLIENT span whose id goes upstream as the parent, so the
next hop's SERVER span hangs under it. With `spawn_upstream_span` the
connection manager's span is a SERVER span and the upstream request gets a
CLIENT child span of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from trellis.core.config import NodeIdentity, TrafficDirection
from trellis.core.metrics import ResponseFlag, format_flags
from trellis.core.tracing import (
    NO_TRACE,
    TracingConfig,
    decide_sampled,
    incoming_trace,
    new_span_id,
    new_trace_id,
    operation_name,
    outgoing_headers,
    replace_trace_headers,
)

if TYPE_CHECKING:
    import random

    from trellis.runtime.router import Stream
    from trellis.runtime.trace_export import SpanExporter

SPAN_KIND_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind
SPAN_KIND_CLIENT = 3
Attribute = tuple[str, str | int]


class ActiveTrace:
    """One request's place in its trace: the proxy's span and its parent."""

    __slots__ = (
        "debug",
        "had_headers",
        "parent_id",
        "sampled",
        "span_id",
        "start_ns",
        "trace_id",
        "tracestate",
        "upstream_span_id",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent_id: int | None,
        sampled: bool,
        tracestate: bytes | None,
        debug: bool,
        had_headers: bool = True,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.debug = debug
        self.had_headers = had_headers  # False: no trace header to remove upstream
        self.start_ns = time.time_ns() if sampled else 0
        self.upstream_span_id: int | None = None  # spawn_upstream_span: the CLIENT child


class SpanRecord:
    """A finished span, raw; encoded to OTLP in batches by the exporter."""

    __slots__ = (
        "attributes",
        "end_ns",
        "error",
        "kind",
        "name",
        "parent_id",
        "span_id",
        "start_ns",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self,
        name: str,
        kind: int,
        trace: ActiveTrace,
        span_id: int,
        parent_id: int | None,
        start_ns: int,
        end_ns: int,
        attributes: list[Attribute],
        error: bool,
    ) -> None:
        self.name = name
        self.kind = kind
        self.trace_id = trace.trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.tracestate = trace.tracestate
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = attributes
        self.error = error


def service_name(node: NodeIdentity, configured: str) -> str:
    """The span's `service.name`: configured, else the node's cluster (Istio sets it
    to `<canonical service>.<namespace>`), else the app label."""
    if configured:
        return configured
    if node.cluster:
        return node.cluster
    return f"{node.app}.{node.namespace}"


class Tracer:
    """Tracing for one HTTP connection manager."""

    __slots__ = ("_node_attributes", "config", "exporter", "kind", "rng")

    def __init__(
        self,
        config: TracingConfig,
        direction: TrafficDirection,
        node: NodeIdentity,
        exporter: SpanExporter,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.exporter = exporter
        self.rng = rng
        outbound = direction is TrafficDirection.OUTBOUND and not config.spawn_upstream_span
        self.kind = SPAN_KIND_CLIENT if outbound else SPAN_KIND_SERVER
        self._node_attributes: list[Attribute] = [
            ("component", "proxy"),
            ("node_id", node.id),
            ("istio.canonical_service", node.app),
            ("istio.canonical_revision", node.version),
            ("istio.namespace", node.namespace),
            ("istio.mesh_id", node.trust_domain),
        ]

    def start(self, stream: Stream) -> ActiveTrace:
        """The request's trace: the incoming one continued, or a new one."""
        incoming = incoming_trace(stream.headers)
        rng = self.rng
        sampled = decide_sampled(incoming, self.config, rng.random() * 100.0)
        context = incoming.context
        bits = rng.getrandbits(192)  # one draw: a span id, and a trace id if one is new
        span_id = new_span_id(bits)
        if context is None or not context.trace_id:
            debug = context is not None and context.debug
            fresh = incoming is NO_TRACE
            trace_id = new_trace_id(bits >> 64)
            return ActiveTrace(trace_id, span_id, None, sampled, None, debug, not fresh)
        return ActiveTrace(
            context.trace_id, span_id, context.span_id, sampled, context.tracestate, context.debug
        )

    def inject(self, trace: ActiveTrace, headers: list[tuple[bytes, bytes]]) -> None:
        """Replace the request's trace headers with ones naming this proxy's span."""
        parent = trace.span_id
        span_id = parent
        if self.config.spawn_upstream_span:
            span_id = trace.upstream_span_id = new_span_id(self.rng.getrandbits(64))
        else:
            parent = trace.parent_id or 0
        outgoing = outgoing_headers(
            trace.trace_id, span_id, parent or None, trace.sampled, trace.tracestate, trace.debug
        )
        if trace.had_headers:
            replace_trace_headers(headers, outgoing)
        else:
            headers.extend(outgoing)

    def finish(self, stream: Stream) -> None:
        """Hand a sampled request's span(s) to the exporter."""
        trace = stream.trace
        if trace is None or not trace.sampled:
            return
        end_ns = time.time_ns()
        cluster = stream.cluster
        cluster_name = cluster.config.name if cluster is not None else None
        name = operation_name(cluster_name, stream.authority)
        code = stream.response_code
        error = code >= 500 or code == 0
        attributes = self._attributes(stream, cluster_name, code, error)
        exporter = self.exporter
        exporter.add(
            SpanRecord(
                name,
                self.kind,
                trace,
                trace.span_id,
                trace.parent_id,
                trace.start_ns,
                end_ns,
                attributes,
                error,
            )
        )
        upstream_id = trace.upstream_span_id
        if upstream_id is not None and stream.upstream_start:
            start_ns = trace.start_ns + int((stream.upstream_start - stream.start) * 1e9)
            host = stream.last_host
            upstream_attributes: list[Attribute] = [
                *self._node_attributes,
                ("upstream_cluster", cluster_name or "-"),
                ("upstream_address", str(host.address) if host is not None else "-"),
                ("http.status_code", code),
            ]
            exporter.add(
                SpanRecord(
                    name,
                    SPAN_KIND_CLIENT,
                    trace,
                    upstream_id,
                    trace.span_id,
                    start_ns,
                    end_ns,
                    upstream_attributes,
                    error,
                )
            )

    def _attributes(
        self, stream: Stream, cluster_name: str | None, code: int, error: bool
    ) -> list[Attribute]:
        conn = stream.conn
        user_agent = request_id = ""
        for header, value in stream.headers:
            if header == b"user-agent":
                user_agent = value.decode("latin-1")
            elif header == b"x-request-id":
                request_id = value.decode("latin-1")
        url = f"{conn.scheme.decode()}://{stream.authority}{stream.path}"
        flags = "-" if stream.flags is ResponseFlag.NONE else format_flags(stream.flags)
        attributes: list[Attribute] = [
            *self._node_attributes,
            ("http.method", stream.method.decode("latin-1")),
            ("http.url", url[: self.config.max_path_tag_length]),
            ("http.protocol", "HTTP/1.1" if conn.http11 else "HTTP/1.0"),
            ("http.status_code", code),
            ("response_flags", flags),
            ("upstream_cluster", cluster_name or "-"),
            ("upstream_cluster.name", cluster_name or "-"),
            ("peer.address", conn.remote_ip),
            ("downstream_cluster", "-"),
            ("user_agent", user_agent or "-"),
            ("request_size", stream.body_bytes),
            ("response_size", stream.response_bytes),
            ("guid:x-request-id", request_id or (stream.request_id or b"-").decode("ascii")),
        ]
        if error:
            attributes.append(("error", "true"))
        return attributes


def traced(
    record: Callable[[Stream], None], finish: Callable[[Stream], None]
) -> Callable[[Stream], None]:
    """A stream recorder that also finishes the stream's span (metrics first)."""

    def record_and_finish(stream: Stream) -> None:
        record(stream)
        finish(stream)

    return record_and_finish
