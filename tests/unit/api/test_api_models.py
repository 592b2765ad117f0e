"""Real Istio YAML parses unchanged into the models, with Istio's defaults, and round-trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from pydantic import ValidationError

import trellis.api.networking as networking
from trellis.api.loader import load_documents, load_paths, parse_resource
from trellis.api.meta import Resource
from trellis.api.networking import (
    DestinationRule,
    Location,
    NetworkingResource,
    Resolution,
    ServiceEntry,
    SimpleLB,
    TLSMode,
    VirtualService,
    WorkloadEntry,
)

TESTDATA = Path(__file__).parent / "testdata"
R = TypeVar("R", bound=Resource)


def _by_name(resources: list[NetworkingResource], kind: type[R], name: str) -> R:
    found = [item for item in resources if isinstance(item, kind) and item.metadata.name == name]
    assert len(found) == 1, f"{kind.__name__} {name}"
    return found[0]


@pytest.fixture(scope="module")
def resources() -> list[NetworkingResource]:
    return list(load_paths([TESTDATA]))


def test_every_kind_loads_from_the_directory(resources: list[NetworkingResource]) -> None:
    kinds = sorted(type(item).__name__ for item in resources)
    assert kinds == sorted(
        ["VirtualService"] * 3
        + ["DestinationRule"] * 2
        + ["ServiceEntry"] * 4
        + ["WorkloadEntry"] * 3
    )


def test_bookinfo_reviews_virtual_service(resources: list[NetworkingResource]) -> None:
    reviews = _by_name(resources, VirtualService, "reviews")
    assert isinstance(reviews, VirtualService)
    assert reviews.api_version == "networking.istio.io/v1beta1"
    assert reviews.key == ("VirtualService", "default", "reviews")
    first, second = reviews.spec.http
    assert first.match[0].headers["end-user"].exact == "jason"
    assert first.route[0].destination.subset == "v2"
    assert first.route[0].weight == 0  # omitted: the only destination gets everything
    assert [(r.destination.subset, r.weight) for r in second.route] == [("v1", 75), ("v3", 25)]
    assert second.timeout is None and second.retries is None


def test_ratings_route_details(resources: list[NetworkingResource]) -> None:
    ratings = _by_name(resources, VirtualService, "ratings")
    assert isinstance(ratings, VirtualService)
    rule = ratings.spec.http[0]
    assert rule.name == "ratings-prefix"
    assert rule.match[0].uri is not None and rule.match[0].uri.prefix == "/ratings/v2/"
    assert rule.match[0].ignore_uri_case is True
    assert rule.rewrite is not None and rule.rewrite.uri == "/ratings/"
    assert rule.timeout == 10.0
    assert rule.retries is not None
    assert rule.retries.attempts == 3
    assert rule.retries.per_try_timeout == 2.0
    assert rule.retries.retry_on_conditions == (
        "gateway-error",
        "connect-failure",
        "refused-stream",
    )
    assert rule.retries.retriable_status_codes == (503,)
    destination = rule.route[0]
    assert destination.destination.port is not None
    assert destination.destination.port.number == 9080
    assert destination.headers is not None and destination.headers.request is not None
    assert destination.headers.request.set == {"x-routed-by": "trellis"}
    assert destination.headers.response is not None
    assert destination.headers.response.remove == ("x-internal",)


def test_destination_rule_policies_and_defaults(resources: list[NetworkingResource]) -> None:
    ratings = _by_name(resources, DestinationRule, "ratings")
    assert isinstance(ratings, DestinationRule)
    policy = ratings.spec.traffic_policy
    assert policy is not None and policy.connection_pool is not None
    tcp, http = policy.connection_pool.tcp, policy.connection_pool.http
    assert tcp is not None and http is not None
    assert (tcp.max_connections, tcp.connect_timeout) == (100, 0.03)
    assert http.http1_max_pending_requests == 1
    assert http.http2_max_requests == 1000
    assert http.max_requests_per_connection == 10
    assert http.max_retries == 3
    assert http.idle_timeout == 300.0
    outlier = policy.outlier_detection
    assert outlier is not None
    assert outlier.consecutive_5xx_errors == 7
    assert outlier.consecutive_gateway_errors == 3
    assert (outlier.interval, outlier.base_ejection_time) == (300.0, 900.0)
    assert (outlier.max_ejection_percent, outlier.min_health_percent) == (50, 20)
    assert policy.tls is not None and policy.tls.mode is TLSMode.ISTIO_MUTUAL
    port_policy = policy.for_port(9080)
    assert port_policy is not None and port_policy.load_balancer is not None
    assert port_policy.load_balancer.simple is SimpleLB.LEAST_REQUEST
    assert policy.for_port(1) is None

    reviews = _by_name(resources, DestinationRule, "reviews")
    assert isinstance(reviews, DestinationRule)
    assert [subset.name for subset in reviews.spec.subsets] == ["v1", "v2", "v3"]
    v2 = reviews.spec.subset("v2")
    assert v2 is not None and v2.labels == {"version": "v2"}
    assert v2.traffic_policy is not None and v2.traffic_policy.load_balancer is not None
    assert v2.traffic_policy.load_balancer.simple is SimpleLB.ROUND_ROBIN
    assert reviews.spec.subset("v4") is None


def test_istio_defaults_for_unset_fields() -> None:
    rule = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "d"},
            "spec": {
                "host": "d",
                "trafficPolicy": {
                    "outlierDetection": {},
                    "connectionPool": {"tcp": {"maxConnections": 0}, "http": {}},
                    "loadBalancer": {},
                    "tls": {},
                },
            },
        }
    )
    assert isinstance(rule, DestinationRule)
    assert rule.metadata.namespace == "default"
    policy = rule.spec.traffic_policy
    assert policy is not None
    assert policy.outlier_detection is not None
    outlier = policy.outlier_detection
    assert (outlier.consecutive_5xx_errors, outlier.consecutive_gateway_errors) == (5, 0)
    assert (outlier.interval, outlier.base_ejection_time) == (10.0, 30.0)
    assert (outlier.max_ejection_percent, outlier.min_health_percent) == (10, 0)
    assert policy.connection_pool is not None
    tcp, http = policy.connection_pool.tcp, policy.connection_pool.http
    assert tcp is not None and http is not None
    assert tcp.max_connections == 2**32 - 1  # proto3: 0 is unset, Istio's default applies
    assert tcp.connect_timeout == 10.0
    assert (http.http2_max_requests, http.max_requests_per_connection) == (2**32 - 1, 0)
    assert http.idle_timeout == 3600.0
    assert policy.load_balancer is not None
    assert policy.load_balancer.simple is SimpleLB.UNSPECIFIED
    assert policy.tls is not None and policy.tls.mode is TLSMode.DISABLE


def test_registry_entries(resources: list[NetworkingResource]) -> None:
    reviews = _by_name(resources, ServiceEntry, "reviews")
    assert isinstance(reviews, ServiceEntry)
    assert reviews.spec.location is Location.MESH_INTERNAL
    assert reviews.spec.resolution is Resolution.STATIC
    port = reviews.spec.ports[0]
    assert (port.number, port.name, port.protocol, port.target_port) == (9080, "http", "HTTP", 8080)
    assert port.is_http
    assert reviews.spec.workload_selector is not None
    assert reviews.spec.workload_selector.labels == {"app": "reviews"}

    ratings = _by_name(resources, ServiceEntry, "ratings")
    assert isinstance(ratings, ServiceEntry)
    assert ratings.spec.ports[0].protocol == "HTTP"  # from the port name "http-api"
    endpoint = ratings.spec.endpoints[0]
    assert endpoint.port_for(ratings.spec.ports[0]) == 9081

    httpbin = _by_name(resources, ServiceEntry, "external-svc-httpbin")
    assert isinstance(httpbin, ServiceEntry)
    assert httpbin.metadata.namespace == "egress"
    assert httpbin.spec.location is Location.MESH_EXTERNAL
    assert httpbin.spec.resolution is Resolution.DNS
    assert httpbin.spec.export_to == (".",)
    assert [p.is_http for p in httpbin.spec.ports] == [True, False]

    mongo = _by_name(resources, ServiceEntry, "mongo")
    assert isinstance(mongo, ServiceEntry)
    assert [p.protocol for p in mongo.spec.ports] == ["MONGO", "TCP", "TCP"]

    v1 = _by_name(resources, WorkloadEntry, "reviews-v1")
    assert isinstance(v1, WorkloadEntry)
    assert v1.spec.port_for(port) == 8081
    v2 = _by_name(resources, WorkloadEntry, "reviews-v2")
    assert isinstance(v2, WorkloadEntry)
    assert v2.spec.port_for(port) == 8080  # targetPort
    assert (v2.spec.network, v2.spec.locality, v2.spec.weight) == (
        "net1",
        "us-east1/us-east1-b",
        3,
    )
    assert v2.spec.service_account == "bookinfo-reviews"


def test_istio_defaults_for_service_entry() -> None:
    entry = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "ServiceEntry",
            "metadata": {"name": "ext"},
            "spec": {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls"}]},
        }
    )
    assert isinstance(entry, ServiceEntry)
    assert entry.spec.location is Location.MESH_EXTERNAL
    assert entry.spec.resolution is Resolution.NONE
    assert entry.spec.ports[0].protocol == "TLS"


def test_tcp_routes(resources: list[NetworkingResource]) -> None:
    mongo = _by_name(resources, VirtualService, "mongo")
    assert isinstance(mongo, VirtualService)
    route = mongo.spec.tcp[0]
    assert route.match[0].port == 27017
    assert [
        (d.destination.port.number if d.destination.port else 0, d.weight) for d in route.route
    ] == [
        (5555, 80),
        (5556, 20),
    ]


def test_round_trip_through_to_document(resources: list[NetworkingResource]) -> None:
    for resource in resources:
        document = resource.to_document()
        assert list(document) == ["apiVersion", "kind", "metadata", "spec"]
        text = yaml.safe_dump(document)
        again = load_documents(text, "roundtrip.yaml")
        assert again == [resource]
        assert json.loads(json.dumps(document)) == document


def test_to_document_is_camel_case_and_omits_defaults(resources: list[NetworkingResource]) -> None:
    ratings = _by_name(resources, DestinationRule, "ratings")
    document = ratings.to_document()
    outlier = document["spec"]["trafficPolicy"]["outlierDetection"]
    assert outlier["consecutive5xxErrors"] == 7
    assert outlier["interval"] == "5m"
    assert document["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["connectTimeout"] == "30ms"
    reviews = _by_name(resources, VirtualService, "reviews")
    route = reviews.to_document()["spec"]["http"][0]["route"][0]
    assert route == {"destination": {"host": "reviews", "subset": "v2"}}
    assert reviews.to_document()["metadata"] == {"name": "reviews", "namespace": "default"}


def test_json_and_list_kind_and_snake_case_keys() -> None:
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "w1", "namespace": "shop", "resourceVersion": "7"},
        "spec": {"address": "10.1.1.1", "service_account": "shop"},
    }
    listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": [entry]})
    loaded = load_documents(listed, "list.json")
    assert len(loaded) == 1
    workload = loaded[0]
    assert isinstance(workload, WorkloadEntry)
    assert workload.spec.service_account == "shop"
    assert workload.metadata.resource_version == "7"
    assert workload.key == ("WorkloadEntry", "shop", "w1")
    assert workload.to_document()["metadata"]["resourceVersion"] == "7"
    assert load_documents(json.dumps(entry), "one.json") == loaded
    assert load_documents(json.dumps([entry]), "array.json") == loaded


def test_models_are_frozen(resources: list[NetworkingResource]) -> None:
    reviews = _by_name(resources, VirtualService, "reviews")
    assert isinstance(reviews, VirtualService)
    with pytest.raises(ValidationError):
        reviews.spec.hosts = ("other",)
    assert isinstance(reviews.spec.http, tuple)


def test_empty_documents_and_comments_are_skipped() -> None:
    text = "# nothing\n---\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
    text += "metadata: {name: a}\nspec: {address: 10.0.0.1, labels: {since: 2024-01-01}}\n"
    (workload,) = load_documents(text, "a.yaml")
    assert isinstance(workload, WorkloadEntry)
    assert workload.spec.labels == {"since": "2024-01-01"}  # a date stays a string


def test_public_api_is_pinned() -> None:
    assert set(networking.__all__) >= {
        "ServiceEntry",
        "WorkloadEntry",
        "VirtualService",
        "DestinationRule",
        "HTTPRoute",
        "TrafficPolicy",
        "NetworkingResource",
    }
    for name in networking.__all__:
        assert getattr(networking, name) is not None
    assert [kind.__name__ for kind in networking.KINDS] == [
        "ServiceEntry",
        "WorkloadEntry",
        "VirtualService",
        "DestinationRule",
    ]
