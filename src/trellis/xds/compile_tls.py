"""Transport sockets, TLS contexts and secrets: Envoy messages -> `trellis.core.tls`."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import struct_pb2

from trellis.core.tls import (
    TRANSPORT_SOCKET_MATCH,
    CommonTls,
    DownstreamTls,
    NamedSecret,
    SanMatcher,
    Secret,
    SecretRef,
    SecretSource,
    TlsCertificateSecret,
    TlsParameters,
    TlsVersion,
    TransportProtocol,
    TransportSocketMatch,
    UpstreamTls,
    ValidationSecret,
)
from trellis.xds.convert import string_matcher, wrapped_bool
from trellis.xds.supported import unpack_any
from trellis.xds.supported_tls import DOWNSTREAM_TLS_TYPE, RAW_BUFFER_TYPE, UPSTREAM_TLS_TYPE
from trellis.xds.where import Where

LOCAL_SDS_CLUSTER = "sds-grpc"  # Istio's name for the agent beside the proxy
_UPSTREAM = frozenset({UPSTREAM_TLS_TYPE, RAW_BUFFER_TYPE})
_DOWNSTREAM = frozenset({DOWNSTREAM_TLS_TYPE, RAW_BUFFER_TYPE})
MAX_SNI_BYTES = 255  # Envoy's limit, and TLS's for a host name
_MAX_LABEL = 63


def upstream_transport(socket: base_pb2.TransportSocket, where: Where) -> UpstreamTls | None:
    """A cluster's `transport_socket`: TLS settings, or None for raw_buffer."""
    here = where.at("typed_config")
    if not socket.HasField("typed_config"):
        raise here.error("typed_config is required")
    inner = unpack_any(socket.typed_config, _UPSTREAM, here)
    if not isinstance(inner, tls_pb2.UpstreamTlsContext):
        return None
    common = _common(inner.common_tls_context, here.at("common_tls_context"))
    return UpstreamTls(common=common, sni=_sni(inner.sni, here.at("sni")))


def _sni(name: str, where: Where) -> str:
    """The server name to send, in the ASCII form TLS carries ("": none): a name in
    Unicode is IDNA-encoded here, once, as `ssl` would do on every connection, and
    ASCII names get the codec's label checks without loading it (the runtime hands
    them to `ssl` as they are, see `trellis.runtime.secrets.AsciiSniContext`)."""
    if not name:
        return name
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise where.error(f"not a valid host name: {exc}") from None
    labels = name.split(".")
    if any(not 0 < len(label) <= _MAX_LABEL for label in labels[:-1]):
        raise where.error(f"{name!r}: a label is empty or longer than {_MAX_LABEL} characters")
    if len(labels[-1]) > _MAX_LABEL or len(name) > MAX_SNI_BYTES:
        raise where.error(f"{name!r} is too long")
    return name


def downstream_transport(socket: base_pb2.TransportSocket, where: Where) -> DownstreamTls | None:
    """A filter chain's `transport_socket`: TLS termination settings, or None for raw_buffer."""
    here = where.at("typed_config")
    if not socket.HasField("typed_config"):
        raise here.error("typed_config is required")
    inner = unpack_any(socket.typed_config, _DOWNSTREAM, here)
    if not isinstance(inner, tls_pb2.DownstreamTlsContext):
        return None
    common = _common(inner.common_tls_context, here.at("common_tls_context"))
    if common.certificate is None:
        raise (
            here.at("common_tls_context")
            .at("tls_certificate_sds_secret_configs")
            .error("a TLS listener needs a certificate")
        )
    required = wrapped_bool(inner, "require_client_certificate", False)
    if required and common.validation is None:
        raise here.at("common_tls_context").error(
            "require_client_certificate needs a validation context with trusted CAs"
        )
    return DownstreamTls(common=common, require_client_certificate=required)


def chain_transport(
    chain: listener_components_pb2.FilterChain, where: Where
) -> tuple[TransportProtocol, DownstreamTls | None]:
    """A filter chain's `transport_protocol` match and its TLS termination (None: plaintext)."""
    protocol_name = chain.filter_chain_match.transport_protocol
    try:
        protocol = TransportProtocol(protocol_name)
    except ValueError:
        raise (
            where.at("filter_chain_match")
            .at("transport_protocol")
            .error(f"must be tls or raw_buffer, got {protocol_name!r}")
        ) from None
    tls = None
    if chain.HasField("transport_socket"):
        tls = downstream_transport(chain.transport_socket, where.at("transport_socket"))
    if tls is not None and protocol is TransportProtocol.RAW_BUFFER:
        raise where.at("transport_socket").error("a raw_buffer chain cannot terminate TLS")
    return protocol, tls


def socket_matches(
    matches: Sequence[cluster_pb2.Cluster.TransportSocketMatch], where: Where
) -> tuple[TransportSocketMatch, ...]:
    """A cluster's `transport_socket_matches`, in order (the first match wins)."""
    result = []
    for i, match in enumerate(matches):
        here = where.item(i)
        if not match.name:
            raise here.at("name").error("name is required")
        if not match.HasField("transport_socket"):
            raise here.at("transport_socket").error("transport_socket is required")
        result.append(
            TransportSocketMatch(
                name=match.name,
                match=struct_strings(match.match, here.at("match")),
                tls=upstream_transport(match.transport_socket, here.at("transport_socket")),
            )
        )
    return tuple(result)


def endpoint_metadata(metadata: base_pb2.Metadata, where: Where) -> tuple[tuple[str, str], ...]:
    """The `envoy.transport_socket_match` metadata of an endpoint (strings only)."""
    if TRANSPORT_SOCKET_MATCH not in metadata.filter_metadata:
        return ()
    here = where.at("filter_metadata").key(TRANSPORT_SOCKET_MATCH)
    return struct_strings(metadata.filter_metadata[TRANSPORT_SOCKET_MATCH], here)


def struct_strings(struct: struct_pb2.Struct, where: Where) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, value in sorted(struct.fields.items()):
        if value.WhichOneof("kind") != "string_value":
            raise where.key(key).error("only string values are supported")
        pairs.append((key, value.string_value))
    return tuple(pairs)


def secret(message: secret_pb2.Secret, where: Where) -> NamedSecret:
    """A static or SDS `Secret`: a certificate with its key, or trusted CAs (inline PEM)."""
    if not message.name:
        raise where.at("name").error("name is required")
    found: Secret
    if message.HasField("tls_certificate"):
        cert = message.tls_certificate
        found = TlsCertificateSecret(
            certificate_chain=_inline(cert.certificate_chain, where.at("tls_certificate")),
            private_key=_inline(cert.private_key, where.at("tls_certificate")),
        )
    elif message.HasField("validation_context"):
        context = message.validation_context
        here = where.at("validation_context")
        if context.match_typed_subject_alt_names or context.match_subject_alt_names:
            raise here.error("SAN matchers belong in the TLS context, not in a secret")
        found = ValidationSecret(trusted_ca=_inline(context.trusted_ca, here.at("trusted_ca")))
    else:
        raise where.error("tls_certificate or validation_context is required")
    return message.name, found


def _inline(source: base_pb2.DataSource, where: Where) -> bytes:
    kind = source.WhichOneof("specifier")
    if kind == "inline_bytes":
        return bytes(source.inline_bytes)
    if kind == "inline_string":
        return str(source.inline_string).encode()
    raise where.error("an inline_bytes or inline_string PEM is required")


def _common(context: tls_pb2.CommonTlsContext, where: Where) -> CommonTls:
    certificates = context.tls_certificate_sds_secret_configs
    if len(certificates) > 1:
        raise where.at("tls_certificate_sds_secret_configs").error("at most one certificate")
    certificate = (
        _secret_ref(certificates[0], where.at("tls_certificate_sds_secret_configs").item(0))
        if certificates
        else None
    )
    validation: SecretRef | None = None
    matchers: tuple[SanMatcher, ...] = ()
    if context.HasField("validation_context_sds_secret_config"):
        here = where.at("validation_context_sds_secret_config")
        validation = _secret_ref(context.validation_context_sds_secret_config, here)
    elif context.HasField("combined_validation_context"):
        combined = context.combined_validation_context
        here = where.at("combined_validation_context")
        if not combined.HasField("validation_context_sds_secret_config"):
            raise here.at("validation_context_sds_secret_config").error("is required")
        validation = _secret_ref(
            combined.validation_context_sds_secret_config,
            here.at("validation_context_sds_secret_config"),
        )
        default = combined.default_validation_context
        if default.HasField("trusted_ca"):
            raise (
                here.at("default_validation_context")
                .at("trusted_ca")
                .error("trusted CAs come from the SDS secret")
            )
        matchers = _san_matchers(default, here.at("default_validation_context"))
    parameters = TlsParameters()
    if context.HasField("tls_params"):
        parameters = _parameters(context.tls_params, where.at("tls_params"))
    return CommonTls(
        certificate=certificate,
        validation=validation,
        san_matchers=matchers,
        alpn=tuple(context.alpn_protocols),
        parameters=parameters,
    )


def _secret_ref(config: secret_pb2.SdsSecretConfig, where: Where) -> SecretRef:
    if not config.name:
        raise where.at("name").error("name is required")
    if not config.HasField("sds_config"):
        return SecretRef(config.name, SecretSource.STATIC)
    source = config.sds_config
    kind = source.WhichOneof("config_source_specifier")
    if kind == "ads":
        return SecretRef(config.name, SecretSource.ADS)
    if kind == "api_config_source" and _is_local_agent(source):
        return SecretRef(config.name, SecretSource.LOCAL)
    raise where.at("sds_config").error(
        f"only `ads: {{}}` or the local identity agent (envoy_grpc cluster "
        f"{LOCAL_SDS_CLUSTER!r}) can provide secrets"
    )


def _is_local_agent(source: config_source_pb2.ConfigSource) -> bool:
    services = source.api_config_source.grpc_services
    return len(services) == 1 and services[0].envoy_grpc.cluster_name == LOCAL_SDS_CLUSTER


def _san_matchers(
    context: common_pb2.CertificateValidationContext, where: Where
) -> tuple[SanMatcher, ...]:
    result = []
    typed = where.at("match_typed_subject_alt_names")
    for i, item in enumerate(context.match_typed_subject_alt_names):
        san_type = common_pb2.SubjectAltNameMatcher.SanType.Name(item.san_type)
        result.append(SanMatcher(san_type, string_matcher(item.matcher, typed.item(i))))
    untyped = where.at("match_subject_alt_names")
    for i, matcher in enumerate(context.match_subject_alt_names):
        result.append(SanMatcher("", string_matcher(matcher, untyped.item(i))))
    return tuple(result)


def _parameters(params: common_pb2.TlsParameters, where: Where) -> TlsParameters:
    names = common_pb2.TlsParameters.TlsProtocol.Name
    low = TlsVersion(names(params.tls_minimum_protocol_version))
    high = TlsVersion(names(params.tls_maximum_protocol_version))
    low = TlsVersion.TLSv1_2 if low is TlsVersion.TLS_AUTO else low
    high = TlsVersion.TLSv1_3 if high is TlsVersion.TLS_AUTO else high
    if low is TlsVersion.TLSv1_3 and high is TlsVersion.TLSv1_2:
        raise where.error("tls_minimum_protocol_version is above the maximum")
    return TlsParameters(min_version=low, max_version=high)
