"""The control plane's own metrics: `GET /metrics` on its monitoring port (istiod's 15014).

Prometheus text format 0.0.4, with istiod's metric names so that dashboards and
alerts written for istiod read Trellis too. Only what Trellis can fill
truthfully is exported:

| metric | type | from |
|---|---|---|
| `pilot_xds{version}` | gauge | ADS streams open now, by the proxy's version |
| `pilot_xds_pushes{type}` | counter | xDS responses sent (`cds`, `eds`, `lds`, `rds`, `sds`) |
| `pilot_total_xds_rejects{type}` | counter | responses the proxies rejected (NACKs) |
| `pilot_services` | gauge | service hosts known: ServiceEntry hosts and the platform's services |
| `pilot_virt_services` | gauge | VirtualServices in the config |
| `citadel_server_csr_count` | counter | certificate requests received |
| `citadel_server_success_cert_issuance_count` | counter | certificates issued |
| `citadel_server_authentication_failure_count` | counter | requests without a valid credential |
| `citadel_server_csr_parsing_err_count` | counter | malformed CSRs (or lifetimes) |
| `citadel_server_csr_sign_err_count{error}` | counter | `identity_mismatch`, `ca_error` |
| `citadel_server_root_cert_expiry_timestamp` | gauge | when the mesh root expires (Unix time) |
| `citadel_server_cert_chain_expiry_timestamp` | gauge | when the CA's signing chain first expires |
| `istiod_uptime_seconds` | gauge | time since the control plane started |
| `process_*` | | CPU, memory, descriptors, start time (`process_stats`) |

The xDS counts come from each stream's own tally (`ads_status.TypeStatus`),
which ends with the stream. `XdsTotals` remembers the last tally it saw of
every stream and keeps it when the stream closes, so the counters never go
down; it looks every `SAMPLE_INTERVAL` seconds and at every scrape, and what a
stream sent after the last look before it closed is not counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trellis.api.meta import Resource
from trellis.api.networking import ServiceEntry
from trellis.controlplane.ads_status import ProxyNode, ProxyStatus
from trellis.controlplane.api import serve_api
from trellis.controlplane.ca import CertificateAuthority
from trellis.controlplane.ca_service import CertificateCounts
from trellis.controlplane.process_stats import read_process_stats
from trellis.core.prometheus import StatsRegistry

METRICS_PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SAMPLE_INTERVAL = 1.0
"""Seconds between looks at the ADS streams' tallies (see the module docstring)."""
UNKNOWN_VERSION = "unknown"

Streams = Callable[[], Sequence[ProxyStatus]]
Resources = Callable[[], Iterable[Resource]]


@dataclass(frozen=True, slots=True)
class XdsCounts:
    """Totals over the control plane's life: responses and NACKs by xDS type
    (`cds`, `eds`, ...), and open streams by proxy version."""

    pushes: Mapping[str, int] = field(default_factory=dict)
    rejects: Mapping[str, int] = field(default_factory=dict)
    connections: Mapping[str, int] = field(default_factory=dict)


class XdsTotals:
    """Folds the per-stream tallies of `ProxyStatus` into never-decreasing totals."""

    __slots__ = ("_closed", "_open", "_versions")

    def __init__(self) -> None:
        self._closed = _Tally()  # what closed streams had sent when last seen
        self._open: dict[str, _Tally] = {}  # connection id -> its last tally
        self._versions: set[str] = set()  # reported as 0 once their last proxy has gone

    def observe(self, streams: Iterable[ProxyStatus]) -> XdsCounts:
        """Take the streams open now; the totals including them."""
        streams = list(streams)
        current = {stream.connection_id: _Tally.of(stream) for stream in streams}
        for gone in self._open.keys() - current.keys():
            self._closed.add(self._open[gone])
        self._open = current
        totals = _Tally()
        totals.add(self._closed)
        for tally in current.values():
            totals.add(tally)
        connections = Counter(proxy_version(stream.node) for stream in streams)
        self._versions.update(connections)
        return XdsCounts(
            pushes=totals.pushes,
            rejects=totals.rejects,
            connections={version: connections[version] for version in self._versions},
        )


class _Tally:
    """Responses and NACKs by xDS type (`cds`, `eds`, ...)."""

    __slots__ = ("pushes", "rejects")

    def __init__(self) -> None:
        self.pushes: dict[str, int] = {}
        self.rejects: dict[str, int] = {}

    @classmethod
    def of(cls, stream: ProxyStatus) -> _Tally:
        tally = cls()
        for status in stream.types:
            kind = status.short_name.lower()
            tally.pushes[kind] = status.responses
            tally.rejects[kind] = status.nacks
        return tally

    def add(self, other: _Tally) -> None:
        for mine, theirs in ((self.pushes, other.pushes), (self.rejects, other.rejects)):
            for kind, n in theirs.items():
                mine[kind] = mine.get(kind, 0) + n


def proxy_version(node: ProxyNode) -> str:
    """Istio's `ISTIO_VERSION` metadata if the proxy sends it, else its user agent's version."""
    version = node.metadata.get("ISTIO_VERSION")
    if isinstance(version, str) and version:
        return version
    _, slash, after = node.user_agent.rpartition("/")
    return after if slash and after else UNKNOWN_VERSION


def service_hosts(resources: Iterable[Resource]) -> int:
    """Distinct (namespace, host) pairs of the ServiceEntries: istiod's count of services."""
    return len(
        {
            (resource.metadata.namespace, host)
            for resource in resources
            if isinstance(resource, ServiceEntry)
            for host in resource.spec.hosts
        }
    )


class ControlPlaneMetrics:
    """Builds the exposition from the control plane's parts, read at scrape time.

    `streams` lists the open ADS streams, `resources` the config and the
    platform's registry; `certificates` and `ca` are None when there is no CA.
    """

    def __init__(
        self,
        streams: Streams,
        resources: Resources,
        certificates: CertificateCounts | None = None,
        ca: CertificateAuthority | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._streams = streams
        self._resources = resources
        self._certificates = certificates
        self._ca = ca
        self._clock = clock
        self._started = clock()
        self.xds = XdsTotals()

    def sample(self) -> XdsCounts:
        """Look at the streams now (keeps the counts of streams about to close)."""
        return self.xds.observe(self._streams())

    def render(self) -> str:
        stats = StatsRegistry()
        self._xds(stats, self.sample())
        self._config(stats, list(self._resources()))
        if self._certificates is not None:
            _certificates(stats, self._certificates)
        if self._ca is not None:
            _authority(stats, self._ca)
        stats.gauge(
            "istiod_uptime_seconds", help_text="Seconds since the control plane started."
        ).value = self._clock() - self._started
        _process(stats)
        return stats.render_prometheus()

    def _xds(self, stats: StatsRegistry, counts: XdsCounts) -> None:
        for version, n in counts.connections.items():
            stats.gauge(
                "pilot_xds",
                (("version", version),),
                help_text="Proxies connected over ADS, by proxy version.",
            ).value = n
        for kind, n in counts.pushes.items():
            stats.counter(
                "pilot_xds_pushes", (("type", kind),), help_text="xDS responses sent, by type."
            ).value = n
        for kind, n in counts.rejects.items():
            stats.counter(
                "pilot_total_xds_rejects",
                (("type", kind),),
                help_text="xDS responses the proxies rejected (NACK), by type.",
            ).value = n

    def _config(self, stats: StatsRegistry, resources: list[Resource]) -> None:
        stats.gauge(
            "pilot_services", help_text="Service hosts known to the control plane."
        ).value = service_hosts(resources)
        stats.gauge(
            "pilot_virt_services", help_text="VirtualServices in the mesh config."
        ).value = sum(1 for resource in resources if resource.kind == "VirtualService")


def _certificates(stats: StatsRegistry, counts: CertificateCounts) -> None:
    for name, value, help_text in (
        ("citadel_server_csr_count", counts.requests, "Certificate requests received."),
        ("citadel_server_success_cert_issuance_count", counts.issued, "Certificates issued."),
        (
            "citadel_server_authentication_failure_count",
            counts.authentication_failures,
            "Certificate requests without an accepted credential.",
        ),
        (
            "citadel_server_csr_parsing_err_count",
            counts.csr_errors,
            "Certificate requests with a malformed CSR or lifetime.",
        ),
    ):
        stats.counter(name, help_text=help_text).value = value
    for error, value in (
        ("identity_mismatch", counts.identity_mismatches),
        ("ca_error", counts.sign_errors),
    ):
        stats.counter(
            "citadel_server_csr_sign_err_count",
            (("error", error),),
            help_text="Authenticated certificate requests the CA did not sign, by reason.",
        ).value = value


def _authority(stats: StatsRegistry, ca: CertificateAuthority) -> None:
    stats.gauge(
        "citadel_server_root_cert_expiry_timestamp",
        help_text="When the mesh's root certificate expires (Unix time).",
    ).value = _expiry(ca.root)
    stats.gauge(
        "citadel_server_cert_chain_expiry_timestamp",
        help_text="When the first certificate of the CA's signing chain expires (Unix time).",
    ).value = min(_expiry(cert) for cert in (ca.certificate, *ca.chain))


def _expiry(certificate: x509.Certificate) -> float:
    return certificate.not_valid_after_utc.timestamp()


def _process(stats: StatsRegistry) -> None:
    process = read_process_stats()
    stats.counter(
        "process_cpu_seconds_total", help_text="User and system CPU time, in seconds."
    ).value = process.cpu_seconds  # type: ignore[assignment]  # a counter of seconds, not events
    for name, value, help_text in (
        ("process_max_fds", process.max_fds, "The limit on open file descriptors."),
        ("process_open_fds", process.open_fds, "Open file descriptors."),
        ("process_resident_memory_bytes", process.resident_bytes, "Resident memory, in bytes."),
        ("process_virtual_memory_bytes", process.virtual_bytes, "Virtual memory, in bytes."),
        ("process_start_time_seconds", process.start_time, "When the process started (Unix time)."),
    ):
        if value is not None:
            stats.gauge(name, help_text=help_text).value = value


def monitoring_app(metrics: ControlPlaneMetrics) -> Starlette:
    """`GET /metrics`: the exposition, built at request time."""

    async def scrape(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route(METRICS_PATH, scrape, methods=["GET"])])


async def serve_monitoring(
    metrics: ControlPlaneMetrics,
    host: str,
    port: int,
    *,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve `/metrics` on `host:port` (uvicorn, like the REST API) until cancelled, and
    look at the ADS streams every `SAMPLE_INTERVAL` seconds meanwhile."""
    async with asyncio.TaskGroup() as group:
        group.create_task(_keep_sampling(metrics), name="xds tally")
        await serve_api(
            monitoring_app(metrics), host, port, started=started, name="monitoring server"
        )


async def _keep_sampling(metrics: ControlPlaneMetrics) -> None:
    while True:
        await asyncio.sleep(SAMPLE_INTERVAL)
        metrics.sample()
