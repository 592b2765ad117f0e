"""What the shop's sidecars report, turned into one row per edge (standard library only).

Every sidecar serves Istio's metrics on its admin port (`/stats/prometheus`).
The rows come from the series its *inbound* side records
(`reporter="destination"`): the receiving sidecar knows the caller's identity
from its mTLS certificate (`source_principal`), its own workload and version,
and whether the connection was mutual TLS (`connection_security_policy`).

A `Snapshot` holds the counters of all sidecars at one moment; `window(before,
after)` gives each edge's requests, response codes and latency histogram in
between (counters that went backwards, a restarted sidecar's, count from zero),
and `EdgeStats` turns that into requests/s, success rate and p50/p99 the way
Prometheus' `rate()` and `histogram_quantile()` would.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

REQUESTS = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"
MUTUAL_TLS = "mutual_tls"
UNKNOWN = "unknown"

_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_WANTED = (REQUESTS + "{", DURATION_BUCKET + "{")


@dataclass(frozen=True, slots=True, order=True)
class Edge:
    """Who called whom: the caller's identity, the receiving workload and its version."""

    source: str
    destination: str
    version: str
    service: str

    @property
    def label(self) -> str:
        return f"{self.source} → {self.destination}"


@dataclass(frozen=True, slots=True)
class CallerView:
    """What a caller's sidecar saw of a service, after its retries (`reporter="source"`)."""

    source: str
    service: str
    code: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The counters of every sidecar at one moment (`taken`: time.monotonic())."""

    taken: float
    requests: Mapping[tuple[Edge, str, str], float] = field(default_factory=dict)
    """(edge, response_code, connection_security_policy) -> requests."""
    buckets: Mapping[tuple[Edge, float], float] = field(default_factory=dict)
    """(edge, upper bound in ms) -> requests that took at most that long."""
    callers: Mapping[CallerView, float] = field(default_factory=dict)


def parse_series(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of the istio request series in a Prometheus text exposition."""
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        match = _SERIES.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        yield name, {key: _unescape(raw) for key, raw in _LABEL.findall(labels)}, number


def _unescape(raw: str) -> str:
    return raw.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def caller_of(labels: Mapping[str, str]) -> str:
    """The caller: its service account (from its SPIFFE principal), else its workload name."""
    principal = labels.get("source_principal", "")
    if "/sa/" in principal:
        return principal.rsplit("/sa/", 1)[1]
    workload = labels.get("source_workload", "")
    return workload if workload and workload != UNKNOWN else UNKNOWN


def edge_of(labels: Mapping[str, str]) -> Edge:
    version = labels.get("destination_version", UNKNOWN)
    service = labels.get("destination_app") or labels.get("destination_service_name", UNKNOWN)
    return Edge(
        source=caller_of(labels),
        destination=labels.get("destination_workload", UNKNOWN),
        version="-" if version == UNKNOWN else version,
        service=service,
    )


def snapshot(texts: Iterable[str], taken: float) -> Snapshot:
    """One snapshot from the `/stats/prometheus` text of every sidecar."""
    requests: dict[tuple[Edge, str, str], float] = defaultdict(float)
    buckets: dict[tuple[Edge, float], float] = defaultdict(float)
    callers: dict[CallerView, float] = defaultdict(float)
    for text in texts:
        for name, labels, value in parse_series(text):
            reporter = labels.get("reporter")
            if name == REQUESTS and reporter == "source":
                view = CallerView(
                    caller_of(labels),
                    labels.get("destination_service_name", UNKNOWN),
                    labels.get("response_code", ""),
                )
                callers[view] += value
            elif reporter != "destination":
                continue
            elif name == REQUESTS:
                key = (
                    edge_of(labels),
                    labels.get("response_code", ""),
                    labels.get("connection_security_policy", UNKNOWN),
                )
                requests[key] += value
            else:
                bound = math.inf if labels.get("le") == "+Inf" else float(labels.get("le", "nan"))
                if not math.isnan(bound):
                    buckets[(edge_of(labels), bound)] += value
    return Snapshot(taken, dict(requests), dict(buckets), dict(callers))


def _delta(after: float, before: float | None) -> float:
    """A counter's increase; a counter that went backwards was reset and counts from zero."""
    if before is None or after < before:
        return after
    return after - before


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile`: linear interpolation inside the bucket of rank q."""
    ordered = sorted(buckets)
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


@dataclass(frozen=True, slots=True)
class EdgeStats:
    """One edge over a window of `seconds`."""

    edge: Edge
    seconds: float
    codes: Mapping[str, float]
    mutual_tls: float
    buckets: tuple[tuple[float, float], ...]

    @property
    def requests(self) -> float:
        return sum(self.codes.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> float:
        """Requests answered 5xx (what Istio's dashboards count as failures)."""
        return sum(n for code, n in self.codes.items() if code.startswith("5"))

    @property
    def ok(self) -> float:
        """Requests answered 2xx."""
        return sum(n for code, n in self.codes.items() if code.startswith("2"))

    @property
    def success(self) -> float | None:
        """The share of requests not answered 5xx; None without requests."""
        total = self.requests
        return (total - self.errors) / total if total else None

    @property
    def mtls(self) -> str:
        """'yes' when every request came over mutual TLS, 'no' when none, else 'partly'."""
        total = self.requests
        if not total:
            return "-"
        if self.mutual_tls >= total:
            return "yes"
        return "no" if self.mutual_tls == 0 else "partly"

    def percentile(self, q: float) -> float | None:
        return quantile(q, self.buckets)


def window(before: Snapshot | None, after: Snapshot) -> dict[Edge, EdgeStats]:
    """Each edge's traffic between two snapshots (since the start when `before` is None)."""
    seconds = after.taken - before.taken if before is not None else 0.0
    codes: dict[Edge, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    mtls: dict[Edge, float] = defaultdict(float)
    for key, value in after.requests.items():
        edge, code, policy = key
        increase = _delta(value, before.requests.get(key) if before else None)
        codes[edge][code] += increase
        if policy == MUTUAL_TLS:
            mtls[edge] += increase
    histograms: dict[Edge, list[tuple[float, float]]] = defaultdict(list)
    for (edge, bound), value in after.buckets.items():
        previous = before.buckets.get((edge, bound)) if before else None
        histograms[edge].append((bound, _delta(value, previous)))
    return {
        edge: EdgeStats(edge, seconds, dict(by_code), mtls[edge], tuple(histograms[edge]))
        for edge, by_code in codes.items()
    }


def caller_window(
    before: Snapshot | None, after: Snapshot, source: str, service: str
) -> dict[str, float]:
    """Response codes a caller's sidecar returned for `service` (after retries) in a window."""
    result: dict[str, float] = defaultdict(float)
    for view, value in after.callers.items():
        if view.source == source and view.service == service:
            result[view.code] += _delta(value, before.callers.get(view) if before else None)
    return dict(result)


def canary_share(stats: Iterable[EdgeStats], service: str) -> dict[str, float]:
    """Requests of `service` answered 2xx, by version: how the traffic split really went."""
    share: dict[str, float] = defaultdict(float)
    for item in stats:
        if item.edge.service == service:
            share[item.edge.version] += item.ok
    return dict(sorted(share.items()))
