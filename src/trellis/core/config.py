"""The proxy's compiled configuration: frozen, validated, ready for the hot path.

`trellis.xds` builds these from Envoy v3 messages (bootstrap or xDS); the runtime
only reads them. Durations are seconds as floats; `None` means "disabled".
A config change builds a new `ProxyConfig` and swaps one reference.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from trellis.core.addresses import EndpointAddress, IpNetwork, SocketAddress
from trellis.core.authz import AuthzConfig
from trellis.core.tls import (
    DownstreamTls,
    NamedSecret,
    TransportProtocol,
    TransportSocketMatch,
    UpstreamTls,
)
from trellis.core.tracing import TracingConfig

# --- common ------------------------------------------------------------------


class StringMatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    CONTAINS = "contains"
    REGEX = "safe_regex"


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """Envoy's `type.matcher.v3.StringMatcher`, with the regex compiled once."""

    kind: StringMatchKind
    value: str
    ignore_case: bool = False
    regex: re.Pattern[str] | None = None

    def matches(self, text: str) -> bool:
        kind = self.kind
        if kind is StringMatchKind.REGEX:
            assert self.regex is not None
            return self.regex.fullmatch(text) is not None
        if self.ignore_case:
            text = text.lower()
        value = self.value
        if kind is StringMatchKind.EXACT:
            return text == value
        if kind is StringMatchKind.PREFIX:
            return text.startswith(value)
        if kind is StringMatchKind.SUFFIX:
            return text.endswith(value)
        return value in text


# --- routing -------------------------------------------------------------------


class PathMatchKind(enum.Enum):
    PREFIX = "prefix"
    PATH = "path"
    REGEX = "safe_regex"


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """Envoy's `route.v3.HeaderMatcher`.

    `string_match is None and present is None` means "header present".
    Multiple values of one header are joined with "," before matching, as Envoy does.
    """

    name: str  # lower-case
    string_match: StringMatcher | None = None
    present: bool | None = None
    invert: bool = False
    treat_missing_as_empty: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path_kind: PathMatchKind
    path: str  # prefix or exact path; the pattern text for REGEX
    regex: re.Pattern[str] | None = None
    case_sensitive: bool = True
    headers: tuple[HeaderMatcher, ...] = ()


class AppendAction(enum.Enum):
    APPEND_IF_EXISTS_OR_ADD = "APPEND_IF_EXISTS_OR_ADD"
    ADD_IF_ABSENT = "ADD_IF_ABSENT"
    OVERWRITE_IF_EXISTS_OR_ADD = "OVERWRITE_IF_EXISTS_OR_ADD"
    OVERWRITE_IF_EXISTS = "OVERWRITE_IF_EXISTS"


@dataclass(frozen=True, slots=True)
class HeaderToAdd:
    name: str  # lower-case
    value: str
    action: AppendAction = AppendAction.APPEND_IF_EXISTS_OR_ADD
    keep_empty_value: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """Headers to add and remove; applied route first, then virtual host, then route config."""

    add: tuple[HeaderToAdd, ...] = ()
    remove: frozenset[str] = frozenset()  # lower-case names

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


NO_HEADER_MUTATION = HeaderMutation()


class RetryOn(enum.Flag):
    """The `retry_on` conditions the proxy implements (Envoy's x-envoy-retry-on names)."""

    NONE = 0
    SERVER_ERROR = enum.auto()  # "5xx"
    GATEWAY_ERROR = enum.auto()  # "gateway-error": 502, 503, 504
    RESET = enum.auto()  # "reset"
    CONNECT_FAILURE = enum.auto()  # "connect-failure"
    REFUSED_STREAM = enum.auto()  # "refused-stream"
    RETRIABLE_STATUS_CODES = enum.auto()  # "retriable-status-codes"


RETRY_ON_NAMES: dict[str, RetryOn] = {
    "5xx": RetryOn.SERVER_ERROR,
    "gateway-error": RetryOn.GATEWAY_ERROR,
    "reset": RetryOn.RESET,
    "connect-failure": RetryOn.CONNECT_FAILURE,
    "refused-stream": RetryOn.REFUSED_STREAM,
    "retriable-status-codes": RetryOn.RETRIABLE_STATUS_CODES,
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Envoy's `route.v3.RetryPolicy` subset.

    Back-off defaults are Envoy's: base 25 ms, max 10x base, full jitter.
    """

    retry_on: RetryOn
    num_retries: int = 1
    per_try_timeout: float | None = None
    base_interval: float = 0.025
    max_interval: float = 0.25
    retriable_status_codes: frozenset[int] = frozenset()
    avoid_previous_hosts: bool = False  # envoy.retry_host_predicates.previous_hosts
    host_selection_retry_max_attempts: int = 1


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int
    request_headers: HeaderMutation = NO_HEADER_MUTATION
    response_headers: HeaderMutation = NO_HEADER_MUTATION


@dataclass(frozen=True, slots=True)
class ClusterAction:
    """Forward to one cluster or pick one of several by weight."""

    clusters: tuple[WeightedCluster, ...]
    total_weight: int
    timeout: float | None = 15.0  # Envoy's default route timeout; None = disabled
    retry_policy: RetryPolicy | None = None
    prefix_rewrite: str | None = None
    host_rewrite: str | None = None


@dataclass(frozen=True, slots=True)
class RedirectAction:
    """Envoy's `route.v3.RedirectAction` subset."""

    response_code: int = 301
    scheme: str | None = None  # scheme_redirect, or "https" for https_redirect
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None
    strip_query: bool = False


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    status: int
    body: bytes = b""


RouteAction = ClusterAction | RedirectAction | DirectResponseAction


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: RouteMatch
    action: RouteAction
    request_headers: HeaderMutation = NO_HEADER_MUTATION
    response_headers: HeaderMutation = NO_HEADER_MUTATION


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    request_headers: HeaderMutation = NO_HEADER_MUTATION
    response_headers: HeaderMutation = NO_HEADER_MUTATION


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    request_headers: HeaderMutation = NO_HEADER_MUTATION
    response_headers: HeaderMutation = NO_HEADER_MUTATION


# --- clusters ------------------------------------------------------------------


class LbPolicy(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: EndpointAddress
    weight: int = 1
    # The endpoint's `envoy.transport_socket_match` metadata (string values only).
    transport_metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CircuitBreakerThresholds:
    """Envoy's defaults for the DEFAULT priority."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Envoy's `cluster.v3.OutlierDetection`, consecutive-error subset, Envoy's defaults.
    Percentages are 0-100, times seconds; a threshold of 0 never trips."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0  # at least base_ejection_time
    max_ejection_time_jitter: float = 0.0
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...]
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    connect_timeout: float = 5.0
    thresholds: CircuitBreakerThresholds = field(default_factory=CircuitBreakerThresholds)
    idle_timeout: float | None = 3600.0  # upstream connection idle timeout
    least_request_choice_count: int = 2
    eds_name: str | None = None  # endpoints come from EDS under this name
    http2: bool = False  # only the ADS cluster: the xDS client speaks gRPC to it
    outlier_detection: OutlierDetection | None = None
    healthy_panic_threshold: float = 50.0  # percent; 0 disables panic mode
    transport_socket: UpstreamTls | None = None  # None: plaintext
    transport_socket_matches: tuple[TransportSocketMatch, ...] = ()
    # Envoy's ORIGINAL_DST type (lb_policy CLUSTER_PROVIDED): no endpoints; each
    # connection goes to where its downstream connection was originally headed.
    original_dst: bool = False
    # The service this cluster serves, from Istio's `istio.services` cluster metadata
    # ("" when none): what an inbound TCP connection reports as destination_service.
    service_host: str = ""


# --- listeners -----------------------------------------------------------------


class TrafficDirection(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """One access log sink: a file (`path`) or stdout (`path is None`).

    At most one of `json_format` (key -> format string) and `text_format` is set;
    neither means Envoy's default text format.
    """

    path: str | None = None
    json_format: tuple[tuple[str, str], ...] | None = None
    text_format: str | None = None


@dataclass(frozen=True, slots=True)
class HttpConnectionManager:
    stat_prefix: str
    route_config: RouteConfig | None  # inline; None when routes come over RDS
    allow_absolute_url: bool = True
    generate_request_id: bool = True
    use_remote_address: bool = False
    skip_xff_append: bool = False
    max_request_headers_bytes: int = 60 * 1024
    max_request_headers_count: int = 100  # common_http_protocol_options.max_headers_count
    idle_timeout: float | None = 3600.0  # downstream connection idle timeout
    request_headers_timeout: float | None = None
    stream_idle_timeout: float | None = 300.0
    request_timeout: float | None = None
    drain_timeout: float = 5.0
    max_retry_buffer_bytes: int = 1024 * 1024
    proxy_100_continue: bool = False
    accept_http_10: bool = False
    upgrade_types: frozenset[str] = frozenset()  # lower-case, e.g. {"websocket"}
    rds_name: str | None = None  # the RouteConfiguration to take from RDS
    access_logs: tuple[AccessLogConfig, ...] = ()
    authz: AuthzConfig | None = None  # RBAC filters before the router; None: no RBAC filter
    tracing: TracingConfig | None = None  # None: no spans, trace headers pass untouched


@dataclass(frozen=True, slots=True)
class TcpProxy:
    stat_prefix: str
    cluster: str
    idle_timeout: float | None = 3600.0
    access_logs: tuple[AccessLogConfig, ...] = ()
    # Network RBAC filters before the proxy, decided once per connection (after the
    # TLS handshake); None: no RBAC filter.
    authz: AuthzConfig | None = None


NetworkFilter = HttpConnectionManager | TcpProxy


@dataclass(frozen=True, slots=True)
class FilterChain:
    """One filter chain of a listener: the connections it takes, how it terminates
    TLS, and the network filter those connections run.

    A connection takes the chain whose `destination_port` is its (original)
    destination port, else a chain without one; among those, the chain with
    the longest of `prefix_ranges` holding its (original) destination address,
    else a chain without prefixes; among those, the chain whose
    `transport_protocol` is what the TLS inspector saw, else one with `ANY`
    (`trellis.core.filter_chain`, Envoy's order).
    """

    filter: NetworkFilter
    name: str = ""
    destination_port: int | None = None  # None: any port
    prefix_ranges: tuple[IpNetwork, ...] = ()  # destination addresses; (): any
    transport_protocol: TransportProtocol = TransportProtocol.ANY
    tls: DownstreamTls | None = None  # None: plaintext


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: SocketAddress
    chains: tuple[FilterChain, ...]  # at least one; no two with the same match
    direction: TrafficDirection = TrafficDirection.UNSPECIFIED
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    # Match chains against the address a connection had before iptables redirected
    # it here (SO_ORIGINAL_DST), Envoy's `use_original_dst`: transparent capture.
    use_original_dst: bool = False


# --- the whole proxy -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who this proxy is: from the bootstrap's `node` (Istio's node metadata keys)."""

    id: str = ""
    cluster: str = ""
    workload_name: str = "unknown"
    namespace: str = "unknown"
    service_account: str = "unknown"
    app: str = "unknown"
    version: str = "unknown"
    trust_domain: str = "cluster.local"
    # Istio's canonical service labels (`service.istio.io/canonical-name`/`-revision`,
    # else `app.kubernetes.io/name`/`version`, `app`/`version`), CLUSTER_ID and NAME.
    canonical_service: str = "unknown"
    canonical_revision: str = "latest"
    cluster_id: str = "unknown"
    instance: str = ""
    # The application's own Prometheus endpoint (ANNOTATIONS prometheus.io/port, /path),
    # merged into the sidecar's /stats/prometheus; None: nothing to merge.
    app_metrics: AppMetrics | None = None

    @property
    def principal(self) -> str:
        if self.service_account == "unknown" or self.namespace == "unknown":
            return "unknown"
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, slots=True)
class AppMetrics:
    """Where the application serves its metrics: `http://127.0.0.1:PORT/PATH`."""

    port: int
    path: str = "/metrics"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    address: SocketAddress


@dataclass(frozen=True, slots=True)
class AdsConfig:
    """Where the proxy gets its dynamic config: one ADS stream to a control plane."""

    cluster: str
    address: EndpointAddress
    lds: bool = True  # listeners come from LDS
    cds: bool = True  # clusters come from CDS
    initial_fetch_timeout: float | None = 15.0  # None: wait for the first config forever
    delta: bool = False  # api_type DELTA_GRPC: incremental xDS; GRPC: state of the world


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    node: NodeIdentity
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    admin: AdminConfig | None = None
    # overload_manager's envoy.resource_monitors.global_downstream_max_connections
    max_downstream_connections: int | None = None
    ads: AdsConfig | None = None
    secrets: tuple[NamedSecret, ...] = ()  # static_resources.secrets
