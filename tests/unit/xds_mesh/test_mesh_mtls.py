"""Auto mTLS: what the translation emits is accepted by the proxy and means what Istio means.

Every resource of the mTLS golden cases goes through the proxy's own ADS
compile path (the allowlist check and the converters), as a pushed resource
would; the compiled TLS settings are then asked the questions the proxy asks
per connection: which filter chain takes a TLS or a plaintext connection, and
which transport an endpoint gets.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from mesh_support import load_case, load_config

from trellis.core.config import Cluster, Endpoint, HttpConnectionManager, Listener, TcpProxy
from trellis.core.filter_chain import select_chain
from trellis.core.tls import (
    DownstreamTls,
    SecretRef,
    SecretSource,
    UpstreamTls,
    ValidationSecret,
    upstream_tls_for,
)
from trellis.xds.compile_dynamic import (
    cluster_resource,
    endpoint_resource,
    listener_resource,
    secret_resource,
)
from trellis.xds.mesh import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    SECRET_TYPE,
    GrpcTranslator,
    MeshTls,
    ProxyIdentity,
    Resources,
    TranslateOptions,
    Translator,
    UnsupportedConfigError,
    to_dicts,
    translate,
)
from trellis.xds.mesh.mtls import sni, spiffe_id

ROOT = b"-----BEGIN CERTIFICATE-----\nTRELLIS TEST ROOT\n-----END CERTIFICATE-----\n"
RATINGS = "ratings.default.svc.cluster.local"


class Compiled:
    """One proxy's translated resources, each compiled as the proxy compiles ADS pushes."""

    def __init__(self, resources: Resources) -> None:
        self.listeners: dict[str, Listener] = {
            name: listener_resource(message) for name, message in resources[LISTENER_TYPE].items()
        }
        self.clusters: dict[str, Cluster] = {
            name: cluster_resource(message) for name, message in resources[CLUSTER_TYPE].items()
        }
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {
            name: endpoint_resource(message) for name, message in resources[ENDPOINT_TYPE].items()
        }
        self.secrets = {
            name: secret_resource(message)
            for name, message in resources.get(SECRET_TYPE, {}).items()
        }

    def transport(self, cluster: str, address: str) -> UpstreamTls | None:
        """The transport the proxy uses to `address` of `cluster`."""
        compiled = self.clusters[cluster]
        [endpoint] = [
            e for e in self.endpoints[cluster] if str(e.address).startswith(f"{address}:")
        ]
        return upstream_tls_for(
            compiled.transport_socket,
            compiled.transport_socket_matches,
            endpoint.transport_metadata,
        )


def _compiled(name: str) -> Compiled:
    case = load_case(name)
    return Compiled(translate(case.config, case.proxy, case.options))


def _chain_tls(listener: Listener, *, tls: bool, port: int = 0) -> DownstreamTls | str | None:
    """The TLS termination of the chain a connection to `port` (default: the listener's)
    gets ("refused": no chain)."""
    chain = select_chain(listener.chains, port or listener.address.port, is_tls=tls)
    return "refused" if chain is None else chain.tls


@pytest.mark.parametrize(
    "name", ["mtls_strict", "mtls_permissive", "mtls_port_disable", "mtls_mixed"]
)
def test_every_resource_compiles_over_ads_and_the_root_is_the_ca(name: str) -> None:
    compiled = _compiled(name)
    assert compiled.secrets == {"ROOTCA": ValidationSecret(trusted_ca=ROOT)}


def test_strict_ports_refuse_plaintext_and_require_a_mesh_client_certificate() -> None:
    compiled = _compiled("mtls_strict")
    for name in ("inbound_18080", "inbound_19090"):
        listener = compiled.listeners[name]
        assert _chain_tls(listener, tls=False) == "refused"
        tls = _chain_tls(listener, tls=True)
        assert isinstance(tls, DownstreamTls)
        assert tls.require_client_certificate
        assert tls.common.certificate == SecretRef("default", SecretSource.LOCAL)
        assert tls.common.validation == SecretRef("ROOTCA", SecretSource.ADS)


def test_permissive_ports_serve_both_and_authorize_both() -> None:
    compiled = _compiled("mtls_permissive")
    http = compiled.listeners["inbound_18080"]
    assert isinstance(_chain_tls(http, tls=True), DownstreamTls)
    assert _chain_tls(http, tls=False) is None  # a plaintext chain
    for chain in http.chains:  # both chains authorize
        assert isinstance(chain.filter, HttpConnectionManager)
        assert chain.filter.authz is not None
    tcp = compiled.listeners["inbound_19090"]
    assert all(isinstance(chain.filter, TcpProxy) for chain in tcp.chains)
    assert isinstance(_chain_tls(tcp, tls=True), DownstreamTls)
    assert _chain_tls(tcp, tls=False) is None


def test_transparent_capture_compiles_over_ads_with_per_port_mtls() -> None:
    compiled = _compiled("mtls_transparent")
    assert compiled.secrets == {"ROOTCA": ValidationSecret(trusted_ca=ROOT)}
    inbound = compiled.listeners["virtualInbound"]
    assert inbound.use_original_dst
    assert compiled.listeners["virtualOutbound"].use_original_dst
    # PERMISSIVE 18080: TLS and plaintext, each chain with its own connection manager
    tls = _chain_tls(inbound, tls=True, port=18080)
    assert isinstance(tls, DownstreamTls) and tls.require_client_certificate
    assert _chain_tls(inbound, tls=False, port=18080) is None
    http = [chain for chain in inbound.chains if chain.destination_port == 18080]
    assert len(http) == 2
    assert all(isinstance(chain.filter, HttpConnectionManager) for chain in http)
    # STRICT 19090: TLS only, a TCP proxy
    assert isinstance(_chain_tls(inbound, tls=True, port=19090), DownstreamTls)
    assert _chain_tls(inbound, tls=False, port=19090) == "refused"
    (tcp,) = [chain for chain in inbound.chains if chain.destination_port == 19090]
    assert isinstance(tcp.filter, TcpProxy) and tcp.filter.cluster == "inbound|19090||"
    # a port the workload does not have
    assert _chain_tls(inbound, tls=True, port=15006) == "refused"


def test_a_disabled_port_stays_plaintext_both_ways() -> None:
    compiled = _compiled("mtls_port_disable")
    admin = compiled.listeners["inbound_19090"]
    assert _chain_tls(admin, tls=False) is None
    assert _chain_tls(admin, tls=True) is None  # no inspection: the single plaintext chain
    assert _chain_tls(compiled.listeners["inbound_18080"], tls=False) == "refused"
    # clients send the 9090 port plaintext, as the sidecar there expects
    reviews = "reviews.default.svc.cluster.local"
    assert compiled.transport(f"outbound|9090||{reviews}", "127.0.0.1") is None
    assert compiled.transport(f"outbound|9080||{reviews}", "127.0.0.1") is not None


def test_auto_mtls_to_sidecars_only_verifying_their_identities() -> None:
    compiled = _compiled("mtls_mixed")
    whole = f"outbound|9080||{RATINGS}"
    tls = compiled.transport(whole, "10.0.0.11")
    assert isinstance(tls, UpstreamTls)
    assert tls.sni == sni(RATINGS, 9080) == f"outbound_.9080_._.{RATINGS}"
    assert tls.common.certificate == SecretRef("default", SecretSource.LOCAL)
    assert tls.common.validation == SecretRef("ROOTCA", SecretSource.ADS)
    wanted = spiffe_id("example.org", "default", "ratings")
    assert [(m.san_type, m.matcher.matches(wanted)) for m in tls.common.san_matchers] == [
        ("URI", True)
    ]
    assert not tls.common.san_matchers[0].matcher.matches(
        spiffe_id("example.org", "default", "legacy-ratings")
    )
    assert compiled.transport(whole, "10.0.0.12") is None  # no sidecar: plaintext
    subset = compiled.transport(f"outbound|9080|v1|{RATINGS}", "10.0.0.11")
    assert isinstance(subset, UpstreamTls) and subset.sni == f"outbound_.9080_.v1_.{RATINGS}"
    assert compiled.transport(f"outbound|9080|v2|{RATINGS}", "10.0.0.12") is None
    legacy = "outbound|80||legacy.default.svc.cluster.local"
    assert compiled.transport(legacy, "10.0.1.1") is None


def test_destination_rule_tls_overrides_auto_mtls() -> None:
    compiled = _compiled("mtls_mixed")
    payments = "outbound|8443||payments.default.svc.cluster.local"
    assert compiled.transport(payments, "10.0.2.1") is None  # DISABLE, sidecar or not
    billing = compiled.transport("outbound|80||billing.default.svc.cluster.local", "10.0.3.1")
    assert isinstance(billing, UpstreamTls)  # ISTIO_MUTUAL, though no sidecar is known
    assert billing.common.san_matchers[0].matcher.matches(
        spiffe_id("example.org", "default", "billing")
    )


def test_services_without_sidecars_are_byte_identical_with_or_without_a_root() -> None:
    case = load_case("mtls_mixed")
    plain_config = replace(case.config, tls=None, destination_rules=())
    with_tls = replace(plain_config, tls=case.config.tls)
    with_root = to_dicts(translate(with_tls, case.proxy, case.options))
    without = to_dicts(translate(plain_config, case.proxy, case.options))
    for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE):
        name = "outbound|80||legacy.default.svc.cluster.local"
        assert with_root[type_url][name] == without[type_url][name]
    assert SECRET_TYPE not in without
    assert "transport_socket_matches" not in str(without)


def test_istio_mutual_needs_the_mesh_ca() -> None:
    case = load_case("mtls_mixed")
    with pytest.raises(UnsupportedConfigError) as caught:
        translate(replace(case.config, tls=None), case.proxy)
    message = str(caught.value)
    assert message.startswith("DestinationRule default/billing: spec.trafficPolicy.tls.mode")
    assert "plaintext" in message


def test_proxyless_grpc_clients_get_no_mtls_and_refuse_istio_mutual() -> None:
    case = load_case("mtls_permissive")
    client = ProxyIdentity(node_id="g", workload_name="g", namespace="default")
    with_root = GrpcTranslator(case.config).translate(client)
    without = GrpcTranslator(replace(case.config, tls=None)).translate(client)
    assert to_dicts(with_root) == to_dicts(without)
    mixed = load_case("mtls_mixed").config
    with pytest.raises(UnsupportedConfigError, match="ISTIO_MUTUAL"):
        GrpcTranslator(mixed).translate(client)


def test_the_secret_and_tls_contexts_are_shared_not_rebuilt() -> None:
    case = load_case("mtls_permissive")
    translator = Translator(case.config)
    first = translator.translate_parts(case.proxy, case.options)
    other = ProxyIdentity(node_id="x", workload_name="x", namespace="default")
    second = translator.translate_parts(other, case.options)
    assert first.secrets["ROOTCA"] is second.secrets["ROOTCA"]
    assert first.shared is second.shared  # one outbound group: mTLS did not split it


def test_peer_authentication_modes_per_port_follow_istio_precedence() -> None:
    config = load_config(
        """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: trellis-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.0.0.1, ports: {http: 18080}, labels: {app: web}}
"""
    )
    config = replace(config, tls=MeshTls(ROOT))
    options = TranslateOptions(app_ports={18080: 8080})
    proxy = ProxyIdentity.from_workload_entry("p", config.workload_entries[0])
    listener = Compiled(translate(config, proxy, options)).listeners["inbound_18080"]
    assert _chain_tls(listener, tls=True) is None  # namespace DISABLE beats mesh STRICT
    other = replace(proxy, namespace="other")
    listener = Compiled(translate(config, other, options)).listeners["inbound_18080"]
    assert _chain_tls(listener, tls=False) == "refused"  # the mesh's STRICT
