"""DestinationRule (`networking.istio.io`): policy for traffic to a service.

Field names, defaults and rules follow istio/api `networking/v1alpha3/
destination_rule.proto`. Defaults are Istio's documented ones, so a consumer
can read every field without knowing them. A subset's (or port's) policy
replaces the service-level `loadBalancer`, `connectionPool`,
`outlierDetection` and `tls` each as a whole, as in Istio.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from trellis.api.duration import PositiveDuration
from trellis.api.hosts import check_host
from trellis.api.meta import ApiModel, Resource, check_dns1123_label, enum_value
from trellis.api.virtual_service import PortSelector

UINT32_MAX = 4294967295


def _zero_means_default(default: int) -> Any:
    # proto3 cannot tell 0 from unset: Istio applies the default to both.
    def convert(value: Any) -> Any:
        return default if value == 0 and not isinstance(value, bool) else value

    return BeforeValidator(convert)


class SimpleLB(enum.StrEnum):
    """Load-balancing algorithms Trellis implements (Istio `SimpleLB`)."""

    UNSPECIFIED = "UNSPECIFIED"
    """Istio's default: LEAST_REQUEST."""
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"


class TLSMode(enum.StrEnum):
    """Client TLS modes Trellis implements (Istio `ClientTLSSettings.TLSmode`)."""

    DISABLE = "DISABLE"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"
    """mTLS with the mesh's SPIFFE certificates."""


class LoadBalancerSettings(ApiModel):
    """`loadBalancer`: Trellis implements `simple`."""

    unsupported = frozenset({"consistentHash", "localityLbSetting", "warmupDurationSecs", "warmup"})

    simple: Annotated[
        SimpleLB,
        BeforeValidator(enum_value(SimpleLB, frozenset({"PASSTHROUGH", "LEAST_CONN"}))),
    ] = SimpleLB.UNSPECIFIED


class TCPSettings(ApiModel):
    """`connectionPool.tcp`."""

    unsupported = frozenset({"tcpKeepalive", "maxConnectionDuration", "idleTimeout"})

    max_connections: Annotated[int, Field(ge=0), _zero_means_default(UINT32_MAX)] = UINT32_MAX
    """Maximum connections to one destination host (Istio default 2^32-1)."""
    connect_timeout: PositiveDuration = 10.0
    """TCP connect timeout (Istio default 10s)."""


class HTTPSettings(ApiModel):
    """`connectionPool.http`."""

    unsupported = frozenset({"h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams"})

    http1_max_pending_requests: Annotated[int, Field(ge=0), _zero_means_default(UINT32_MAX)] = (
        UINT32_MAX
    )
    """Requests queued waiting for a connection (Istio default 2^32-1)."""
    http2_max_requests: Annotated[int, Field(ge=0), _zero_means_default(UINT32_MAX)] = UINT32_MAX
    """Concurrent requests to the destination (Istio default 2^32-1)."""
    max_requests_per_connection: Annotated[int, Field(ge=0)] = 0
    """0 = unlimited (Istio default); 1 disables keep-alive."""
    max_retries: Annotated[int, Field(ge=0), _zero_means_default(UINT32_MAX)] = UINT32_MAX
    """Concurrent retries to the destination (Istio default 2^32-1)."""
    idle_timeout: PositiveDuration = 3600.0
    """Idle time after which an upstream connection is closed (Istio default 1h)."""


class ConnectionPoolSettings(ApiModel):
    """`connectionPool`: circuit-breaker limits and connection settings."""

    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


Percent = Annotated[int, Field(ge=0, le=100)]


class OutlierDetection(ApiModel):
    """`outlierDetection`: ejecting failing endpoints for a while."""

    unsupported = frozenset(
        {"consecutiveErrors", "splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures"}
    )

    consecutive_5xx_errors: Annotated[int, Field(ge=0)] = 5
    """5xx responses (or connect failures) in a row that eject a host; 0 disables."""
    consecutive_gateway_errors: Annotated[int, Field(ge=0)] = 0
    """502/503/504 (or connect failures) in a row that eject a host; 0 disables."""
    interval: PositiveDuration = 10.0
    """Time between ejection sweeps (Istio default 10s)."""
    base_ejection_time: PositiveDuration = 30.0
    """Ejection time, multiplied by the number of ejections (Istio default 30s)."""
    max_ejection_percent: Percent = 10
    min_health_percent: Percent = 0
    """Below this share of healthy hosts outlier detection is off (Istio default 0)."""


class ClientTLSSettings(ApiModel):
    """`tls`: whether connections to the destination use the mesh's mTLS."""

    unsupported = frozenset(
        {
            "clientCertificate",
            "privateKey",
            "caCertificates",
            "credentialName",
            "subjectAltNames",
            "sni",
            "insecureSkipVerify",
            "caCrl",
        }
    )

    mode: Annotated[
        TLSMode, BeforeValidator(enum_value(TLSMode, frozenset({"SIMPLE", "MUTUAL"})))
    ] = TLSMode.DISABLE


class PortTrafficPolicy(ApiModel):
    """Policy for one port of the destination; replaces the service-level fields it sets."""

    port: PortSelector
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(ApiModel):
    """`trafficPolicy`; a field left unset means "inherit" (subsets) or Istio's default."""

    unsupported = frozenset({"tunnel", "proxyProtocol"})

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()

    @field_validator("port_level_settings")
    @classmethod
    def _ports(cls, value: tuple[PortTrafficPolicy, ...]) -> tuple[PortTrafficPolicy, ...]:
        numbers = [item.port.number for item in value]
        for number in numbers:
            if numbers.count(number) > 1:
                raise ValueError(f"port {number} has more than one entry")
        return value

    def for_port(self, port: int) -> PortTrafficPolicy | None:
        """The port-level settings for `port`, if any."""
        return next((item for item in self.port_level_settings if item.port.number == port), None)


class Subset(ApiModel):
    """A named group of the service's endpoints, selected by labels."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_dns1123_label(value, "subset name")


class DestinationRuleSpec(ApiModel):
    """`DestinationRule` spec."""

    unsupported = frozenset({"exportTo", "workloadSelector"})

    host: Annotated[str, AfterValidator(check_host)]
    """Service host; short names are read in the DestinationRule's namespace."""
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()

    @field_validator("subsets")
    @classmethod
    def _subsets(cls, value: tuple[Subset, ...]) -> tuple[Subset, ...]:
        names = [subset.name for subset in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"subset {name!r} is defined more than once")
        return value

    def subset(self, name: str) -> Subset | None:
        """The subset called `name`, if defined."""
        return next((subset for subset in self.subsets if subset.name == name), None)


class DestinationRule(Resource):
    """`networking.istio.io/v1` DestinationRule."""

    kind: Literal["DestinationRule"]
    spec: DestinationRuleSpec
