"""A third-party xDS client: grpcio in proxyless mode (`xds:///` target) fed by our ADS server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from trellis.controlplane.ads import AggregatedDiscoveryService
from trellis.controlplane.ads_status import SyncState
from trellis.controlplane.snapshot import Snapshot
from trellis.controlplane.snapshot_cache import SnapshotCache

from .ads_helpers import ads_server, api_listener, cluster, endpoints, route, run

SERVICE = "echo.trellis.test"
METHOD = "/trellis.test.Echo/Who"

# Calls METHOD over `xds:///SERVICE` every 20 ms and prints which backend answered.
CLIENT = f"""
import sys, time, grpc
channel = grpc.insecure_channel("xds:///{SERVICE}")
who = channel.unary_unary("{METHOD}")
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        print("ok", who(b"", timeout=5, wait_for_ready=True).decode(), flush=True)
    except grpc.RpcError as error:
        print("error", error.code().name, (error.details() or "").replace("\\n", " "), flush=True)
    time.sleep(0.02)
"""


@asynccontextmanager
async def backend(name: str) -> AsyncIterator[int]:
    """A gRPC server whose one method answers with its name."""

    async def who(request: bytes, context: Any) -> bytes:
        return name.encode()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(who)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("trellis.test.Echo", {"Who": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


def _snapshot(
    version: str, weights: dict[str, int], ports: dict[str, int], maglev: str = ""
) -> Snapshot:
    items: list[Any] = [
        api_listener(SERVICE, "echo-routes"),
        route("echo-routes", weights, domains=[SERVICE]),
    ]
    for name, port in ports.items():
        built = cluster(name)
        if name == maglev:
            built.lb_policy = built.MAGLEV  # a policy grpc does not implement
        items += [built, endpoints(name, [port])]
    return Snapshot.of(version, items)


async def _lines_until(
    stdout: asyncio.StreamReader, wanted: str, seen: list[str], within: float
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(stdout.readline(), deadline - time.monotonic())
        if not line:
            break
        seen.append(line.decode().strip())
        if seen[-1] == wanted:
            return
    raise AssertionError(f"never saw {wanted!r}; last lines: {seen[-5:]}")


def _bootstrap(path: Path, ads_port: int) -> Path:
    """grpc's bootstrap: one insecure xDS server speaking v3, and the node identity."""
    server = {
        "server_uri": f"127.0.0.1:{ads_port}",
        "channel_creds": [{"type": "insecure"}],
        "server_features": ["xds_v3"],
    }
    node = {
        "id": "grpc-client",
        "cluster": "test",
        "metadata": {"NAMESPACE": "default", "WORKLOAD_NAME": "client"},
    }
    path.write_text(json.dumps({"xds_servers": [server], "node": node}))
    return path


@asynccontextmanager
async def grpc_client(bootstrap: Path, log: Path) -> AsyncIterator[asyncio.StreamReader]:
    """The CLIENT script in a subprocess (grpc keeps one xDS client per process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env.update(GRPC_XDS_BOOTSTRAP=str(bootstrap), GRPC_VERBOSITY="debug", GRPC_TRACE="xds_client")
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, "25", env=env, stdout=PIPE, stderr=log_file
        )
        try:
            assert process.stdout is not None
            yield process.stdout
        finally:
            process.kill()
            await process.wait()


def test_grpcio_proxyless_client_follows_live_config(tmp_path: Path) -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        async with (
            backend("a") as port_a,
            backend("b") as port_b,
            ads_server(cache) as server,
        ):
            ports = {"echo-a": port_a, "echo-b": port_b}
            cache.set("grpc-client", _snapshot("v1", {"echo-a": 1}, ports))
            bootstrap = _bootstrap(tmp_path / "bootstrap.json", server.port)
            seen: list[str] = []
            async with grpc_client(bootstrap, tmp_path / "client.log") as stdout:
                await _lines_until(stdout, "ok a", seen, 15)
                [status] = server.service.status()
                assert status.node.id == "grpc-client"
                assert status.node.namespace == "default"
                assert "grpc" in status.node.user_agent.lower()
                assert {t.short_name: t.state for t in status.types} == {
                    "CDS": SyncState.SYNCED,
                    "EDS": SyncState.SYNCED,
                    "LDS": SyncState.SYNCED,
                    "RDS": SyncState.SYNCED,
                }
                lds = status.type("LDS")
                assert lds is not None and lds.resource_names == (SERVICE,)
                cds_before = status.type("CDS")
                assert cds_before is not None

                # A live route change: every call succeeds and b starts answering.
                cache.set("grpc-client", _snapshot("v2", {"echo-b": 1}, ports))
                await _lines_until(stdout, "ok b", seen, 10)
                assert not [line for line in seen if line.startswith("error")]

                # A cluster grpc cannot use: it is NACKed and the reason shows in the status.
                cache.set("grpc-client", _snapshot("v3", {"echo-b": 1}, ports, maglev="echo-b"))
                nack = await _until_nacked(server.service, 10)
                assert "lb_policy" in nack
                cds = server.service.status()[0].type("CDS")
                assert cds is not None
                assert cds.state is SyncState.STALE
                assert cds.acked_version != cds.sent_version
                await _lines_until(stdout, "ok b", seen, 5)  # still serving on the old config

    run(main, timeout=60)


async def _until_nacked(service: AggregatedDiscoveryService, within: float) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for status in service.status():
            cds = status.type("CDS")
            if cds is not None and cds.last_nack is not None:
                return cds.last_nack.message
        await asyncio.sleep(0.02)
    raise AssertionError("grpcio did not NACK the cluster")
