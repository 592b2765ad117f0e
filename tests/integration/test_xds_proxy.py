"""`trellis proxy` fed over ADS by the control plane's xDS server (real gRPC, real sockets).

The ADS server runs in a thread of the test process with hand-built snapshots;
the proxy is a real subprocess, over state-of-the-world (`GRPC`) and incremental
(`DELTA_GRPC`) ADS. Checks: initial config over LDS/RDS/CDS/EDS, live changes
without failed requests, a NACK keeps the previous config and is visible in the
server's status, the proxy keeps serving without the control plane and resyncs
when it is back, and a service removed from the config loses its cluster.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from trellis.controlplane.ads import AdsServer, serve_ads
from trellis.controlplane.snapshot import Snapshot
from trellis.controlplane.snapshot_cache import SnapshotCache
from trellis.xds import protos  # noqa: F401 - registers the types typed_config names

from .bootstrap import free_port, xds_bootstrap
from .client import request
from .harness import proxy_manager, upstream_manager

NODE = "sidecar~web-1"
T = TypeVar("T")
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


class ControlPlane:
    """A real grpc.aio ADS server on its own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cache = self.call(self._make_cache)
        self.server: AdsServer | None = None
        self.port = 0

    @staticmethod
    async def _make_cache() -> SnapshotCache:
        return SnapshotCache(debounce=0.0)

    def call(self, factory: Callable[[], Any]) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(factory(), self.loop)
        return future.result(timeout=10)

    def start(self, port: int = 0) -> None:
        async def start() -> AdsServer:
            return await serve_ads(f"127.0.0.1:{port}", self.cache)

        self.server = self.call(start)
        self.port = self.server.port

    def stop(self) -> None:
        server = self.server
        if server is not None:

            async def stop() -> None:
                await server.stop(0.2)

            self.call(stop)
            self.server = None

    def publish(self, snapshot: Snapshot) -> None:
        async def publish() -> None:
            self.cache.set(NODE, snapshot)

        self.call(publish)

    def status(self) -> list[Any]:
        server = self.server
        assert server is not None

        async def status() -> list[Any]:
            return server.service.status()

        result: list[Any] = self.call(status)
        return result

    def sessions(self) -> list[str]:
        """The protocol of each connected stream: AdsSession (SotW) or DeltaSession."""
        server = self.server
        assert server is not None

        async def sessions() -> list[str]:
            streams = server.service._streams.values()
            return [type(stream.session).__name__ for stream in streams]

        result: list[str] = self.call(sessions)
        return result

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _listener(port: int) -> listener_pb2.Listener:
    return json_format.ParseDict(
        {
            "name": "outbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "traffic_direction": "OUTBOUND",
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": HCM + "HttpConnectionManager",
                                "stat_prefix": "outbound",
                                "rds": {
                                    "route_config_name": "outbound",
                                    "config_source": {"ads": {}, "resource_api_version": "V3"},
                                },
                                "http_filters": [
                                    {
                                        "name": "envoy.filters.http.router",
                                        "typed_config": {"@type": ROUTER},
                                    }
                                ],
                            },
                        }
                    ]
                }
            ],
        },
        listener_pb2.Listener(),
    )


def _routes(weights: dict[str, int]) -> route_pb2.RouteConfiguration:
    action: dict[str, Any] = {
        "weighted_clusters": {"clusters": [{"name": n, "weight": w} for n, w in weights.items()]}
    }
    route: dict[str, Any] = {"match": {"prefix": "/"}, "route": action}
    return json_format.ParseDict(
        {
            "name": "outbound",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}],
        },
        route_pb2.RouteConfiguration(),
    )


def _cluster(name: str) -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": name,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
        },
        cluster_pb2.Cluster(),
    )


def _endpoints(name: str, ports: list[int]) -> endpoint_pb2.ClusterLoadAssignment:
    return json_format.ParseDict(
        {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": p}
                                }
                            }
                        }
                        for p in ports
                    ]
                }
            ],
        },
        endpoint_pb2.ClusterLoadAssignment(),
    )


def _snapshot(
    version: str, listen: int, ports: dict[str, int], weights: dict[str, int]
) -> Snapshot:
    items: list[Any] = [_listener(listen), _routes(weights)]
    for name, port in ports.items():
        items += [_cluster(name), _endpoints(name, [port])]
    return Snapshot.of(version, items)


def _until(check: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def control_plane() -> Iterator[ControlPlane]:
    plane = ControlPlane()
    plane.start()
    try:
        yield plane
    finally:
        plane.close()


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_proxy_configured_and_updated_live_over_ads(
    control_plane: ControlPlane, tmp_path: Path, pytestconfig: pytest.Config, api_type: str
) -> None:
    with upstream_manager() as make_up, proxy_manager(pytestconfig, tmp_path) as start:
        v1, v2 = make_up("v1"), make_up("v2")
        listen = free_port()
        ports = {"v1": v1.port, "v2": v2.port}
        control_plane.publish(_snapshot("1", listen, ports, {"v1": 1}))
        admin = free_port()
        node = {"id": NODE, "cluster": "web", "metadata": {"WORKLOAD_NAME": "web"}}
        proxy = start(xds_bootstrap(node, admin, control_plane.port, api_type), name="xds")

        first = request(listen, "GET", "/")
        assert first.status == 200 and first.header("x-upstream") == "v1", first
        session = "DeltaSession" if api_type == "DELTA_GRPC" else "AdsSession"
        assert control_plane.sessions() == [session]

        # A live 50/50 split under traffic: no request fails, both versions serve.
        served: list[str] = []
        failures: list[object] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set() and len(served) + len(failures) < 5000:
                resp = request(listen, "GET", "/")
                if resp.status == 200:
                    served.append(resp.header("x-upstream") or "")
                else:
                    failures.append(resp)

        worker = threading.Thread(target=traffic)
        worker.start()
        time.sleep(0.3)
        control_plane.publish(_snapshot("2", listen, ports, {"v1": 50, "v2": 50}))
        _until(lambda: served.count("v2") >= 20, what="the split to reach v2")
        stop.set()
        worker.join(10)
        assert not failures, failures[:3]
        assert served.count("v1") > 20

        # A config the proxy cannot apply is NACKed; the previous config stays.
        bad_routes = _routes({"v2": 1})
        bad_routes.virtual_hosts[0].routes[0].route.cluster_not_found_response_code = 1
        bad = Snapshot.of(
            "3",
            [_listener(listen), bad_routes]
            + [_cluster(n) for n in ports]
            + [_endpoints(n, [p]) for n, p in ports.items()],
        )
        control_plane.publish(bad)

        def nacked() -> str | None:
            # Over delta the proxy takes its virtual hosts by VHDS: the NACK is there.
            for status in control_plane.status():
                for kind in ("RDS", "VHDS"):
                    routes = status.type(kind)
                    if routes is not None and routes.last_nack is not None:
                        return str(routes.last_nack)
            return None

        _until(nacked, what="the NACK in the server's status")
        after = {request(listen, "GET", "/").header("x-upstream") for _ in range(20)}
        assert after == {"v1", "v2"}, after
        code, dump = proxy.admin("GET", "/config_dump")
        assert code == 200 and "cluster_not_found_response_code" in dump

        # Without the control plane the proxy keeps serving; it resyncs when it is back.
        old_port = control_plane.port
        control_plane.stop()
        assert {request(listen, "GET", "/").status for _ in range(10)} == {200}
        control_plane.start(old_port)
        control_plane.publish(_snapshot("4", listen, ports, {"v2": 1}))
        _until(
            lambda: all(request(listen, "GET", "/").header("x-upstream") == "v2" for _ in range(5)),
            timeout=20,
            what="the proxy to resync after the control plane restarted",
        )

        # A service taken out of the config loses its cluster and its endpoints.
        control_plane.publish(_snapshot("5", listen, {"v2": v2.port}, {"v2": 1}))

        def v1_gone() -> bool:
            code, clusters = proxy.admin("GET", "/clusters")
            return code == 200 and "v2::" in clusters and "v1::" not in clusters

        _until(v1_gone, what="cluster v1 to go away")
        code, dump = proxy.admin("GET", "/config_dump")
        assert code == 200 and '"v1"' not in dump, dump[:2000]
        assert {request(listen, "GET", "/").header("x-upstream") for _ in range(5)} == {"v2"}
