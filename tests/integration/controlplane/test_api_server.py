"""The API served by uvicorn on 127.0.0.1 and used through the real CLI and real HTTP.

Also: `trellis proxy-status` and `trellis proxy-config` for a real `trellis proxy`
fed by the xDS server, through the API and straight from the proxy's admin port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner, Result

from trellis.cli.main import cli
from trellis.controlplane.api import ApiServerError, create_app, serve_api
from trellis.controlplane.memory_store import MemoryConfigStore
from trellis.controlplane.snapshot import Snapshot

from ..bootstrap import free_port, xds_bootstrap
from ..harness import proxy_manager
from ..test_xds_proxy import (
    NODE,
    ControlPlane,
    _cluster,
    _endpoints,
    _listener,
    _routes,
    _snapshot,
)
from .api_helpers import DATA, TOKEN, served

T = TypeVar("T")


def _cli(url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [*args, "--server", url], input=input)


def _until(check: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_cli_against_a_served_api(tmp_path: Path) -> None:
    with served(tmp_path) as api:
        applied = _cli(api.url, "apply", "-f", str(DATA / "shop.yaml"))
        assert applied.exit_code == 0, applied.output
        assert "virtualservice.networking.istio.io/payment created" in applied.stdout

        table = _cli(api.url, "get", "vs", "-n", "shop")
        assert table.exit_code == 0, table.output
        assert table.stdout.splitlines()[0].split() == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
        assert table.stdout.splitlines()[1].split()[:2] == ["payment", "payment"]

        invalid = _cli(api.url, "apply", "-f", str(DATA / "invalid.yaml"))
        assert invalid.exit_code == 1 and "spec.http[1].retriez: unknown field" in invalid.stderr

        deleted = _cli(api.url, "delete", "-f", str(DATA / "shop.yaml"))
        assert deleted.exit_code == 0, deleted.output
        assert len(deleted.stdout.splitlines()) == 5
        listing = api.call(api.store.list)
        assert listing == []


def test_watch_streams_live_changes(tmp_path: Path) -> None:
    with served(tmp_path) as api:
        received: list[dict[str, Any]] = []
        connected = threading.Event()

        def follow() -> None:
            params = {"timeoutSeconds": "10"}
            with httpx.stream("GET", f"{api.url}/api/v1/watch", params=params, timeout=15) as r:
                connected.set()
                for line in r.iter_lines():
                    received.append(json.loads(line))
                    if len(received) == 5:
                        return

        watcher = threading.Thread(target=follow)
        watcher.start()
        assert connected.wait(10)  # the watch subscribes before the headers are sent
        assert _cli(api.url, "apply", "-f", str(DATA / "shop.yaml")).exit_code == 0
        watcher.join(15)
        assert not watcher.is_alive()
        assert [event["type"] for event in received] == ["ADDED"] * 5
        assert received[-1]["object"]["kind"] == "VirtualService"
        assert received[-1]["object"]["metadata"]["resourceVersion"] == "5"


def test_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["get", "vs"], ["apply", "-f", str(DATA / "shop.yaml")], ["proxy-status"]):
        result = _cli(url, *command)
        assert result.exit_code == 1, result.output
        assert f"cannot reach the control plane at {url}" in result.stderr


def test_serve_api_on_a_taken_port_is_an_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        app = create_app(MemoryConfigStore(), token=TOKEN)
        with pytest.raises(ApiServerError, match=f"127.0.0.1:{port}"):
            asyncio.run(asyncio.wait_for(serve_api(app, "127.0.0.1", port), 10))


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_proxy_status_and_config_of_a_real_proxy(
    tmp_path: Path, pytestconfig: pytest.Config, api_type: str
) -> None:
    plane = ControlPlane()
    plane.start()
    admin_port = free_port()
    admin = f"127.0.0.1:{admin_port}"
    try:
        listen = free_port()
        ports = {"reviews-v1": free_port(), "reviews-v2": free_port()}
        plane.publish(_snapshot("1", listen, ports, {"reviews-v1": 80, "reviews-v2": 20}))
        with (
            proxy_manager(pytestconfig, tmp_path) as start,
            served(tmp_path, ads_status=plane.status, proxy_admin={NODE: admin}.get) as api,
        ):
            node = {"id": NODE, "cluster": "web", "metadata": {"WORKLOAD_NAME": "web"}}
            start(xds_bootstrap(node, admin_port, plane.port, api_type), name="sidecar")

            def synced() -> str | None:
                result = _cli(api.url, "proxy-status")
                rows = result.stdout.splitlines()
                return result.stdout if len(rows) == 2 and rows[1].count("SYNCED") == 4 else None

            status = _until(synced, "all four types SYNCED in proxy-status")
            assert status.splitlines()[0].split() == [
                "NAME", "CDS", "LDS", "EDS", "RDS", "VERSION", "LAST", "NACK"
            ]  # fmt: skip
            assert status.splitlines()[1].startswith(NODE)

            through_api = _cli(api.url, "proxy-config", NODE, "routes")
            assert through_api.exit_code == 0, through_api.output
            assert "reviews-v1 80%,reviews-v2 20%" in through_api.stdout
            direct = _cli(api.url, "proxy-config", "any", "listeners", "--admin", admin)
            assert direct.exit_code == 0, direct.output
            assert direct.stdout.splitlines()[1].split() == [
                "outbound", "127.0.0.1", str(listen), "HTTP", "Route:", "outbound"
            ]  # fmt: skip

            bad = _routes({"reviews-v2": 1})
            bad.virtual_hosts[0].routes[0].route.cluster_not_found_response_code = 1
            items: list[Any] = [_listener(listen), bad]
            items += [_cluster(name) for name in ports]
            items += [_endpoints(name, [port]) for name, port in ports.items()]
            plane.publish(Snapshot.of("2", items))

            def nacked() -> str | None:
                result = _cli(api.url, "proxy-status")
                return result.stdout if "cluster_not_found_response_code" in result.stdout else None

            row = _until(nacked, "the NACK in proxy-status").splitlines()[1]
            # Over delta the proxy takes virtual hosts over VHDS: the bad one is rejected there.
            if api_type == "DELTA_GRPC":
                assert "VHDS: VHDS virtual host 'outbound/all'" in row
            else:
                assert "RDS: RDS route configuration 'outbound'" in row
            rejected = _cli(api.url, "proxy-config", NODE, "routes")
            assert "Warning: rejected update: outbound: version" in rejected.stderr
            assert "reviews-v1 80%,reviews-v2 20%" in rejected.stdout  # the previous config
    finally:
        plane.close()
