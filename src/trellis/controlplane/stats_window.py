"""What happened between scrapes of the mesh: per-edge traffic and its golden signals.

Pure. A `Sample` holds every sidecar's counters (`stats_parse`) at one moment;
`window(samples)` gives each edge's requests by code, mTLS share, latency
histogram and TCP counts from the first sample to the last, the way
Prometheus' `rate()` would: each sidecar's counters are compared with its own
previous scrape, so a counter that went backwards was reset and counts from
zero, a sidecar's traffic counts from its second scrape (one point is no
rate), and a missed scrape loses nothing.

Each request is counted once: from the receiving side's series
(`reporter="destination"`), which know the caller's identity under mTLS and
the security policy; a service no receiving sidecar reports on (outside the
mesh, or its sidecar not scraped) is counted from its callers' series
(`reporter="source"`) instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from trellis.controlplane.stats_parse import MUTUAL_TLS, EdgeKey, Metric, SeriesKey

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class Sample:
    """Every scraped sidecar's counters at `taken` (seconds), keyed by proxy id."""

    taken: float
    proxies: Mapping[str, Mapping[SeriesKey, float]] = field(default_factory=dict)


@dataclass(slots=True)
class Traffic:
    """Counts over a window, for one edge or a merge of several."""

    codes: dict[str, float] = field(default_factory=dict)
    mutual_tls: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    tcp_opened: float = 0.0
    tcp_bytes: float = 0.0

    def add(self, key: SeriesKey, increase: float) -> None:
        match key.metric:
            case Metric.REQUESTS:
                self.codes[key.code] = self.codes.get(key.code, 0.0) + increase
                if key.policy == MUTUAL_TLS:
                    self.mutual_tls += increase
            case Metric.DURATION_BUCKET:
                assert key.le is not None
                self.buckets[key.le] = self.buckets.get(key.le, 0.0) + increase
            case Metric.TCP_OPENED:
                self.tcp_opened += increase
            case Metric.TCP_SENT | Metric.TCP_RECEIVED:
                self.tcp_bytes += increase

    def merge(self, other: Traffic) -> None:
        for code, count in other.codes.items():
            self.codes[code] = self.codes.get(code, 0.0) + count
        for bound, count in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + count
        self.mutual_tls += other.mutual_tls
        self.tcp_opened += other.tcp_opened
        self.tcp_bytes += other.tcp_bytes

    @property
    def requests(self) -> float:
        return sum(self.codes.values())

    @property
    def errors(self) -> float:
        """Requests answered 5xx: what Istio's dashboards count as failures."""
        return sum(count for code, count in self.codes.items() if code.startswith("5"))


@dataclass(frozen=True, slots=True)
class Window:
    """Each edge's traffic over `seconds` ending at `end`."""

    seconds: float
    end: float
    edges: Mapping[EdgeKey, Traffic]


@dataclass(frozen=True, slots=True)
class Signals:
    """The golden signals of some traffic over a window; None where there is nothing to say."""

    requests: float
    rps: float
    errors: float
    success: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    mtls: str
    tcp_connections_per_second: float
    tcp_bytes_per_second: float

    def to_json(self) -> dict[str, object]:
        return {
            "requests": round(self.requests, 3),
            "rps": round(self.rps, 3),
            "errors": round(self.errors, 3),
            "success": None if self.success is None else round(self.success, 5),
            "p50": _ms(self.p50),
            "p90": _ms(self.p90),
            "p99": _ms(self.p99),
            "mtls": self.mtls,
            "tcpConnectionsPerSecond": round(self.tcp_connections_per_second, 3),
            "tcpBytesPerSecond": round(self.tcp_bytes_per_second, 1),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _increase(after: float, before: float | None) -> float:
    """A counter's increase; one that went backwards was reset and counts from zero."""
    if before is None or after < before:
        return after
    return after - before


def deltas(samples: Sequence[Sample]) -> dict[SeriesKey, float]:
    """Each series' increase over `samples` (oldest first), summed over the sidecars.

    Every sidecar's scrape is compared with its own previous one in `samples`.
    """
    increases: dict[SeriesKey, float] = {}
    last: dict[str, Mapping[SeriesKey, float]] = {}
    for sample in samples:
        for proxy, counters in sample.proxies.items():
            previous = last.get(proxy)
            last[proxy] = counters
            if previous is None:
                continue
            for key, value in counters.items():
                increases[key] = increases.get(key, 0.0) + _increase(value, previous.get(key))
    return increases


def _destination_reported(increases: Iterable[SeriesKey]) -> set[tuple[str, str]]:
    return {
        (key.edge.service, key.edge.service_namespace)
        for key in increases
        if key.reporter == "destination"
    }


def window(samples: Sequence[Sample]) -> Window:
    """Each edge's traffic from the first to the last of `samples`, each request counted once
    (module docstring). Empty with fewer than two samples."""
    if len(samples) < 2:
        return Window(0.0, samples[-1].taken if samples else 0.0, {})
    increases = deltas(samples)
    reported = _destination_reported(increases)
    edges: dict[EdgeKey, Traffic] = {}
    for key, increase in increases.items():
        if key.reporter == "destination":
            pass
        elif key.reporter != "source" or (key.edge.service, key.edge.service_namespace) in reported:
            continue
        traffic = edges.get(key.edge)
        if traffic is None:
            traffic = edges[key.edge] = Traffic()
        traffic.add(key, increase)
    return Window(max(0.0, samples[-1].taken - samples[0].taken), samples[-1].taken, edges)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' `histogram_quantile`: linear interpolation inside the bucket of rank q.

    `buckets` maps upper bounds to cumulative counts. None without observations;
    a rank in the +Inf bucket answers the highest finite bound.
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def mtls_state(traffic: Traffic) -> str:
    """ "yes" when every request came over mutual TLS, "no" when none did, else "partly";
    "-" without requests."""
    total = traffic.requests
    if total <= 0:
        return "-"
    if traffic.mutual_tls >= total:
        return "yes"
    return "no" if traffic.mutual_tls <= 0 else "partly"


def signals(traffic: Traffic, seconds: float) -> Signals:
    """Rates, success share, latency quantiles (ms) and mTLS of `traffic` over `seconds`."""
    total = traffic.requests
    per_second = 1.0 / seconds if seconds > 0 else 0.0
    p50, p90, p99 = (quantile(q, traffic.buckets) for q in QUANTILES)
    return Signals(
        requests=total,
        rps=total * per_second,
        errors=traffic.errors,
        success=(total - traffic.errors) / total if total > 0 else None,
        p50=p50,
        p90=p90,
        p99=p99,
        mtls=mtls_state(traffic),
        tcp_connections_per_second=traffic.tcp_opened * per_second,
        tcp_bytes_per_second=traffic.tcp_bytes * per_second,
    )


def recent(samples: Sequence[Sample], span: float) -> list[Sample]:
    """The samples of the last `span` seconds (from the oldest at most `span` older than the
    newest); at least the last two when there are two."""
    if not samples:
        return []
    end = samples[-1].taken
    start = len(samples) - 1
    while start > 0 and end - samples[start - 1].taken <= span + 1e-6:
        start -= 1
    return list(samples[min(start, max(0, len(samples) - 2)) :])
