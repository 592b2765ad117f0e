"""Services, EndpointSlices and Pods as the registry's ServiceEntries and WorkloadEntries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from trellis.api.networking import Location, Resolution
from trellis.kube.registry import (
    build_registry,
    has_sidecar,
    port_protocol,
)
from trellis.kube.settings import PROXY_NAME, STATUS_ANNOTATION, TLS_MODE_LABEL
from trellis.xds.mesh import MeshConfig, ProxyIdentity
from trellis.xds.mesh.registry import inbound_ports

NS = "shop"


def namespace(name: str = NS, phase: str = "Active") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase}}


def service(
    name: str = "payment",
    *,
    ports: list[dict[str, Any]] | None = None,
    selector: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        **spec,
    }
    if selector is not None:
        body["selector"] = selector
    return {"metadata": {"name": name, "namespace": NS}, "spec": body}


def pod(name: str, labels: dict[str, str], *, injected: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels}
    if injected:
        meta["annotations"] = {STATUS_ANNOTATION: '{"version":"1"}'}
    return {"metadata": meta, "spec": {"serviceAccountName": "payment-sa", "containers": []}}


def endpoint_slice(
    service_name: str, endpoints: Sequence[tuple[str, str | None, bool | None]], port: int = 8080
) -> dict[str, Any]:
    items = []
    for address, pod_name, ready in endpoints:
        item: dict[str, Any] = {"addresses": [address]}
        if ready is not None:
            item["conditions"] = {"ready": ready}
        if pod_name is not None:
            item["targetRef"] = {"kind": "Pod", "name": pod_name, "namespace": NS}
        items.append(item)
    return {
        "metadata": {
            "name": f"{service_name}-x1",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": items,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        ({"name": "http", "port": 80}, "HTTP"),
        ({"name": "http-web", "port": 80}, "HTTP"),
        ({"name": "http2-x", "port": 80}, "HTTP2"),
        ({"name": "grpc", "port": 80}, "GRPC"),
        ({"name": "grpc-web-ui", "port": 80}, "GRPC-WEB"),
        ({"name": "tcp-db", "port": 80}, "TCP"),
        ({"name": "https", "port": 443}, "HTTPS"),
        ({"name": "redis", "port": 6379}, "REDIS"),
        ({"name": "httpish", "port": 80}, "TCP"),  # a prefix only counts before "-"
        ({"name": "web", "port": 80}, "TCP"),
        ({"port": 80}, "TCP"),
        ({"name": "tcp-x", "port": 80, "appProtocol": "http"}, "HTTP"),  # appProtocol wins
        ({"name": "web", "port": 80, "appProtocol": "kubernetes.io/h2c"}, "HTTP2"),
        ({"name": "web", "port": 80, "appProtocol": "GRPC"}, "GRPC"),
    ],
)
def test_port_protocol_like_istio(port: dict[str, Any], protocol: str) -> None:
    assert port_protocol(port) == protocol


def test_service_with_selector_selects_ready_pods_as_workload_entries() -> None:
    pods = [
        pod("payment-1", {"app": "payment", "version": "v1"}, injected=True),
        pod("payment-2", {"app": "payment", "version": "v2"}),
        pod("payment-3", {"app": "payment", "version": "v3"}),
    ]
    endpoints = [
        ("10.0.0.1", "payment-1", True),
        ("10.0.0.2", "payment-2", None),  # no conditions: ready (the API's default)
        ("10.0.0.3", "payment-3", False),  # not ready: not an endpoint
    ]
    registry = build_registry(
        [namespace()],
        [service(selector={"app": "payment"})],
        [endpoint_slice("payment", endpoints)],
        pods,
    )
    assert registry.problems == ()
    (entry,) = registry.entries
    assert entry.metadata.name == "payment" and entry.metadata.namespace == NS
    assert entry.spec.hosts == ("payment.shop.svc.cluster.local",)
    assert entry.spec.location is Location.MESH_INTERNAL
    assert entry.spec.resolution is Resolution.STATIC
    assert entry.spec.addresses == ("10.96.0.10",)  # the cluster IP
    (port,) = entry.spec.ports
    assert (port.number, port.name, port.protocol, port.target_port) == (80, "http", "HTTP", 8080)
    assert entry.spec.workload_selector is not None
    assert entry.spec.workload_selector.labels == {"app": "payment"}
    assert entry.spec.endpoints == ()

    by_name = {we.metadata.name: we for we in registry.workloads}
    assert sorted(by_name) == ["payment-1", "payment-2"]
    first = by_name["payment-1"].spec
    assert first.address == "10.0.0.1"
    assert first.ports == {"http": 8080}
    assert first.service_account == "payment-sa"
    assert first.labels == {"app": "payment", "version": "v1", TLS_MODE_LABEL: "istio"}
    assert TLS_MODE_LABEL not in by_name["payment-2"].spec.labels

    # Translation reads it as it reads a user's ServiceEntry: the pod's sidecar
    # serves the target port, found through the selector.
    config = MeshConfig.of(registry.resources())
    identity = ProxyIdentity.from_workload_entry("payment-1.shop", by_name["payment-1"])
    ports = inbound_ports(config.service_entries, identity)
    assert [(p.port, p.http) for p in ports] == [(8080, True)]


def test_service_without_selector_lists_its_endpoints_inline() -> None:
    slice_ = endpoint_slice("legacy", [("10.0.9.1", None, True), ("10.0.9.2", None, False)], 5432)
    slice_["ports"][0]["name"] = "tcp-db"
    registry = build_registry(
        [namespace()],
        [service("legacy", ports=[{"name": "tcp-db", "port": 5432, "protocol": "TCP"}])],
        [slice_],
        [],
    )
    (entry,) = registry.entries
    assert entry.spec.workload_selector is None
    assert [(e.address, e.ports) for e in entry.spec.endpoints] == [("10.0.9.1", {"tcp-db": 5432})]
    assert entry.spec.ports[0].protocol == "TCP"
    assert registry.workloads == ()


def test_what_is_left_out() -> None:
    services = [
        service("external", type="ExternalName", externalName="example.com"),
        service("dns", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]),
        service("payment", selector={"app": "payment"}),
    ]
    gone = dict(service("elsewhere"), metadata={"name": "elsewhere", "namespace": "old"})
    headless = service("headless", selector={"app": "db"}, clusterIP="None", clusterIPs=["None"])
    registry = build_registry(
        [namespace(), namespace("old", "Terminating")],
        [*services, gone, headless],
        [endpoint_slice("payment", [("10.0.0.1", "ghost", True)])],  # its pod is unknown
        [],
    )
    assert [e.metadata.name for e in registry.entries] == ["headless", "payment"]
    headless_entry = registry.entries[0]
    assert headless_entry.spec.addresses == ()  # clusterIP "None": no address
    assert registry.workloads == ()
    assert registry.problems == ()


def test_a_service_that_does_not_convert_is_reported() -> None:
    bad = service("twice", ports=[{"name": "http", "port": 80}, {"name": "http", "port": 81}])
    registry = build_registry([namespace()], [bad, service("ok")], [], [])
    assert [e.metadata.name for e in registry.entries] == ["ok"]
    (problem,) = registry.problems
    assert "Service shop/twice" in problem and "used twice" in problem


def test_unnamed_port_and_a_pod_in_two_services() -> None:
    pods = [pod("api-1", {"app": "api", "tier": "front"})]
    one = service("api", selector={"app": "api"}, ports=[{"port": 8000, "targetPort": "web"}])
    two = service(
        "front",
        selector={"tier": "front"},
        ports=[{"name": "grpc", "port": 9000, "targetPort": 9001}],
    )
    slice_one = endpoint_slice("api", [("10.0.1.1", "api-1", True)], 8080)
    slice_one["ports"][0]["name"] = ""
    slice_two = endpoint_slice("front", [("10.0.1.1", "api-1", True)], 9001)
    slice_two["metadata"]["name"] = "front-x1"
    slice_two["ports"][0]["name"] = "grpc"
    registry = build_registry([namespace()], [one, two], [slice_one, slice_two], pods)
    api_entry = next(e for e in registry.entries if e.metadata.name == "api")
    assert api_entry.spec.ports[0].name == "port-8000"
    assert api_entry.spec.ports[0].target_port is None  # named: from the slice
    (workload,) = registry.workloads
    assert workload.spec.ports == {"port-8000": 8080, "grpc": 9001}


def test_has_sidecar() -> None:
    assert has_sidecar(pod("a", {}, injected=True))
    plain = pod("b", {})
    assert not has_sidecar(plain)
    plain["spec"]["initContainers"] = [{"name": PROXY_NAME, "restartPolicy": "Always"}]
    assert has_sidecar(plain)
