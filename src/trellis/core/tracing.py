"""Distributed tracing without I/O: trace context in headers, sampling, span names.

A request carries its trace context in W3C Trace Context (`traceparent`,
`tracestate`) or Zipkin's B3 headers (the multi-header `x-b3-*` form or the
single `b3` header). The proxy continues that trace, or starts one, records its
own span and passes the context on with its span as the parent, in both W3C and
B3 multi-header form (Envoy's OpenTelemetry tracer with the `tracecontext` and
`b3` propagators), so that applications using either library keep the trace.

The sampling decision travels with the trace: an incoming sampled flag is
honoured; without one, `random_sampling` decides. Everything here is a pure
function over headers and numbers; random draws come in as arguments.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

Headers = Sequence[tuple[bytes, bytes]]

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
B3_SINGLE = b"b3"
B3_TRACE_ID = b"x-b3-traceid"
B3_SPAN_ID = b"x-b3-spanid"
B3_PARENT_SPAN_ID = b"x-b3-parentspanid"
B3_SAMPLED = b"x-b3-sampled"
B3_FLAGS = b"x-b3-flags"
CLIENT_TRACE_ID = b"x-client-trace-id"
FORCE_TRACE = b"x-envoy-force-trace"

TRACE_HEADERS: frozenset[bytes] = frozenset(
    (
        TRACEPARENT,
        TRACESTATE,
        B3_SINGLE,
        B3_TRACE_ID,
        B3_SPAN_ID,
        B3_PARENT_SPAN_ID,
        B3_SAMPLED,
        B3_FLAGS,
    )
)
"""The headers the proxy reads and rewrites; everything else passes untouched."""

_READ = TRACE_HEADERS | {CLIENT_TRACE_ID, FORCE_TRACE}
_HEX = frozenset(b"0123456789abcdef")
_MAX_TRACESTATE = 512  # W3C: vendors may drop tracestate longer than this
_TRACE_ID_BITS = 128
_SPAN_ID_BITS = 64
MAX_PERCENT = 100.0


class TraceFormat(enum.Enum):
    """Which header form an incoming context came in."""

    W3C = "w3c"
    B3 = "b3"
    B3_SINGLE = "b3-single"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """An incoming trace: ids as integers, `sampled` None when the sender left it open."""

    trace_id: int
    span_id: int
    sampled: bool | None
    tracestate: bytes | None = None
    debug: bool = False
    source: TraceFormat = TraceFormat.W3C


@dataclass(frozen=True, slots=True)
class IncomingTrace:
    """What a request's headers say about tracing: its context (None: start a trace),
    whether the client asked for it (`x-client-trace-id`) or forced it
    (`x-envoy-force-trace`)."""

    context: TraceContext | None
    client_requested: bool = False
    forced: bool = False


NO_TRACE = IncomingTrace(None)


@dataclass(frozen=True, slots=True)
class TracingProvider:
    """Where spans go: OTLP over gRPC (`TraceService/Export`) or over HTTP (protobuf
    POSTed to `path`), to the endpoints of `cluster`."""

    cluster: str
    grpc: bool = True
    path: str = "/v1/traces"  # OTLP/HTTP only
    authority: str = ""  # OTLP/HTTP `Host`; empty: the endpoint's address
    timeout: float = 5.0
    service_name: str = ""  # empty: the node's cluster (the workload's canonical service)


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """An HTTP connection manager's `tracing` (percentages are 0-100)."""

    provider: TracingProvider
    random_sampling: float = 100.0
    client_sampling: float = 100.0
    overall_sampling: float = 100.0
    spawn_upstream_span: bool = False
    max_path_tag_length: int = 256


def _hex_id(value: bytes, length: int) -> int | None:
    """A lower-case hex id of exactly `length` digits that is not all zeros."""
    if len(value) != length or not _HEX.issuperset(value):
        return None
    number = int(value, 16)
    return number or None


def _hex_id_lenient(value: bytes, lengths: tuple[int, ...]) -> int | None:
    value = value.strip().lower()
    if len(value) not in lengths:
        return None
    return _hex_id(value, len(value))


def parse_traceparent(value: bytes) -> TraceContext | None:
    """W3C `version-traceid-parentid-flags`; None when malformed (the trace restarts)."""
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == b"ff":
        return None
    if parts[0] == b"00" and len(parts) != 4:
        return None
    trace_id = _hex_id(parts[1], 32)
    span_id = _hex_id(parts[2], 16)
    flags = parts[3]
    if trace_id is None or span_id is None or len(flags) != 2 or not _HEX.issuperset(flags):
        return None
    if not _HEX.issuperset(parts[0]):
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def _b3_sampled(value: bytes) -> tuple[bool | None, bool]:
    """(sampled, debug) from a B3 sampling state: `1`/`true`, `0`/`false`, `d`."""
    value = value.strip().lower()
    if value in (b"1", b"true"):
        return True, False
    if value in (b"0", b"false"):
        return False, False
    if value == b"d":
        return True, True
    return None, False


def parse_b3_single(value: bytes) -> TraceContext | None:
    """`b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`, or only a sampling state."""
    parts = value.strip().split(b"-")
    if len(parts) == 1:
        return None  # a bare decision ("0"/"1"/"d") is read by `incoming_trace`
    if len(parts) > 4:
        return None
    trace_id = _hex_id_lenient(parts[0], (16, 32))
    span_id = _hex_id_lenient(parts[1], (16,))
    if trace_id is None or span_id is None:
        return None
    sampled, debug = _b3_sampled(parts[2]) if len(parts) >= 3 else (None, False)
    return TraceContext(trace_id, span_id, sampled, debug=debug, source=TraceFormat.B3_SINGLE)


def _b3_multi(found: dict[bytes, bytes]) -> TraceContext | None:
    trace = found.get(B3_TRACE_ID)
    span = found.get(B3_SPAN_ID)
    if trace is None or span is None:
        return None
    trace_id = _hex_id_lenient(trace, (16, 32))
    span_id = _hex_id_lenient(span, (16,))
    if trace_id is None or span_id is None:
        return None
    debug = found.get(B3_FLAGS, b"").strip() == b"1"
    sampled: bool | None = True if debug else None
    if not debug and B3_SAMPLED in found:
        sampled, _ = _b3_sampled(found[B3_SAMPLED])
    return TraceContext(trace_id, span_id, sampled, debug=debug, source=TraceFormat.B3)


def incoming_trace(headers: Headers) -> IncomingTrace:
    """The trace context of a request: W3C first, then single `b3`, then `x-b3-*`.

    A malformed context is ignored (the proxy starts a new trace), as the W3C
    specification asks. A B3 sampling decision without ids (`x-b3-sampled: 0`
    alone, or `b3: 0`) still decides sampling for the trace the proxy starts.
    """
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _READ and name not in found:
            found[name] = value
    if not found:
        return NO_TRACE
    context = None
    if TRACEPARENT in found:
        context = parse_traceparent(found[TRACEPARENT])
        if context is not None and TRACESTATE in found:
            state = found[TRACESTATE].strip()
            if state and len(state) <= _MAX_TRACESTATE:
                context = TraceContext(context.trace_id, context.span_id, context.sampled, state)
    if context is None and B3_SINGLE in found:
        context = parse_b3_single(found[B3_SINGLE])
        if context is None:
            sampled, debug = _b3_sampled(found[B3_SINGLE])
            if sampled is not None:
                context = TraceContext(0, 0, sampled, debug=debug, source=TraceFormat.B3_SINGLE)
    if context is None:
        context = _b3_multi(found)
        if context is None and (B3_SAMPLED in found or B3_FLAGS in found):
            debug = found.get(B3_FLAGS, b"").strip() == b"1"
            sampled, _ = _b3_sampled(found.get(B3_SAMPLED, b"1" if debug else b""))
            if sampled is not None:
                context = TraceContext(0, 0, sampled, debug=debug, source=TraceFormat.B3)
    return IncomingTrace(
        context,
        client_requested=CLIENT_TRACE_ID in found,
        forced=FORCE_TRACE in found,
    )


def decide_sampled(incoming: IncomingTrace, config: TracingConfig, roll: float) -> bool:
    """Whether this proxy samples the request; `roll` is uniform in [0, 100).

    In Envoy's order: a forced trace, then a client-requested one (within
    `client_sampling`), then the sender's decision, then `random_sampling`;
    `overall_sampling` caps the result. One roll serves all the comparisons,
    so a lower percentage always samples a subset of a higher one.
    """
    context = incoming.context
    if incoming.forced or (incoming.client_requested and roll < config.client_sampling):
        sampled = True
    elif context is not None and context.sampled is not None:
        sampled = context.sampled
    else:
        sampled = roll < config.random_sampling
    return sampled and (roll < config.overall_sampling or (context is not None and context.debug))


def new_trace_id(bits: int) -> int:
    """A trace id from `bits` (128 random bits); never zero (zero means invalid)."""
    return (bits & ((1 << _TRACE_ID_BITS) - 1)) or 1


def new_span_id(bits: int) -> int:
    """A span id from `bits` (64 random bits); never zero."""
    return (bits & ((1 << _SPAN_ID_BITS) - 1)) or 1


def outgoing_headers(
    trace_id: int,
    span_id: int,
    parent_id: int | None,
    sampled: bool,
    tracestate: bytes | None = None,
    debug: bool = False,
) -> list[tuple[bytes, bytes]]:
    """The context sent upstream: `span_id` (the proxy's span) is the parent of
    the next hop's. W3C `traceparent`/`tracestate` and B3 multi-header."""
    trace_hex = b"%032x" % trace_id
    span_hex = b"%016x" % span_id
    out = [
        (TRACEPARENT, b"00-%s-%s-%s" % (trace_hex, span_hex, b"01" if sampled else b"00")),
    ]
    if tracestate:
        out.append((TRACESTATE, tracestate))
    out.append((B3_TRACE_ID, trace_hex))
    out.append((B3_SPAN_ID, span_hex))
    if parent_id:
        out.append((B3_PARENT_SPAN_ID, b"%016x" % parent_id))
    if debug:
        out.append((B3_FLAGS, b"1"))
    else:
        out.append((B3_SAMPLED, b"1" if sampled else b"0"))
    return out


def replace_trace_headers(
    headers: list[tuple[bytes, bytes]], outgoing: Sequence[tuple[bytes, bytes]]
) -> None:
    """Drop any incoming trace headers from `headers` (in place) and append `outgoing`."""
    if any(name in TRACE_HEADERS for name, _ in headers):
        headers[:] = [item for item in headers if item[0] not in TRACE_HEADERS]
    headers.extend(outgoing)


def operation_name(cluster_name: str | None, authority: str) -> str:
    """Istio's span name: `host:port/*` of the service the request went to.

    From an Istio-style cluster name (`outbound|8080||cart.shop.svc.cluster.local`)
    when there is one; inbound clusters (`inbound|8080||`) name only the port, so
    the request's authority gives the host; without a cluster, the authority.
    """
    host = authority
    if cluster_name:
        parts = cluster_name.split("|")
        if len(parts) == 4 and parts[0] in ("outbound", "inbound") and parts[1].isdigit():
            name = parts[3] or _strip_port(authority)
            host = f"{name}:{parts[1]}"
    return f"{host}/*"


def _strip_port(authority: str) -> str:
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end > 0 else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def check_percent(value: float) -> float:
    """`value` if it is a percentage; ValueError otherwise."""
    if not 0.0 <= value <= MAX_PERCENT:
        raise ValueError(f"must be between 0 and 100, got {value}")
    return value
