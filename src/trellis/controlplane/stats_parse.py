"""The Istio series of a sidecar's `/stats/prometheus`, reduced to what the dashboard needs.

Pure: text in, counters out. A sidecar exposes hundreds of label combinations;
`parse_counters` keeps only the request, duration-histogram and TCP series and
reduces each one's labels to a `SeriesKey`: which metric, which side reported
it, the edge (`EdgeKey`: caller -> receiving workload, the service and its
version), the response code, the connection's security policy and, for
histogram buckets, the upper bound.

Names are derived robustly because peers do not always know each other: the
caller is its `source_workload` when known, else the service account of its
SPIFFE principal (`spiffe://TD/ns/NS/sa/SA`, known to the receiver under
mTLS), else "unknown"; the receiving side likewise from `destination_*`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

UNKNOWN = "unknown"
MUTUAL_TLS = "mutual_tls"

_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE = re.compile(r"\\[\\\"n]")


class Metric(StrEnum):
    """The series kept, by their Prometheus names."""

    REQUESTS = "istio_requests_total"
    DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"
    TCP_OPENED = "istio_tcp_connections_opened_total"
    TCP_SENT = "istio_tcp_sent_bytes_total"
    TCP_RECEIVED = "istio_tcp_received_bytes_total"


_METRICS = {metric.value: metric for metric in Metric}
_PREFIXES = tuple(f"{metric.value}{{" for metric in Metric)


@dataclass(frozen=True, slots=True, order=True)
class EdgeKey:
    """Who called whom: caller workload -> receiving workload, through `service`."""

    source: str
    source_namespace: str
    destination: str
    destination_namespace: str
    service: str
    service_namespace: str
    version: str
    protocol: str

    def touches(self, namespace: str) -> bool:
        """Whether either end, or the service, is in `namespace`."""
        return namespace in (
            self.source_namespace,
            self.destination_namespace,
            self.service_namespace,
        )


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One series, reduced: `le` is the bucket bound (ms) of histogram buckets, else None."""

    metric: Metric
    reporter: str
    edge: EdgeKey
    code: str = ""
    policy: str = UNKNOWN
    le: float | None = None


def _unescape(raw: str) -> str:
    return _ESCAPE.sub(lambda match: _ESCAPES[match.group(0)], raw)


def _known(value: str | None) -> str | None:
    return value if value and value != UNKNOWN else None


def principal_parts(principal: str | None) -> tuple[str, str] | None:
    """(namespace, service account) of a SPIFFE ID `spiffe://TD/ns/NS/sa/SA`, else None."""
    if not principal or not principal.startswith("spiffe://"):
        return None
    parts = principal.split("/")
    # ["spiffe:", "", TD, "ns", NS, "sa", SA]
    if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa" and parts[4] and parts[6]:
        return parts[4], parts[6]
    return None


def peer_name(labels: Mapping[str, str], side: str) -> tuple[str, str]:
    """(workload, namespace) of the `side` ("source" or "destination") of a series.

    The workload label when known, else the service account of the principal,
    else "unknown"; the namespace likewise.
    """
    from_principal = principal_parts(labels.get(f"{side}_principal"))
    name = _known(labels.get(f"{side}_workload")) or (
        from_principal[1] if from_principal else UNKNOWN
    )
    namespace = _known(labels.get(f"{side}_workload_namespace")) or (
        from_principal[0] if from_principal else UNKNOWN
    )
    return name, namespace


def edge_of(labels: Mapping[str, str]) -> EdgeKey:
    """The edge a series belongs to (see the module docstring for how names are found)."""
    source, source_namespace = peer_name(labels, "source")
    destination, destination_namespace = peer_name(labels, "destination")
    host = _known(labels.get("destination_service")) or ""
    service = _known(labels.get("destination_service_name")) or host.split(".", 1)[0] or UNKNOWN
    service_namespace = _known(labels.get("destination_service_namespace")) or UNKNOWN
    if destination_namespace == UNKNOWN:
        destination_namespace = service_namespace
    return EdgeKey(
        source=source,
        source_namespace=source_namespace,
        destination=destination,
        destination_namespace=destination_namespace,
        service=service,
        service_namespace=service_namespace,
        version=_known(labels.get("destination_version")) or "",
        protocol=labels.get("request_protocol") or "http",
    )


def _bound(text: str | None) -> float | None:
    if text is None:
        return None
    if text == "+Inf":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def parse_series(text: str) -> Iterator[tuple[Metric, dict[str, str], float]]:
    """(metric, labels, value) of every kept series in a Prometheus text exposition.

    Comments, other metrics and malformed lines are skipped; a trailing
    timestamp is ignored.
    """
    for line in text.splitlines():
        if not line.startswith(_PREFIXES):
            continue
        match = _SERIES.match(line)
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        metric = _METRICS.get(name)
        if metric is None:
            continue
        try:
            value = float(raw_value)
        except ValueError:
            continue
        if math.isnan(value):
            continue
        labels = {key: _unescape(raw) for key, raw in _LABEL.findall(raw_labels)}
        yield metric, labels, value


def parse_counters(text: str) -> dict[SeriesKey, float]:
    """The kept series of one sidecar's exposition, keyed by their reduced labels.

    Series that reduce to the same key (they differed only in labels the
    dashboard does not show, such as `response_flags`) are summed.
    """
    counters: dict[SeriesKey, float] = {}
    for metric, labels, value in parse_series(text):
        le: float | None = None
        if metric is Metric.DURATION_BUCKET:
            le = _bound(labels.get("le"))
            if le is None:
                continue
        key = SeriesKey(
            metric=metric,
            reporter=labels.get("reporter", UNKNOWN),
            edge=edge_of(labels),
            code=labels.get("response_code", "") if metric is Metric.REQUESTS else "",
            policy=labels.get("connection_security_policy") or UNKNOWN,
            le=le,
        )
        counters[key] = counters.get(key, 0.0) + value
    return counters
