"""The Envoy TLS fields Trellis implements (merged into `trellis.xds.supported`).

Transport sockets `envoy.transport_sockets.tls` (Upstream/DownstreamTlsContext)
and `raw_buffer`; certificates and trusted CAs only as SDS secrets (static,
over ADS, or the proxy's own identity); SAN matchers; protocol versions and
ALPN; `transport_socket_matches` on clusters; filter chains matched by
`transport_protocol` behind the TLS inspector (`FilterChainMatch` is listed
with the listener fields). Cipher and curve choices, session tickets, OCSP,
CRLs, SPKI/hash pinning and certificate providers are rejected by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

_TLS = "envoy.extensions.transport_sockets.tls.v3."
UPSTREAM_TLS_TYPE = _TLS + "UpstreamTlsContext"
DOWNSTREAM_TLS_TYPE = _TLS + "DownstreamTlsContext"
RAW_BUFFER_TYPE = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
TLS_INSPECTOR_TYPE = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
SECRET_TYPE = _TLS + "Secret"

TLS_SUPPORTED_FIELDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "envoy.config.core.v3.TransportSocket": frozenset({"name", "typed_config"}),
        UPSTREAM_TLS_TYPE: frozenset({"common_tls_context", "sni"}),
        DOWNSTREAM_TLS_TYPE: frozenset({"common_tls_context", "require_client_certificate"}),
        RAW_BUFFER_TYPE: frozenset(),
        TLS_INSPECTOR_TYPE: frozenset(),
        _TLS + "CommonTlsContext": frozenset(
            {
                "tls_params",
                "tls_certificate_sds_secret_configs",
                "validation_context_sds_secret_config",
                "combined_validation_context",
                "alpn_protocols",
            }
        ),
        _TLS + "CommonTlsContext.CombinedCertificateValidationContext": frozenset(
            {"default_validation_context", "validation_context_sds_secret_config"}
        ),
        _TLS + "CertificateValidationContext": frozenset(
            {"match_typed_subject_alt_names", "match_subject_alt_names", "trusted_ca"}
        ),
        _TLS + "SubjectAltNameMatcher": frozenset({"san_type", "matcher"}),
        _TLS + "TlsParameters": frozenset(
            {"tls_minimum_protocol_version", "tls_maximum_protocol_version"}
        ),
        _TLS + "SdsSecretConfig": frozenset({"name", "sds_config"}),
        SECRET_TYPE: frozenset({"name", "tls_certificate", "validation_context"}),
        _TLS + "TlsCertificate": frozenset({"certificate_chain", "private_key"}),
        "envoy.config.cluster.v3.Cluster.TransportSocketMatch": frozenset(
            {"name", "match", "transport_socket"}
        ),
        "envoy.config.listener.v3.ListenerFilter": frozenset({"name", "typed_config"}),
    }
)
"""Added to `SUPPORTED_FIELDS`; the fields that carry these messages are listed there."""

TLS_SUPPORTED_ANY_TYPES: Mapping[tuple[str, str], frozenset[str]] = MappingProxyType(
    {
        ("envoy.config.core.v3.TransportSocket", "typed_config"): frozenset(
            {UPSTREAM_TLS_TYPE, DOWNSTREAM_TLS_TYPE, RAW_BUFFER_TYPE}
        ),
        ("envoy.config.listener.v3.ListenerFilter", "typed_config"): frozenset(
            {TLS_INSPECTOR_TYPE}
        ),
    }
)

TLS_SUPPORTED_VALUES: Mapping[tuple[str, str], frozenset[str]] = MappingProxyType(
    {
        (_TLS + "SubjectAltNameMatcher", "san_type"): frozenset({"DNS", "URI"}),
        (_TLS + "TlsParameters", "tls_minimum_protocol_version"): frozenset(
            {"TLS_AUTO", "TLSv1_2", "TLSv1_3"}
        ),
        (_TLS + "TlsParameters", "tls_maximum_protocol_version"): frozenset(
            {"TLS_AUTO", "TLSv1_2", "TLSv1_3"}
        ),
    }
)
