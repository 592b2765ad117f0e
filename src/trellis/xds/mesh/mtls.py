"""Istio's automatic mTLS between sidecars, as Envoy TLS contexts and secrets.

With a mesh CA (`MeshConfig.tls`) every sidecar gets:
- the secret `ROOTCA` (the CA's root, over ADS) to verify peers against, and
  its own certificate as the secret `default` from its identity agent
  (`sds-grpc`; the key never leaves the proxy);
- outbound (auto mTLS): a cluster with at least one endpoint that has a
  sidecar (WorkloadEntry label `security.istio.io/tlsMode: istio`) whose
  PeerAuthentication does not DISABLE mTLS on the target port gets Istio's
  `transport_socket_matches`: TLS for endpoints with the metadata
  `envoy.transport_socket_match: {tlsMode: istio}`, plaintext for the rest.
  The server must present one of the SPIFFE IDs of the service's
  sidecar endpoints. DestinationRule `tls.mode` DISABLE keeps the cluster
  plaintext; ISTIO_MUTUAL makes every endpoint TLS;
- inbound: per workload port, the PeerAuthentication mode picks the filter
  chains (STRICT: TLS only; PERMISSIVE: TLS and plaintext behind the TLS
  inspector; DISABLE: plaintext), the TLS chain requiring a client
  certificate from the mesh CA.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2
from envoy.type.matcher.v3 import string_pb2

from trellis.api.networking import ClientTLSSettings, TLSMode
from trellis.api.security import MtlsMode, PeerAuthentication
from trellis.core.tls import ROOT_CA, TRANSPORT_SOCKET_MATCH, WORKLOAD_CERTIFICATE
from trellis.xds.compile_tls import LOCAL_SDS_CLUSTER
from trellis.xds.mesh.build import ads_source, boolean, pack
from trellis.xds.mesh.model import MeshTls
from trellis.xds.mesh.peer_authn import EffectiveMtls, effective_mtls
from trellis.xds.mesh.registry import Instance
from trellis.xds.protos import (
    cluster_pb2,
    listener_pb2,
    raw_buffer_pb2,
    secret_pb2,
    tls_inspector_pb2,
    tls_pb2,
)

TLS_MODE_LABEL = "security.istio.io/tlsMode"
ISTIO_TLS_MODE = "istio"
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
UPSTREAM_ALPN = ("istio-peer-exchange", "istio")
DOWNSTREAM_ALPN = ("istio-peer-exchange", "istio", "http/1.1")
TLS_MATCH = "tlsMode-istio"
PLAINTEXT_MATCH = "tlsMode-disabled"


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def sni(host: str, port: int, subset: str = "") -> str:
    """Istio's SNI for a cluster, `outbound_.PORT_.SUBSET_.HOST` (its DNS SRV subset key)."""
    return f"outbound_.{port}_.{subset}_.{host}"


def root_ca_secret(tls: MeshTls) -> secret_pb2.Secret:
    """The `ROOTCA` secret: the trusted root, inline."""
    found = secret_pb2.Secret(name=ROOT_CA)
    found.validation_context.trusted_ca.inline_bytes = tls.root_ca_pem
    return found


def _workload_certificate() -> secret_pb2.SdsSecretConfig:
    """The proxy's own certificate: secret `default` from its identity agent (`sds-grpc`)."""
    agent = config_source_pb2.ApiConfigSource(
        api_type=config_source_pb2.ApiConfigSource.GRPC,
        transport_api_version=config_source_pb2.ApiVersion.V3,
        grpc_services=[
            grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=LOCAL_SDS_CLUSTER)
            )
        ],
    )
    return secret_pb2.SdsSecretConfig(
        name=WORKLOAD_CERTIFICATE,
        sds_config=config_source_pb2.ConfigSource(
            api_config_source=agent, resource_api_version=config_source_pb2.ApiVersion.V3
        ),
    )


def _root_ca() -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=ROOT_CA, sds_config=ads_source())


def _base(alpn: Sequence[str]) -> tls_pb2.CommonTlsContext:
    """Our certificate and `alpn`, no validation yet."""
    return tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[_workload_certificate()], alpn_protocols=alpn
    )


def upstream_template() -> tls_pb2.CommonTlsContext:
    """What every upstream context starts from (build once, pass to `upstream_tls_socket`)."""
    return _base(UPSTREAM_ALPN)


def _validating(
    base: tls_pb2.CommonTlsContext,
    identities: Sequence[str],
    *,
    trust_domain: str | None = None,
) -> tls_pb2.CommonTlsContext:
    """A copy of `base` that trusts the mesh root and wants a peer URI SAN in
    `identities`, or else one in `trust_domain` (any certificate of the mesh CA
    when neither is given)."""
    common = tls_pb2.CommonTlsContext()
    common.CopyFrom(base)
    matchers = [string_pb2.StringMatcher(exact=identity) for identity in identities]
    if not matchers and trust_domain is not None:
        matchers.append(string_pb2.StringMatcher(prefix=f"spiffe://{trust_domain}/"))
    if not matchers:
        common.validation_context_sds_secret_config.CopyFrom(_root_ca())
        return common
    combined = common.combined_validation_context
    combined.validation_context_sds_secret_config.CopyFrom(_root_ca())
    combined.default_validation_context.match_typed_subject_alt_names.extend(
        common_pb2.SubjectAltNameMatcher(
            san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher
        )
        for matcher in matchers
    )
    return common


def upstream_tls_socket(
    server_name: str,
    identities: Sequence[str],
    template: tls_pb2.CommonTlsContext | None = None,
) -> base_pb2.TransportSocket:
    """mTLS to a sidecar: our certificate, the server's SAN one of `identities` (any
    certificate of the mesh CA when empty). `template`: an `upstream_template()`."""
    base = template if template is not None else upstream_template()
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=_validating(base, identities), sni=server_name
    )
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def downstream_tls_socket(trust_domain: str) -> base_pb2.TransportSocket:
    """mTLS termination: our certificate; the client's must come from the mesh CA and
    name a SPIFFE identity of the mesh's trust domain (a CA shared with another
    mesh cannot vouch for its workloads here)."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_validating(_base(DOWNSTREAM_ALPN), (), trust_domain=trust_domain),
        require_client_certificate=boolean(True),
    )
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def _raw_buffer_socket() -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name=RAW_BUFFER_SOCKET, typed_config=pack(raw_buffer_pb2.RawBuffer())
    )


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
    )


class AutoMtls:
    """Which endpoints take mTLS, and the TLS settings of the clusters to them.

    Built once per mesh config; remembers each workload's PeerAuthentication
    resolution (a workload is its namespace and labels).
    """

    def __init__(self, tls: MeshTls, policies: Sequence[PeerAuthentication]) -> None:
        self.tls = tls
        self._policies = policies
        self._template = upstream_template()
        self._raw_buffer = _raw_buffer_socket()
        self._modes: dict[tuple[str, tuple[tuple[str, str], ...]], EffectiveMtls] = {}

    def mtls_of(self, namespace: str, labels: Mapping[str, str]) -> EffectiveMtls:
        """The PeerAuthentication modes of the workload in `namespace` with `labels`."""
        return self._resolved(namespace, tuple(sorted(labels.items())))

    def _resolved(self, namespace: str, labels: tuple[tuple[str, str], ...]) -> EffectiveMtls:
        key = (namespace, labels)
        found = self._modes.get(key)
        if found is None:
            found = self._modes[key] = effective_mtls(self._policies, namespace, dict(labels))
        return found

    def accepts(self, instance: Instance) -> bool:
        """Whether the endpoint has a sidecar that takes mTLS on its port."""
        if (TLS_MODE_LABEL, ISTIO_TLS_MODE) not in instance.labels:
            return False
        modes = self._resolved(instance.namespace, instance.labels)
        return modes.for_port(instance.port) is not MtlsMode.DISABLE

    def identities(self, instances: Iterable[Instance]) -> list[str]:
        """The distinct SPIFFE IDs of `instances`, sorted."""
        td = self.tls.trust_domain
        return sorted({spiffe_id(td, i.namespace, i.service_account) for i in instances})

    def secure_cluster(
        self,
        cluster: cluster_pb2.Cluster,
        setting: ClientTLSSettings | None,
        server_name: str,
        endpoints: Sequence[Instance],
        service_endpoints: Iterable[Instance],
    ) -> None:
        """Give `cluster` (to `endpoints`, of a service with `service_endpoints` on any
        port) its TLS: DestinationRule `setting` first, else auto mTLS."""
        if setting is not None and setting.mode is TLSMode.DISABLE:
            return
        if setting is not None and setting.mode is TLSMode.ISTIO_MUTUAL:
            identities = self.identities(service_endpoints)
            socket = upstream_tls_socket(server_name, identities, self._template)
            cluster.transport_socket.CopyFrom(socket)
            return
        if not any(self.accepts(item) for item in endpoints):
            return
        sidecars = (item for item in service_endpoints if self.accepts(item))
        secure = cluster.transport_socket_matches.add(
            name=TLS_MATCH,
            transport_socket=upstream_tls_socket(
                server_name, self.identities(sidecars), self._template
            ),
        )
        secure.match.update({"tlsMode": ISTIO_TLS_MODE})
        plain = cluster.transport_socket_matches.add(
            name=PLAINTEXT_MATCH, transport_socket=self._raw_buffer
        )
        plain.match.SetInParent()


def mark_endpoint(metadata: base_pb2.Metadata) -> None:
    """Label an endpoint's metadata for the `tlsMode-istio` transport socket match."""
    metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update({"tlsMode": ISTIO_TLS_MODE})


@dataclass(frozen=True, slots=True)
class InboundMtls:
    """What one proxy's inbound listeners need for mTLS: each port's mode and the TLS
    context that terminates it."""

    modes: EffectiveMtls
    socket: base_pb2.TransportSocket

    def add_chains(
        self,
        listener: listener_pb2.Listener,
        network_filters: Sequence[listener_components_pb2.Filter],
        port: int,
        name: str,
        destination_port: int | None = None,
    ) -> None:
        """The filter chains of `port` as its mode says, all with `network_filters`.

        `name`: the plaintext chain's name (the TLS chain's gets `mtls`);
        `destination_port`: match it too (transparent capture).
        """
        mode = self.modes.for_port(port)
        wanted: list[tuple[str, bool]] = []
        if mode is not MtlsMode.DISABLE:
            wanted.append(("tls", True))
        if mode is not MtlsMode.STRICT:
            wanted.append(("raw_buffer", False))
        for protocol, secure in wanted:
            if secure:
                chain_name = f"{name}mtls" if name else "mtls"
            else:
                chain_name = name if name or mode is MtlsMode.DISABLE else "plaintext"
            chain = listener.filter_chains.add(name=chain_name)
            if destination_port is not None:
                chain.filter_chain_match.destination_port.value = destination_port
            if mode is not MtlsMode.DISABLE:
                chain.filter_chain_match.transport_protocol = protocol
            if secure:
                chain.transport_socket.CopyFrom(self.socket)
            chain.filters.extend(network_filters)
        if mode is not MtlsMode.DISABLE and not listener.listener_filters:
            listener.listener_filters.append(tls_inspector())
