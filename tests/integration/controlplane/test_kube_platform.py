"""`trellis control-plane --platform kubernetes` against the stand-in API server.

The control plane (a subprocess) takes its registry from the Namespaces,
Services, Pods and EndpointSlices in the stand-in, and keeps config applied
through its REST API as CRD objects there. Real sidecars connect over xDS and
carry requests to real upstreams: the service's endpoints reach them, a
deleted pod's endpoint leaves them, a VirtualService applied through the REST
API lands in the stand-in and in their routes, and a watch that must re-list
(410 Gone) loses nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trellis.kube.settings import STATUS_ANNOTATION

from ..bootstrap import free_port, xds_bootstrap
from ..client import Response, request
from ..harness import proxy_manager, upstream_manager
from ..kube_standin import KubeStandIn, StandInServer
from ..proxyproc import ProxyProcess
from .mesh_procs import ControlPlane, until

NS = "shop"
ISTIO = "networking.istio.io"

DESTINATION_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payment, namespace: shop}
spec:
  host: payment.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - route: [{destination: {host: payment, subset: v2}}]
"""


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "payment", "namespace": NS, "labels": {"app": "payment"}},
        "spec": {
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "selector": {"app": "payment"},
            # A named target port: each pod's port comes from its EndpointSlice.
            "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}],
        },
    }


def pod(version: str, *, injected: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": f"payment-{version}",
        "namespace": NS,
        "labels": {"app": "payment", "version": version},
    }
    if injected:
        metadata["annotations"] = {STATUS_ANNOTATION: "{}"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"serviceAccountName": "payment", "containers": [{"name": "app"}]},
        "status": {"podIP": "127.0.0.1"},
    }


def endpoint_slice(version: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"payment-{version}",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": "payment"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["127.0.0.1"],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": f"payment-{version}", "namespace": NS},
            }
        ],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


class Api:
    """A plain HTTP client of the stand-in, as kubectl would use it."""

    def __init__(self, server: StandInServer) -> None:
        self.base = server.url

    def send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as response:
            return json.load(response)

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.send("POST", path, body)


@pytest.fixture
def standin() -> Iterator[StandInServer]:
    server = StandInServer(KubeStandIn(bookmark_interval=0.5)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def plane(standin: StandInServer, tmp_path: Path) -> Iterator[ControlPlane]:
    kubeconfig = standin.kubeconfig(tmp_path / "kubeconfig")
    control = ControlPlane(
        tmp_path / "data", "--platform", "kubernetes", "--kubeconfig", str(kubeconfig)
    )
    control.start()
    try:
        yield control
    finally:
        control.stop()


def _node(name: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{name}.{NS}", "cluster": metadata["WORKLOAD_NAME"], "metadata": metadata}


def _endpoints(proxy: ProxyProcess, cluster: str) -> set[int]:
    """The ports of `cluster`'s endpoints in the proxy's /clusters."""
    status, text = proxy.admin("GET", "/clusters")
    assert status == 200, text
    ports = set()
    for line in text.splitlines():
        name, _, rest = line.partition("::")
        if name == cluster and rest.startswith("127.0.0.1:"):
            ports.add(int(rest.split("::", 1)[0].rsplit(":", 1)[1]))
    return ports


def _get(outbound: int) -> Response:
    return request(outbound, "GET", "http://payment/pay", host="payment")


def test_services_endpoints_and_crds_through_the_api_server(
    plane: ControlPlane, standin: StandInServer, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    api = Api(standin)
    with upstream_manager() as make_up, proxy_manager(pytestconfig, tmp_path) as start:
        apps = {"v1": make_up("v1"), "v2": make_up("v2")}
        ports = {"v1": free_port(), "v2": free_port()}
        for version, app in apps.items():
            meta = {
                "WORKLOAD_NAME": "payment",
                "NAME": f"payment-{version}",
                "NAMESPACE": NS,
                "LABELS": {"app": "payment", "version": version},
                "TRELLIS_APP_PORTS": f"{ports[version]}:{app.port}",
                "TRELLIS_OUTBOUND_PORT": str(free_port()),
            }
            node = _node(f"payment-{version}", meta)
            start(xds_bootstrap(node, free_port(), plane.xds_port), name=f"payment-{version}")
        outbound = free_port()
        web_meta = {
            "WORKLOAD_NAME": "web",
            "NAME": "web-1",
            "NAMESPACE": NS,
            "LABELS": {"app": "web"},
            "TRELLIS_OUTBOUND_PORT": str(outbound),
        }
        web = start(xds_bootstrap(_node("web", web_meta), free_port(), plane.xds_port), name="web")

        # A namespace, a service, a ready pod and its endpoint slice: web reaches it.
        api.create("/api/v1/namespaces", namespace(NS))
        api.create(f"/api/v1/namespaces/{NS}/services", service())
        api.create(f"/api/v1/namespaces/{NS}/pods", pod("v1"))
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
        api.create(slices, endpoint_slice("v1", ports["v1"]))
        cluster = "outbound|80||payment.shop.svc.cluster.local"
        until(lambda: _endpoints(web, cluster) == {ports["v1"]}, what="the v1 endpoint in web")
        until(lambda: _get(outbound).header("x-upstream") == "v1", what="web -> payment v1")

        # The watches drop, the history is compacted, and meanwhile a second pod and
        # its slice appear: every watch resuming from before gets 410 Gone, lists
        # again and finds them. (A watch that has seen no event nor bookmark yet
        # resumes from "0", any version, and rightly lists nothing: wait until the
        # VirtualService watch has been told the current version.)
        now = standin.call(lambda: standin.standin.version)
        until(
            lambda: (
                standin.call(lambda: standin.standin.bookmarked.get("virtualservices", -1)) >= now
            ),
            what="a bookmark on the VirtualService watch",
        )
        lists_before = _list_requests(standin)

        def gap() -> None:
            state = standin.standin
            state.break_watches()
            state.put("pods", pod("v2"))
            state.put("endpointslices", endpoint_slice("v2", ports["v2"]), "discovery.k8s.io")
            state.compact()

        standin.call(gap)
        until(
            lambda: _endpoints(web, cluster) == {ports["v1"], ports["v2"]},
            timeout=30,
            what="the v2 endpoint after the re-list",
        )

        # Each watch lists again on its own schedule (back-off): wait for both kinds.
        def relisted() -> bool:
            counts = _list_requests(standin) - lists_before
            return counts["endpointslices"] >= 1 and counts["virtualservices"] >= 1

        until(relisted, timeout=30, what="a re-list of endpoint slices and VirtualServices")
        served = Counter(_get(outbound).header("x-upstream") for _ in range(40))
        assert set(served) == {"v1", "v2"}, served

        # Config through the REST API: stored as CRD objects, routed by the proxies.
        answer = plane.apply(DESTINATION_RULE)
        assert [r["outcome"] for r in answer["results"]] == ["created", "created"], answer
        stored = standin.call(
            lambda: standin.standin.get_object("virtualservices", NS, "payment", ISTIO)
        )
        assert stored["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v2"
        assert stored["metadata"]["generation"] == 1
        until(
            lambda: all(_get(outbound).header("x-upstream") == "v2" for _ in range(10)),
            what="the VirtualService in web's routes",
        )
        listed = _rest_get(plane, f"/apis/{ISTIO}/v1/namespaces/{NS}/virtualservices")
        assert [item["metadata"]["name"] for item in listed["items"]] == ["payment"]

        # The v2 pod goes: its endpoint leaves the proxies, and its subset is empty.
        api.send("DELETE", f"/api/v1/namespaces/{NS}/pods/payment-v2")
        v2_cluster = "outbound|80|v2|payment.shop.svc.cluster.local"
        until(lambda: not _endpoints(web, v2_cluster), what="the v2 endpoint to leave web")
        assert _endpoints(web, cluster) == {ports["v1"]}
        assert _get(outbound).status == 503


def _list_requests(server: StandInServer) -> Counter[str]:
    """How many list (not watch) requests each resource type got."""
    lines: list[str] = server.call(lambda: list(server.standin.requests))
    counts: Counter[str] = Counter()
    for line in lines:
        method, _, target = line.partition(" ")
        path, _, query = target.partition("?")
        if method == "GET" and "watch=" not in query:
            counts[path.rstrip("/").rsplit("/", 1)[-1]] += 1
    return counts


def _rest_get(plane: ControlPlane, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{plane.api_port}{path}", timeout=5) as r:
        return json.load(r)


def _control_plane(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trellis.cli.main", "control-plane"]
    command += ["--data-dir", str(tmp_path / "data"), "--api-port", "0", *args]
    command += ["--xds-address", f"127.0.0.1:{free_port()}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_kubeconfig_needs_the_kubernetes_platform(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    result = _control_plane(tmp_path, "--kubeconfig", str(kubeconfig))
    assert result.returncode == 2, result.stderr
    assert "--kubeconfig" in result.stderr and "--platform kubernetes" in result.stderr


def test_unusable_kubeconfig_is_named(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")  # no cluster, no context
    result = _control_plane(tmp_path, "--platform", "kubernetes", "--kubeconfig", str(kubeconfig))
    assert result.returncode == 1, result.stderr
    assert "cannot start" in result.stderr and "Kubernetes credentials" in result.stderr, (
        result.stderr
    )
