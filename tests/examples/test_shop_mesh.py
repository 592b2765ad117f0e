"""examples/shop/mesh.yaml: valid, clean once the services are registered, and translated
into the routes and policies it promises (no sockets)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from trellis.api.analyze import analyze
from trellis.api.loader import load_documents, load_paths
from trellis.api.networking import NetworkingResource
from trellis.xds.mesh.carried import first_uncarried
from trellis.xds.mesh.model import MeshConfig, ProxyIdentity, TranslateOptions
from trellis.xds.mesh.names import LISTENER_TYPE, ROUTE_TYPE
from trellis.xds.mesh.translate import to_dicts, translate

MESH_YAML = Path(__file__).resolve().parents[2] / "examples" / "shop" / "mesh.yaml"
WORKLOADS = (
    ("web", "v1"),
    ("catalog", "v1"),
    ("cart", "v1"),
    ("payment", "v1"),
    ("payment", "v2"),
    ("db", "v1"),
)


def registry() -> list[NetworkingResource]:
    """What the launcher registers for the shop (as mesh.yaml assumes): namespace shop,
    service account = name, labels app/version, one HTTP port 80 per service."""
    documents: list[dict[str, Any]] = []
    for i, (name, version) in enumerate(WORKLOADS):
        if name not in {d["metadata"]["name"] for d in documents}:
            documents.append(
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "ServiceEntry",
                    "metadata": {"name": name, "namespace": "shop"},
                    "spec": {
                        "hosts": [f"{name}.shop.svc.cluster.local"],
                        "location": "MESH_INTERNAL",
                        "resolution": "STATIC",
                        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                        "workloadSelector": {"labels": {"app": name}},
                    },
                }
            )
        documents.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "WorkloadEntry",
                "metadata": {"name": f"{name}-{version}", "namespace": "shop"},
                "spec": {
                    "address": "127.0.0.1",
                    "ports": {"http": 17100 + i},
                    "labels": {"app": name, "version": version},
                    "serviceAccount": name,
                },
            }
        )
    return load_documents("\n---\n".join(json.dumps(d) for d in documents), "registry")


def proxy_config(config: MeshConfig, workload: str) -> dict[str, dict[str, Any]]:
    (entry,) = [r for r in config.workload_entries if r.metadata.name == workload]
    port = entry.spec.ports["http"]
    options = TranslateOptions(app_ports={port: port + 1000})
    return to_dicts(translate(config, ProxyIdentity.from_workload_entry(workload, entry), options))


def test_mesh_yaml_loads_and_analyzes_clean_with_the_services_registered() -> None:
    mesh = load_paths([MESH_YAML])
    assert sorted((type(r).__name__, r.metadata.namespace, r.metadata.name) for r in mesh) == [
        ("AuthorizationPolicy", "shop", "db-only-from-cart"),
        ("AuthorizationPolicy", "shop", "payment-only-from-web"),
        ("DestinationRule", "shop", "payment"),
        ("PeerAuthentication", "istio-system", "default"),
        ("Telemetry", "shop", "trace-everything"),
        ("VirtualService", "shop", "payment"),
    ]
    resources = [*mesh, *registry()]
    assert analyze(resources) == []
    assert first_uncarried(MeshConfig.of(resources), mtls=True) is None


def test_web_gets_the_canary_and_retries_for_payment() -> None:
    config = MeshConfig.of([*load_paths([MESH_YAML]), *registry()])
    routes = proxy_config(config, "web-v1")[ROUTE_TYPE]["outbound"]
    (host,) = [h for h in routes["virtual_hosts"] if "payment" in h["domains"]]
    (rule,) = host["routes"]
    weights = {c["name"]: c["weight"] for c in rule["route"]["weighted_clusters"]["clusters"]}
    assert weights == {
        "outbound|80|v1|payment.shop.svc.cluster.local": 90,
        "outbound|80|v2|payment.shop.svc.cluster.local": 10,
    }
    retry = rule["route"]["retry_policy"]
    assert (retry["num_retries"], retry["per_try_timeout"]) == (3, "1s")
    assert set(retry["retry_on"].split(",")) == {"5xx", "connect-failure"}


def test_db_and_payment_deny_everyone_but_their_caller() -> None:
    config = MeshConfig.of([*load_paths([MESH_YAML]), *registry()])
    for workload, policy, caller in (
        ("db-v1", "db-only-from-cart", "cart"),
        ("payment-v2", "payment-only-from-web", "web"),
    ):
        listeners = json.dumps(proxy_config(config, workload)[LISTENER_TYPE])
        assert set(re.findall(r"ns\[shop\]-policy\[[^]]+\]-rule\[\d+\]", listeners)) == {
            f"ns[shop]-policy[{policy}]-rule[0]"
        }
        assert f"spiffe://cluster.local/ns/shop/sa/{caller}" in listeners
    catalog = json.dumps(proxy_config(config, "catalog-v1")[LISTENER_TYPE])
    assert "policy[" not in catalog
