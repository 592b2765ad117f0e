"""The proxy's metrics model: Istio's standard metrics and Envoy's response flags.

Sans-IO and single-threaded: the runtime calls the recorders on the event loop
and the admin server calls the renderers. Label objects (`PeerLabels`) are
built once per listener/cluster/peer combination; a request only passes its
status code, flags and numbers. Envoy-style counters and gauges
(`StatsRegistry`) live in `trellis.core.prometheus` and are re-exported here.
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from dataclasses import dataclass, field, fields

from trellis.core.prometheus import (
    ENVOY_DEFAULT_BUCKETS,
    CounterCell,
    GaugeCell,
    Histogram,
    Labels,
    StatsRegistry,
    family_header,
    label_pairs,
)

__all__ = [
    "ENVOY_DEFAULT_BUCKETS",
    "NO_FLAGS",
    "PEER_LABEL_NAMES",
    "CounterCell",
    "GaugeCell",
    "HttpSeries",
    "IstioMetrics",
    "PeerLabels",
    "ResponseFlag",
    "StatsRegistry",
    "format_flags",
    "parse_flags",
]

# --- response flags ------------------------------------------------------------


class ResponseFlag(enum.Flag):
    """Envoy's response flags, declared in Envoy's bit order (which is also its print order)."""

    NONE = 0
    FAILED_LOCAL_HEALTH_CHECK = enum.auto()  # LH
    NO_HEALTHY_UPSTREAM = enum.auto()  # UH
    UPSTREAM_REQUEST_TIMEOUT = enum.auto()  # UT
    LOCAL_RESET = enum.auto()  # LR
    UPSTREAM_REMOTE_RESET = enum.auto()  # UR
    UPSTREAM_CONNECTION_FAILURE = enum.auto()  # UF
    UPSTREAM_CONNECTION_TERMINATION = enum.auto()  # UC
    UPSTREAM_OVERFLOW = enum.auto()  # UO
    NO_ROUTE_FOUND = enum.auto()  # NR
    DELAY_INJECTED = enum.auto()  # DI
    FAULT_INJECTED = enum.auto()  # FI
    RATE_LIMITED = enum.auto()  # RL
    UNAUTHORIZED_EXTERNAL_SERVICE = enum.auto()  # UAEX
    RATE_LIMIT_SERVICE_ERROR = enum.auto()  # RLSE
    DOWNSTREAM_CONNECTION_TERMINATION = enum.auto()  # DC
    UPSTREAM_RETRY_LIMIT_EXCEEDED = enum.auto()  # URX
    STREAM_IDLE_TIMEOUT = enum.auto()  # SI
    INVALID_ENVOY_REQUEST_HEADERS = enum.auto()  # IH
    DOWNSTREAM_PROTOCOL_ERROR = enum.auto()  # DPE
    UPSTREAM_MAX_STREAM_DURATION_REACHED = enum.auto()  # UMSDR
    RESPONSE_FROM_CACHE_FILTER = enum.auto()  # RFCF
    NO_FILTER_CONFIG_FOUND = enum.auto()  # NFCF
    DURATION_TIMEOUT = enum.auto()  # DT
    UPSTREAM_PROTOCOL_ERROR = enum.auto()  # UPE
    NO_CLUSTER_FOUND = enum.auto()  # NC
    OVERLOAD_MANAGER = enum.auto()  # OM
    DNS_RESOLUTION_FAILED = enum.auto()  # DF
    DROP_OVERLOAD = enum.auto()  # DO


# Short codes, index i belongs to bit 1 << i.
_SHORT_CODES = (
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
    "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO",
)  # fmt: skip

NO_FLAGS = "-"


def format_flags(flags: ResponseFlag) -> str:
    """Envoy's `%RESPONSE_FLAGS%` text: short codes joined by "," in Envoy's order, "-" if none."""
    value = flags.value
    if not value:
        return NO_FLAGS
    return ",".join(code for bit, code in enumerate(_SHORT_CODES) if value >> bit & 1)


def parse_flags(text: str) -> ResponseFlag:
    """The inverse of `format_flags`; raises ValueError on an unknown code."""
    result = ResponseFlag.NONE
    if text in ("", NO_FLAGS):
        return result
    for code in text.split(","):
        try:
            bit = _SHORT_CODES.index(code)
        except ValueError:
            raise ValueError(f"unknown response flag {code!r}") from None
        result |= ResponseFlag(1 << bit)
    return result


# --- Istio standard metrics ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLabels:
    """Every Istio standard label except the per-request `response_code`,
    `grpc_response_status` and `response_flags`.

    Field order is the order Istio's stats filter emits. Defaults are Istio's
    fallbacks for unknown peers. The hash is computed once, so using an
    instance as a dictionary key on the hot path costs no more than a string.
    """

    reporter: str  # "source" (outbound), "destination" (inbound) or "waypoint"
    source_workload: str = "unknown"
    source_canonical_service: str = "unknown"
    source_canonical_revision: str = "latest"
    source_workload_namespace: str = "unknown"
    source_principal: str = "unknown"
    source_app: str = "unknown"
    source_version: str = "unknown"
    source_cluster: str = "unknown"
    destination_workload: str = "unknown"
    destination_workload_namespace: str = "unknown"
    destination_principal: str = "unknown"
    destination_app: str = "unknown"
    destination_version: str = "unknown"
    destination_service: str = "unknown"
    destination_canonical_service: str = "unknown"
    destination_canonical_revision: str = "latest"
    destination_service_name: str = "unknown"
    destination_service_namespace: str = "unknown"
    destination_cluster: str = "unknown"
    request_protocol: str = "http"  # "http", "grpc" or "tcp"
    connection_security_policy: str = "unknown"  # "mutual_tls", "none" or "unknown"
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self.values()))

    def __hash__(self) -> int:
        return self._hash

    def values(self) -> tuple[str, ...]:
        """The label values in emission order."""
        return tuple(getattr(self, name) for name in PEER_LABEL_NAMES)

    def items(self) -> Labels:
        """(label, value) pairs in emission order."""
        return tuple(zip(PEER_LABEL_NAMES, self.values(), strict=True))


PEER_LABEL_NAMES: tuple[str, ...] = tuple(f.name for f in fields(PeerLabels) if f.init)

_HTTP_FAMILIES = (
    ("istio_requests_total", "counter", "Requests handled by the proxy."),
    ("istio_request_duration_milliseconds", "histogram", "Request duration in milliseconds."),
    ("istio_request_bytes", "histogram", "Request size in bytes."),
    ("istio_response_bytes", "histogram", "Response size in bytes."),
)
_TCP_FAMILIES = (
    ("istio_tcp_sent_bytes_total", "counter", "Bytes sent to the downstream on TCP connections."),
    ("istio_tcp_received_bytes_total", "counter", "Bytes received from the downstream on TCP."),
    ("istio_tcp_connections_opened_total", "counter", "TCP connections opened."),
    ("istio_tcp_connections_closed_total", "counter", "TCP connections closed."),
)


class HttpSeries:
    """The four HTTP metrics of one label set (peer, code, flags, gRPC status)."""

    __slots__ = ("bounds", "duration", "request_bytes", "requests", "response_bytes")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.requests = 0
        self.duration = Histogram(bounds)
        self.request_bytes = Histogram(bounds)
        self.response_bytes = Histogram(bounds)

    def observe(self, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        """Count one request (Histogram.observe inlined: this runs once per request)."""
        bounds = self.bounds
        self.requests += 1
        histogram = self.duration
        histogram.counts[bisect_left(bounds, duration_ms)] += 1
        histogram.sum += duration_ms
        histogram = self.request_bytes
        histogram.counts[bisect_left(bounds, request_bytes)] += 1
        histogram.sum += request_bytes
        histogram = self.response_bytes
        histogram.counts[bisect_left(bounds, response_bytes)] += 1
        histogram.sum += response_bytes


class _TcpSeries:
    __slots__ = ("closed", "opened", "received", "sent")

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.sent = 0
        self.received = 0


class IstioMetrics:
    """Istio's standard request and TCP metrics, rendered as Prometheus text.

    HTTP series carry `response_code`, `grpc_response_status` (empty unless
    gRPC) and `response_flags`. TCP series carry `response_flags` but no
    `response_code` or `grpc_response_status`, as Istio's stats filter does.
    Istio settles a TCP connection's labels once, so give all four TCP
    recorders the same flags for one connection (report at close if unsure).
    """

    __slots__ = ("_bounds", "_http", "_tcp")

    def __init__(self, buckets: tuple[float, ...] = ENVOY_DEFAULT_BUCKETS) -> None:
        self._bounds = buckets
        self._http: dict[tuple[PeerLabels, int, str, int | None], HttpSeries] = {}
        self._tcp: dict[tuple[PeerLabels, str], _TcpSeries] = {}

    def record_http(
        self,
        peer: PeerLabels,
        response_code: int,
        response_flags: str,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        *,
        grpc_status: int | None = None,
    ) -> None:
        """Count one finished HTTP request or gRPC call.

        Sizes are what Istio records: bytes on the downstream wire, headers included.
        """
        self.http_series(peer, response_code, response_flags, grpc_status).observe(
            duration_ms, request_bytes, response_bytes
        )

    def http_series(
        self,
        peer: PeerLabels,
        response_code: int,
        response_flags: str,
        grpc_status: int | None = None,
    ) -> HttpSeries:
        """The series of one label set, created on first use. A caller that records
        often may keep it under a cheaper key of its own and call `observe`."""
        key = (peer, response_code, response_flags, grpc_status)
        series = self._http.get(key)
        if series is None:
            series = self._http[key] = HttpSeries(self._bounds)
        return series

    def _tcp_series(self, peer: PeerLabels, response_flags: str) -> _TcpSeries:
        key = (peer, response_flags)
        series = self._tcp.get(key)
        if series is None:
            series = self._tcp[key] = _TcpSeries()
        return series

    def tcp_opened(self, peer: PeerLabels, response_flags: str = NO_FLAGS) -> None:
        self._tcp_series(peer, response_flags).opened += 1

    def tcp_closed(self, peer: PeerLabels, response_flags: str = NO_FLAGS) -> None:
        self._tcp_series(peer, response_flags).closed += 1

    def tcp_bytes(
        self, peer: PeerLabels, sent: int, received: int, response_flags: str = NO_FLAGS
    ) -> None:
        """Add bytes sent to / received from the downstream since the last report."""
        series = self._tcp_series(peer, response_flags)
        series.sent += sent
        series.received += received

    def render_prometheus(self) -> str:
        """All families with at least one series, in Prometheus text format 0.0.4."""
        peer_text: dict[PeerLabels, tuple[str, str]] = {}

        def texts(peer: PeerLabels) -> tuple[str, str]:
            cached = peer_text.get(peer)
            if cached is None:
                items = peer.items()
                cached = peer_text[peer] = (label_pairs(items[:-1]), label_pairs(items[-1:]))
            return cached

        out: list[str] = []
        if self._http:
            rows = []
            for (peer, code, flags, grpc), series in self._http.items():
                head, tail = texts(peer)
                grpc_text = "" if grpc is None else str(grpc)
                middle = label_pairs(
                    (("response_code", str(code)), ("grpc_response_status", grpc_text),
                     ("response_flags", flags))
                )  # fmt: skip
                rows.append((f"{head},{middle},{tail}", series))
            name, kind, help_text = _HTTP_FAMILIES[0]
            out.append(family_header(name, kind, help_text))
            out.extend(f"{name}{{{pairs}}} {series.requests}\n" for pairs, series in rows)
            for (name, kind, help_text), attr in zip(
                _HTTP_FAMILIES[1:], ("duration", "request_bytes", "response_bytes"), strict=True
            ):
                out.append(family_header(name, kind, help_text))
                for pairs, series in rows:
                    histogram: Histogram = getattr(series, attr)
                    histogram.render(name, pairs, out)
        if self._tcp:
            tcp_rows = []
            for (peer, flags), tcp in self._tcp.items():
                head, tail = texts(peer)
                pairs = f"{head},{label_pairs((('response_flags', flags),))},{tail}"
                tcp_rows.append((pairs, (tcp.sent, tcp.received, tcp.opened, tcp.closed)))
            for index, (name, kind, help_text) in enumerate(_TCP_FAMILIES):
                out.append(family_header(name, kind, help_text))
                out.extend(f"{name}{{{pairs}}} {values[index]}\n" for pairs, values in tcp_rows)
        return "".join(out)
