"""Node metadata: canonical service labels and the application's metrics annotations."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from trellis.core.config import AppMetrics
from trellis.errors import ConfigError
from trellis.xds.node import node_identity
from trellis.xds.where import Where


def _node(metadata: dict[str, object]) -> base_pb2.Node:
    return json_format.ParseDict({"id": "n", "metadata": metadata}, base_pb2.Node())


def _identity(metadata: dict[str, object]):  # type: ignore[no-untyped-def]
    return node_identity(_node(metadata), Where("bootstrap.yaml", "node"))


def test_canonical_service_follows_istios_order() -> None:
    node = _identity({"WORKLOAD_NAME": "cart-v2", "LABELS": {"app": "cart", "version": "v2"}})
    assert (node.canonical_service, node.canonical_revision) == ("cart", "v2")
    node = _identity({"WORKLOAD_NAME": "cart-v2",
                      "LABELS": {"app": "cart", "service.istio.io/canonical-name": "carts",
                                 "app.kubernetes.io/version": "2.1"}})  # fmt: skip
    assert (node.canonical_service, node.canonical_revision) == ("carts", "2.1")
    node = _identity({"WORKLOAD_NAME": "batch"})
    assert (node.canonical_service, node.canonical_revision) == ("batch", "latest")


def test_cluster_id_and_instance() -> None:
    node = _identity({"CLUSTER_ID": "Kubernetes", "NAME": "cart-7f9-abc"})
    assert (node.cluster_id, node.instance) == ("Kubernetes", "cart-7f9-abc")
    assert _identity({}).cluster_id == "unknown"


def test_metrics_annotations_name_the_application_endpoint() -> None:
    assert _identity({}).app_metrics is None
    node = _identity({"ANNOTATIONS": {"prometheus.io/port": "9100"}})
    assert node.app_metrics == AppMetrics(9100, "/metrics")
    node = _identity({"ANNOTATIONS": {"prometheus.io/port": "9100",
                                      "prometheus.io/path": "/stats"}})  # fmt: skip
    assert node.app_metrics == AppMetrics(9100, "/stats")
    off = {"prometheus.io/port": "9100", "prometheus.io/scrape": "false"}
    assert _identity({"ANNOTATIONS": off}).app_metrics is None


@pytest.mark.parametrize(
    ("annotations", "field"),
    [
        ({"prometheus.io/port": "http"}, "prometheus.io/port"),
        ({"prometheus.io/port": "70000"}, "prometheus.io/port"),
        ({"prometheus.io/port": "9100", "prometheus.io/path": "metrics"}, "prometheus.io/path"),
    ],
)
def test_bad_annotations_are_named(annotations: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _identity({"ANNOTATIONS": annotations})
