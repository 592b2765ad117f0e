"""TLS settings of listeners and clusters, compiled from Envoy's transport sockets.

Certificates and trusted CAs are named, not inlined: they are SDS secrets
(`tls_certificate_sds_secret_configs`, `validation_context_sds_secret_config`)
that the runtime resolves when it builds an `ssl.SSLContext`, so a rotation
changes the secret and no listener or cluster. The proxy's own workload
certificate is the secret `default` (Istio's name), issued by the control
plane's CA to a key that never leaves the proxy; the trusted roots are the
secret `ROOTCA`, delivered over ADS. Secrets may also be static (bootstrap
`static_resources.secrets`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config.py imports this module
    from trellis.core.config import StringMatcher

WORKLOAD_CERTIFICATE = "default"
ROOT_CA = "ROOTCA"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"  # endpoint metadata filter name


class TlsVersion(enum.Enum):
    TLS_AUTO = "TLS_AUTO"
    TLSv1_2 = "TLSv1_2"
    TLSv1_3 = "TLSv1_3"


class SecretSource(enum.Enum):
    STATIC = "static"  # bootstrap static_resources.secrets (no sds_config)
    ADS = "ads"  # SDS over the proxy's ADS stream
    LOCAL = "local"  # the proxy's identity agent (Istio's `sds-grpc` cluster)


@dataclass(frozen=True, slots=True)
class SecretRef:
    name: str
    source: SecretSource = SecretSource.STATIC


@dataclass(frozen=True, slots=True)
class SanMatcher:
    """`match_typed_subject_alt_names` entry; `san_type` "" matches a SAN of any type."""

    san_type: str  # "URI", "DNS", "IP", "EMAIL" or ""
    matcher: StringMatcher


@dataclass(frozen=True, slots=True)
class TlsParameters:
    # Envoy's defaults: at least TLS 1.2 and at most TLS 1.3 for both sides.
    min_version: TlsVersion = TlsVersion.TLSv1_2
    max_version: TlsVersion = TlsVersion.TLSv1_3


@dataclass(frozen=True, slots=True)
class CommonTls:
    certificate: SecretRef | None = None  # our certificate chain and key
    validation: SecretRef | None = None  # trusted CAs for the peer's certificate
    # The peer's certificate must carry a SAN matching one of these (any when empty).
    san_matchers: tuple[SanMatcher, ...] = ()
    alpn: tuple[str, ...] = ()
    parameters: TlsParameters = TlsParameters()


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    common: CommonTls
    sni: str = ""


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    common: CommonTls
    require_client_certificate: bool = False


@dataclass(frozen=True, slots=True)
class TransportSocketMatch:
    """Endpoints whose `envoy.transport_socket_match` metadata has every pair use `tls`."""

    name: str
    match: tuple[tuple[str, str], ...]
    tls: UpstreamTls | None  # None: plaintext (raw_buffer)

    def matches(self, metadata: tuple[tuple[str, str], ...]) -> bool:
        return all(pair in metadata for pair in self.match)


class TransportProtocol(enum.Enum):
    """A filter chain's `transport_protocol` match (what the TLS inspector detects)."""

    ANY = ""
    TLS = "tls"
    RAW_BUFFER = "raw_buffer"


@dataclass(frozen=True, slots=True)
class TlsCertificateSecret:
    """A certificate chain and its private key (PEM); never logged or dumped."""

    certificate_chain: bytes
    private_key: bytes


@dataclass(frozen=True, slots=True)
class ValidationSecret:
    """Trusted CA certificates (PEM)."""

    trusted_ca: bytes


Secret = TlsCertificateSecret | ValidationSecret
NamedSecret = tuple[str, Secret]


def upstream_tls_for(
    default: UpstreamTls | None,
    matches: tuple[TransportSocketMatch, ...],
    metadata: tuple[tuple[str, str], ...],
) -> UpstreamTls | None:
    """The transport of one endpoint: the first matching `transport_socket_matches` entry,
    else the cluster's `transport_socket` (Envoy's rule)."""
    for match in matches:
        if match.matches(metadata):
            return match.tls
    return default


def san_allowed(matchers: tuple[SanMatcher, ...], sans: tuple[tuple[str, str], ...]) -> bool:
    """Whether one of the peer's (type, value) SANs satisfies a matcher (none: any peer)."""
    if not matchers:
        return True
    return any(
        m.matcher.matches(value)
        for m in matchers
        for san_type, value in sans
        if not m.san_type or m.san_type == san_type
    )
