"""The proxyless gRPC generator: which nodes, listener and route shapes, and what gRPC supports."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import json_format
from mesh_support import load_config

from trellis.api.loader import load_documents
from trellis.controlplane.ads_status import ProxyNode
from trellis.controlplane.mesh_state import MeshState
from trellis.controlplane.snapshot import Snapshot
from trellis.controlplane.store import StoredResource
from trellis.xds.mesh import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    GrpcTranslator,
    MeshConfig,
    ProxyIdentity,
    Translator,
    UnsupportedConfigError,
    is_grpc_node,
    translate_grpc,
)
from trellis.xds.protos import cluster_pb2, http_connection_manager_pb2, router_pb2

HOST = "payment.shop.svc.cluster.local"
V1 = f"outbound|50051|v1|{HOST}"
V2 = f"outbound|50051|v2|{HOST}"
MESH = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payment, namespace: shop}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}, {{number: 8080, name: http}}]
  workloadSelector: {{labels: {{app: payment}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: payment-v1, namespace: shop}}
spec: {{address: 10.0.0.1, ports: {{grpc: 9001}}, labels: {{app: payment, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: payment-v2, namespace: shop}}
spec: {{address: 10.0.0.2, labels: {{app: payment, version: v2}}}}
"""
RULE = f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: payment, namespace: shop}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy:
      loadBalancer: {{simple: LEAST_REQUEST}}
      connectionPool: {{tcp: {{maxConnections: 7}}, http: {{http2MaxRequests: 100}}}}
      outlierDetection: {{consecutive5xxErrors: 3}}
"""
CLIENT = ProxyIdentity(node_id="client", workload_name="client", namespace="shop")
ELSEWHERE = ProxyIdentity(node_id="other", workload_name="other", namespace="web")


def _virtual_service(http: str) -> str:
    return (
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: payment, namespace: shop}\n"
        "spec:\n  hosts: [payment]\n  http:\n" + textwrap.indent(textwrap.dedent(http), "  ")
    )


SPLIT = _virtual_service("""\
- match: [{uri: {prefix: /pay.Payment/}, headers: {x-canary: {exact: "1"}}}]
  route: [{destination: {host: payment, subset: v2}}]
  timeout: 2.5s
  retries: {attempts: 4, retryOn: "5xx,unavailable,connect-failure,resource-exhausted,503"}
- route:
  - {destination: {host: payment, subset: v1}, weight: 80}
  - {destination: {host: payment, subset: v2}, weight: 20}
  - {destination: {host: payment, subset: v2}, weight: 0}
""")


def _config(*texts: str) -> MeshConfig:
    return load_config("".join((MESH, *texts)))


def _dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def _routes(config: MeshConfig, port: int = 50051) -> list[rc.Route]:
    resources = translate_grpc(config, CLIENT)
    [host] = resources[ROUTE_TYPE][f"{HOST}:{port}"].virtual_hosts  # type: ignore[attr-defined]
    return list(host.routes)


# --- which nodes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "user_agent", "expected"),
    [
        ({"GENERATOR": "grpc"}, "", True),
        ({"GENERATOR": "GRPC "}, "envoy", True),
        ({"GENERATOR": "sidecar"}, "gRPC C-core /1.85.3", False),  # metadata decides
        ({}, "gRPC C-core /1.85.3", True),
        ({}, "gRPC Go/1.70.0", True),
        ({}, "envoy/1.33.0", False),
        ({}, "grpcurl-like", False),
        ({"NAMESPACE": "shop"}, "", False),
    ],
)
def test_grpc_nodes_are_told_by_generator_metadata_then_user_agent(
    metadata: dict[str, object], user_agent: str, expected: bool
) -> None:
    assert is_grpc_node(metadata, user_agent) is expected


# --- listeners and routes --------------------------------------------------------------


def test_api_listeners_for_every_name_of_a_grpc_port_share_one_route_config() -> None:
    resources = translate_grpc(_config(), CLIENT)
    names = {f"{name}:50051" for name in ("payment", "payment.shop", "payment.shop.svc", HOST)}
    names |= {"payment", "payment.shop", "payment.shop.svc", HOST}  # portless: the lowest port
    assert set(resources[LISTENER_TYPE]) == names  # the HTTP/1.1 port 8080 gets none
    assert set(resources[ROUTE_TYPE]) == {f"{HOST}:50051"}
    for name, listener in resources[LISTENER_TYPE].items():
        assert listener.name == name  # type: ignore[attr-defined]
        assert not listener.HasField("address")
        manager = http_connection_manager_pb2.HttpConnectionManager()
        assert listener.api_listener.api_listener.Unpack(manager)  # type: ignore[attr-defined]
        assert manager.rds.route_config_name == f"{HOST}:50051"
        assert manager.rds.config_source.HasField("ads")
        assert manager.http_filters[-1].typed_config.Is(router_pb2.Router.DESCRIPTOR)
    [host] = resources[ROUTE_TYPE][f"{HOST}:50051"].virtual_hosts  # type: ignore[attr-defined]
    assert set(host.domains) == names
    [default] = host.routes
    assert default.match.prefix == "/"
    assert default.route.cluster == f"outbound|50051||{HOST}"
    assert default.route.retry_policy.retry_on == "unavailable,cancelled"
    assert default.route.retry_policy.num_retries.value == 2


def test_short_names_only_from_the_services_namespace() -> None:
    listeners = set(translate_grpc(_config(), ELSEWHERE)[LISTENER_TYPE])
    assert f"{HOST}:50051" in listeners and "payment.shop:50051" in listeners
    assert "payment:50051" not in listeners and "payment" not in listeners


def test_requested_listeners_narrow_lds_and_rds_only() -> None:
    everything = translate_grpc(_config(RULE), CLIENT)
    asked = translate_grpc(_config(RULE), CLIENT, ["payment.shop:50051", "unknown:1"])
    assert set(asked[LISTENER_TYPE]) == {"payment.shop:50051"}
    assert set(asked[ROUTE_TYPE]) == {f"{HOST}:50051"}
    assert asked[CLUSTER_TYPE].keys() == everything[CLUSTER_TYPE].keys()
    assert set(translate_grpc(_config(), CLIENT, [])[ROUTE_TYPE]) == set()


def test_virtual_service_routes_as_grpc_supports_them() -> None:
    canary, split = _routes(_config(RULE, SPLIT))
    assert canary.match.prefix == "/pay.Payment/"
    assert [h.name for h in canary.match.headers] == ["x-canary"]
    assert canary.match.headers[0].string_match.exact == "1"
    assert canary.route.cluster == V2
    assert canary.route.max_stream_duration.max_stream_duration.ToMilliseconds() == 2500
    assert not canary.route.HasField("timeout")  # grpc reads max_stream_duration only
    policy = canary.route.retry_policy
    assert policy.retry_on == "unavailable,resource-exhausted"  # gRPC status conditions only
    assert policy.num_retries.value == 4
    assert not policy.retriable_status_codes and not policy.retry_host_predicate
    weighted = [(c.name, c.weight.value) for c in split.route.weighted_clusters.clusters]
    assert weighted == [(V1, 80), (V2, 20)]  # the weight-0 destination is dropped
    assert split.route.retry_policy.retry_on == "unavailable,cancelled"  # Istio's default
    assert not split.route.HasField("max_stream_duration")


@pytest.mark.parametrize(
    ("retries", "expected"),
    [
        ("{attempts: 0}", None),
        ('{attempts: 3, retryOn: "5xx,gateway-error,503"}', None),  # nothing gRPC can see
        ("{attempts: 3}", "unavailable,cancelled"),
        (
            '{attempts: 1, retryOn: "internal,deadline-exceeded,internal"}',
            "internal,deadline-exceeded",
        ),
    ],
)
def test_retry_conditions_kept_for_grpc(retries: str, expected: str | None) -> None:
    vs = _virtual_service(f"- route: [{{destination: {{host: payment}}}}]\n  retries: {retries}\n")
    [route] = _routes(_config(vs))
    assert route.route.HasField("retry_policy") is (expected is not None)
    if expected is not None:
        assert route.route.retry_policy.retry_on == expected


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        (
            "- route: [{destination: {host: payment}}]\n"
            "  retries: {attempts: 2, perTryTimeout: 1s}",
            "spec.http[0].retries.perTryTimeout",
        ),
        ("- redirect: {uri: /elsewhere}", "spec.http[0].redirect"),
        ("- directResponse: {status: 503}", "spec.http[0].directResponse"),
        (
            "- route: [{destination: {host: payment}}]\n  rewrite: {uri: /v2/}",
            "spec.http[0].rewrite",
        ),
        (
            "- route: [{destination: {host: payment}}]\n  headers: {request: {set: {a: b}}}",
            "spec.http[0].headers",
        ),
        (
            "- route: [{destination: {host: payment}, headers: {request: {set: {a: b}}}}]",
            "spec.http[0].route[0].headers",
        ),
        (
            "- match: [{queryParams: {a: {exact: b}}}]\n  route: [{destination: {host: payment}}]",
            "spec.http[0].match[0].queryParams",
        ),
    ],
)
def test_what_grpc_clients_cannot_do_is_an_error_naming_the_field(rule: str, path: str) -> None:
    with pytest.raises(UnsupportedConfigError) as caught:
        translate_grpc(_config(_virtual_service(rule + "\n")), CLIENT)
    message = str(caught.value)
    assert path in message and "VirtualService shop/payment" in message
    assert "proxyless gRPC" in message


# --- clusters and endpoints ------------------------------------------------------------


def test_clusters_carry_only_what_grpc_reads() -> None:
    clusters = translate_grpc(_config(RULE), CLIENT)[CLUSTER_TYPE]
    assert set(clusters) == {
        f"outbound|{port}|{subset}|{HOST}" for port in (50051, 8080) for subset in ("", "v1", "v2")
    }
    default = clusters[f"outbound|50051||{HOST}"]
    assert isinstance(default, cluster_pb2.Cluster)
    assert default.type == cluster_pb2.Cluster.EDS
    assert default.eds_cluster_config.service_name == default.name
    assert default.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN  # not the sidecars' LEAST_REQUEST
    [limits] = default.circuit_breakers.thresholds
    assert _dict(limits) == {"max_requests": 2**32 - 1}  # Istio's default, not grpc's 1024
    v2 = clusters[V2]
    assert isinstance(v2, cluster_pb2.Cluster)
    assert v2.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST  # passed on: the client decides
    assert _dict(v2.circuit_breakers) == {"thresholds": [{"max_requests": 100}]}
    for field in ("outlier_detection", "connect_timeout", "common_lb_config"):
        assert not v2.HasField(field)


def test_random_is_passed_on_for_the_client_to_nack() -> None:
    rule = RULE.replace("LEAST_REQUEST", "RANDOM")
    cluster = translate_grpc(_config(rule), CLIENT)[CLUSTER_TYPE][V2]
    assert cluster.lb_policy == cluster_pb2.Cluster.RANDOM  # type: ignore[attr-defined]


def test_endpoints_name_a_weighted_locality() -> None:
    assignments = translate_grpc(_config(RULE), CLIENT)[ENDPOINT_TYPE]
    assert _dict(assignments[V1]) == {
        "cluster_name": V1,
        "endpoints": [
            {
                "locality": {},
                "load_balancing_weight": 1,
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "10.0.0.1", "port_value": 9001}
                            }
                        },
                        "load_balancing_weight": 1,
                    }
                ],
            }
        ],
    }
    both = assignments[f"outbound|50051||{HOST}"]
    [locality] = both.endpoints  # type: ignore[attr-defined]
    assert locality.HasField("locality") and len(locality.lb_endpoints) == 2


def test_snapshot_is_consistent_and_shared_by_clients_of_one_namespace() -> None:
    config = _config(RULE, SPLIT)
    translator = GrpcTranslator(config)
    one = translator.translate(CLIENT)
    two = translator.translate(ProxyIdentity(node_id="b", workload_name="b", namespace="shop"))
    assert one[LISTENER_TYPE][f"{HOST}:50051"] is two[LISTENER_TYPE][f"{HOST}:50051"]
    items = [message for by_name in one.values() for message in by_name.values()]
    Snapshot.of("1", items).check()
    from_translator = translate_grpc(Translator(config), CLIENT)
    assert {t: set(m) for t, m in from_translator.items()} == {t: set(m) for t, m in one.items()}


# --- the control plane's choice -------------------------------------------------------------


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


@pytest.mark.parametrize(
    "node",
    [
        ProxyNode(id="g", namespace="shop", metadata={"GENERATOR": "grpc"}),
        ProxyNode(id="g", namespace="shop", user_agent="gRPC C-core /1.85.3"),
    ],
)
def test_mesh_state_serves_grpc_nodes_the_grpc_resources(node: ProxyNode) -> None:
    state = MeshState()
    state.load(_stored(MESH + RULE + SPLIT), "1")
    snapshot = state.snapshot_for(node)
    listeners = snapshot.get(LISTENER_TYPE).names
    assert "payment.shop:50051" in listeners and "outbound" not in listeners
    sidecar = state.snapshot_for(ProxyNode(id="s", namespace="shop"))
    assert "outbound" in sidecar.get(LISTENER_TYPE).names
