"""The metadata exchange's encoding, decoding, header handling and the labels it yields."""

from __future__ import annotations

import base64

from google.protobuf import struct_pb2

from trellis.core.config import NodeIdentity, TrafficDirection
from trellis.core.labels import (
    peer_labels,
    principal_namespace,
    qualify_service,
    with_peer_identity,
)
from trellis.core.peer_metadata import (
    HEADER,
    HEADER_ID,
    UNKNOWN_PEER,
    PeerExchange,
    WorkloadMetadata,
    decode,
    encode,
    is_mesh_cluster,
)

NODE = NodeIdentity(
    id="sidecar~10.0.0.1~web-1.shop~shop.svc.cluster.local",
    workload_name="web",
    namespace="shop",
    service_account="web",
    app="web",
    version="v1",
    canonical_service="web",
    canonical_revision="v1",
    cluster_id="Kubernetes",
    instance="web-1",
)


def test_encoding_is_istios_struct() -> None:
    value = PeerExchange(NODE).headers[1][1]
    struct = struct_pb2.Struct.FromString(base64.b64decode(value))
    fields = {key: v.string_value for key, v in struct.fields.items() if key != "LABELS"}
    assert fields == {
        "NAME": "web-1",
        "NAMESPACE": "shop",
        "WORKLOAD_NAME": "web",
        "CLUSTER_ID": "Kubernetes",
        "OWNER": "kubernetes://apis/apps/v1/namespaces/shop/deployments/web",
    }
    labels = {k: v.string_value for k, v in struct.fields["LABELS"].struct_value.fields.items()}
    assert labels == {
        "app": "web",
        "version": "v1",
        "service.istio.io/canonical-name": "web",
        "service.istio.io/canonical-revision": "v1",
    }


def test_decode_round_trips_and_tolerates_istio_extras() -> None:
    own = WorkloadMetadata(
        workload_name="cart", namespace="shop", app="cart", version="v2",
        canonical_service="cart", canonical_revision="v2", cluster_id="c1",
    )  # fmt: skip
    assert decode(encode(own)) == own
    legacy = struct_pb2.Struct()
    legacy.fields["WORKLOAD_NAME"].string_value = "db"
    legacy.fields["NAMESPACE"].string_value = "shop"
    legacy.fields["ISTIO_VERSION"].string_value = "1.20.0"
    legacy.fields["APP_CONTAINERS"].string_value = "db"
    legacy.fields["LABELS"].struct_value.fields["app"].string_value = "db"
    decoded = decode(base64.b64encode(legacy.SerializeToString()).rstrip(b"="))
    assert decoded is not None
    assert (decoded.workload_name, decoded.namespace, decoded.app) == ("db", "shop", "db")
    assert decoded.version == "unknown" and decoded.canonical_revision == "latest"


def test_garbage_is_not_a_peer() -> None:
    assert decode(b"!!!not base64") is None
    assert decode(base64.b64encode(b"\xff\xff\xff")) is None
    assert decode(b"A" * 10_000) is None


def test_take_removes_both_headers_and_caches_the_peer() -> None:
    exchange = PeerExchange(NODE)
    value = encode(WorkloadMetadata(workload_name="cart", namespace="shop"))
    headers = [(b"host", b"cart"), (HEADER_ID, b"cart-1"), (HEADER, value), (b"accept", b"*/*")]
    peer = exchange.take(headers)
    assert headers == [(b"host", b"cart"), (b"accept", b"*/*")]
    assert peer is not None and peer.workload_name == "cart"
    assert exchange.take([(HEADER, value)]) is peer  # decoded once
    assert exchange.take([(b"host", b"x")]) is None
    assert exchange.take([(HEADER, b"%%%")]) is UNKNOWN_PEER


def test_the_cache_is_bounded() -> None:
    exchange = PeerExchange(NODE, max_peers=4)
    for i in range(10):
        exchange.peer(encode(WorkloadMetadata(workload_name=f"w{i}")))
    assert len(exchange._peers) <= 4


def test_only_mesh_service_clusters_get_our_metadata() -> None:
    assert is_mesh_cluster("outbound|80||cart.shop.svc.cluster.local")
    assert not is_mesh_cluster("upstream")
    assert not is_mesh_cluster("inbound|8080||")


def test_service_hosts_are_qualified_as_istio_reports_them() -> None:
    assert qualify_service("cart", "shop") == "cart.shop.svc.cluster.local"
    assert qualify_service("cart.shop", "shop") == "cart.shop.svc.cluster.local"
    assert qualify_service("cart.shop.svc", "shop") == "cart.shop.svc.cluster.local"
    assert qualify_service("cart.shop.svc.cluster.local", "x") == "cart.shop.svc.cluster.local"
    assert qualify_service("example.com", "shop") == "example.com"
    assert qualify_service("10.0.0.1", "shop") == "10.0.0.1"
    assert qualify_service("cart", "unknown") == "cart"


def test_destination_reporter_labels_the_client_workload() -> None:
    client = WorkloadMetadata(workload_name="checkout", namespace="shop", app="checkout",
                              version="v3", canonical_service="checkout",
                              canonical_revision="v3", cluster_id="east")  # fmt: skip
    labels = peer_labels(NODE, TrafficDirection.INBOUND, "web", peer=client)
    assert labels.reporter == "destination"
    assert (labels.source_workload, labels.source_app, labels.source_version) == (
        "checkout", "checkout", "v3",
    )  # fmt: skip
    assert labels.source_cluster == "east" and labels.destination_cluster == "Kubernetes"
    assert labels.destination_service == "web.shop.svc.cluster.local"
    assert labels.destination_service_name == "web"
    assert labels.destination_workload == "web"


def test_source_reporter_labels_the_server_workload() -> None:
    server = WorkloadMetadata(workload_name="cart-v2", namespace="shop", app="cart",
                              version="v2", canonical_service="cart")  # fmt: skip
    host = "cart.shop.svc.cluster.local"
    labels = peer_labels(NODE, TrafficDirection.OUTBOUND, host, peer=server)
    assert labels.reporter == "source"
    assert (labels.destination_workload, labels.destination_app) == ("cart-v2", "cart")
    assert labels.destination_canonical_service == "cart"
    assert labels.source_workload == "web" and labels.destination_service == host


def test_a_principal_tells_the_peer_namespace_when_nothing_else_does() -> None:
    assert principal_namespace("spiffe://cluster.local/ns/shop/sa/db") == "shop"
    assert principal_namespace("spiffe://cluster.local/x") == "unknown"
    tcp = peer_labels(NODE, TrafficDirection.INBOUND, "db", protocol="tcp")
    labelled = with_peer_identity(tcp, "spiffe://cluster.local/ns/pay/sa/api", NODE.principal)
    assert labelled.source_workload_namespace == "pay"
    assert labelled.source_workload == "unknown"  # TCP peers do not exchange metadata (yet)
