"""Istio's metadata exchange between two real sidecars over mTLS: each side's metrics
name the other's workload, and neither application sees the exchange headers."""

from __future__ import annotations

import pytest

from .client import request
from .harness import ProxyFactory
from .mesh_pair import CLIENT_ID, SERVER_ID, SERVICE, start_pair
from .pki import TestCa
from .proxyproc import Sample, metric_sum
from .upstream import HttpUpstream

REQUESTS = "istio_requests_total"
EXCHANGE_HEADERS = ("x-envoy-peer-metadata", "x-envoy-peer-metadata-id")


def _series(samples: list[Sample], **labels: str) -> list[dict[str, str]]:
    return [
        s.labels
        for s in samples
        if s.name == REQUESTS and all(s.labels.get(k) == v for k, v in labels.items())
    ]


@pytest.fixture
def ca() -> TestCa:
    return TestCa()


def test_both_reporters_name_the_peer_workload(
    start_proxy: ProxyFactory, ca: TestCa, upstream: HttpUpstream
) -> None:
    pair = start_pair(start_proxy, ca, upstream.port)
    for host in ("echo", "echo.demo", SERVICE):
        response = request(pair.client_port, host=host)
        assert response.status == 200, response
        for name in EXCHANGE_HEADERS:
            assert response.header(name) is None, f"{name} reached the client application"
    assert request(pair.client_port, "GET", "/status/503", host="echo").status == 503
    for received in upstream.requests:
        for name in EXCHANGE_HEADERS:
            assert received.header(name) is None, f"{name} reached the server application"

    inbound = pair.server.samples()
    assert metric_sum(inbound, REQUESTS, reporter="destination") == 4
    series = _series(inbound, reporter="destination")
    for labels in series:
        # The client's workload, from its metadata; its identity, from mTLS.
        assert labels["source_workload"] == "web", labels
        assert labels["source_workload_namespace"] == "default", labels
        assert labels["source_app"] == "web", labels
        assert labels["source_version"] == "v1", labels
        assert labels["source_canonical_service"] == "web", labels
        assert labels["source_canonical_revision"] == "v1", labels
        assert labels["source_cluster"] == "local", labels
        assert labels["source_principal"] == CLIENT_ID, labels
        # Its own workload, and the service by its FQDN whatever name the client used.
        assert labels["destination_workload"] == "echo-v2", labels
        assert labels["destination_workload_namespace"] == "demo", labels
        assert labels["destination_app"] == "echo", labels
        assert labels["destination_canonical_service"] == "echo-svc", labels
        assert labels["destination_canonical_revision"] == "v2", labels
        assert labels["destination_service"] == SERVICE, labels
        assert labels["destination_service_name"] == "echo", labels
        assert labels["destination_service_namespace"] == "demo", labels
        assert labels["destination_principal"] == SERVER_ID, labels
        assert labels["connection_security_policy"] == "mutual_tls", labels
    assert metric_sum(inbound, REQUESTS, reporter="destination", response_code="503") == 1

    outbound = pair.client.samples()
    assert metric_sum(outbound, REQUESTS, reporter="source") == 4
    for labels in _series(outbound, reporter="source"):
        assert labels["source_workload"] == "web", labels
        assert labels["source_app"] == "web", labels
        assert labels["source_principal"] == CLIENT_ID, labels
        # The server's workload, from the metadata on its responses.
        assert labels["destination_workload"] == "echo-v2", labels
        assert labels["destination_workload_namespace"] == "demo", labels
        assert labels["destination_app"] == "echo", labels
        assert labels["destination_version"] == "v2", labels
        assert labels["destination_canonical_service"] == "echo-svc", labels
        assert labels["destination_cluster"] == "local", labels
        assert labels["destination_service"] == SERVICE, labels
        assert labels["destination_service_name"] == "echo", labels
        assert labels["destination_principal"] == SERVER_ID, labels
