"""The control plane's mesh state with its CA: the ROOTCA secret reaches every sidecar's
snapshot, shared, and a PeerAuthentication change changes what proxies get."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from envoy.config.listener.v3 import listener_pb2

from trellis.api.loader import load_documents
from trellis.controlplane.ads_status import ProxyNode
from trellis.controlplane.ca_files import open_authority
from trellis.controlplane.mesh_state import MeshState
from trellis.controlplane.snapshot import LISTENER_TYPE, SECRET_TYPE
from trellis.controlplane.store import StoredResource
from trellis.controlplane.translatable import translation_findings
from trellis.core.tls import ValidationSecret
from trellis.xds.compile_dynamic import secret_resource
from trellis.xds.mesh import MeshTls

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 80, name: http, targetPort: 18080}]
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec:
  address: 127.0.0.1
  labels: {app: web, security.istio.io/tlsMode: istio}
  ports: {http: 18080}
"""
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""
WEB = ProxyNode(
    id="web",
    workload_name="web",
    namespace="shop",
    metadata={"TRELLIS_APP_PORTS": "18080:8080"},
)
CLIENT = ProxyNode(id="client", workload_name="client", namespace="shop")
NOW = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)


def _stored(text: str) -> list[StoredResource]:
    stored = []
    for resource in load_documents(text, "test.yaml"):
        document = resource.model_dump(by_alias=True, exclude_none=True, mode="json")
        stored.append(
            StoredResource(
                api_version=resource.api_version,
                kind=resource.kind,
                namespace=resource.metadata.namespace,
                name=resource.metadata.name,
                spec_json=json.dumps(document["spec"]),
                resource_version="1",
                generation=1,
                uid="u",
                created_at="",
                updated_at="",
            )
        )
    return stored


def _state(tmp_path: Path) -> tuple[MeshState, bytes]:
    ca = open_authority(tmp_path, trust_domain="cluster.local", now=NOW)
    root = ca.root_bundle_pem.encode()
    state = MeshState()
    state.load(_stored(MESH), "1")
    state.set_tls(MeshTls(root, trust_domain=ca.trust_domain))
    return state, root


def _inbound_protocols(state: MeshState) -> list[str]:
    [resource] = [
        r for r in state.snapshot_for(WEB).get(LISTENER_TYPE) if r.name == "inbound_18080"
    ]
    listener = resource.message
    assert isinstance(listener, listener_pb2.Listener)
    return [chain.filter_chain_match.transport_protocol for chain in listener.filter_chains]


def test_every_sidecar_gets_the_ca_root_as_one_shared_set(tmp_path: Path) -> None:
    state, _ = _state(tmp_path)
    web, client = state.snapshot_for(WEB), state.snapshot_for(CLIENT)
    assert web.get(SECRET_TYPE) is client.get(SECRET_TYPE)
    [resource] = list(web.get(SECRET_TYPE))
    assert resource.name == "ROOTCA"
    web.check()


def test_the_secret_is_the_ca_root_the_proxy_compiles(tmp_path: Path) -> None:
    state, root = _state(tmp_path)
    [resource] = list(state.snapshot_for(WEB).get(SECRET_TYPE))
    assert secret_resource(resource.message) == ValidationSecret(trusted_ca=root)
    assert b"PRIVATE KEY" not in resource.encoded


def test_without_a_ca_no_secret_and_plaintext(tmp_path: Path) -> None:
    state = MeshState()
    state.load(_stored(MESH + "---" + STRICT), "1")
    assert len(state.snapshot_for(WEB).get(SECRET_TYPE)) == 0
    assert _inbound_protocols(state) == [""]


def test_a_peer_authentication_change_changes_the_inbound_chains(tmp_path: Path) -> None:
    state, _ = _state(tmp_path)
    assert _inbound_protocols(state) == ["tls", "raw_buffer"]  # PERMISSIVE by default
    [policy] = _stored(STRICT)
    state.put(policy)
    assert _inbound_protocols(state) == ["tls"]
    state.remove(policy.key)
    assert _inbound_protocols(state) == ["tls", "raw_buffer"]
    state.set_tls(None)
    assert _inbound_protocols(state) == [""]


def test_apply_check_accepts_istio_mutual_since_the_control_plane_has_a_ca() -> None:
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"""
    resources = load_documents(MESH + "---" + rule, "test.yaml")
    assert translation_findings(resources) == []
