"""Pushes: only to changed nodes and types, debounced, resynced on reconnect, stopped cleanly."""

from __future__ import annotations

import asyncio

import pytest

from trellis.controlplane.ads_status import ProxyNode, SyncState
from trellis.controlplane.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    InconsistentSnapshotError,
    Snapshot,
)
from trellis.controlplane.snapshot_cache import SnapshotCache

from .ads_helpers import (
    AdsClient,
    ads_server,
    channel_to,
    cluster,
    endpoints,
    listener,
    mesh_snapshot,
    names_of,
    node,
    route,
    run,
)
from .test_ads_protocol import _initial_sync


def test_a_change_reaches_only_the_changed_node_and_type() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.02)
        for name in ("a", "b"):
            cache.set(name, mesh_snapshot("v1", 3))
        async with ads_server(cache) as server, channel_to(server) as channel:
            a, b = AdsClient(channel, node("a")), AdsClient(channel, node("b"))
            synced_a, synced_b = await _initial_sync(a), await _initial_sync(b)

            cache.set("a", mesh_snapshot("v2", 3, first_port=31000))
            response = await a.recv()
            assert response.type_url == ENDPOINT_TYPE
            # EDS needs not carry the whole state: only svc0 changed, only svc0 is sent.
            assert names_of(response) == ["svc0"]
            assert response.version_info != synced_a[ENDPOINT_TYPE].version_info
            a.ack(response, ["svc0", "svc1", "svc2"])  # the subscription stays
            await a.expect_silence(0.3)  # LDS, RDS and CDS did not change
            await b.expect_silence(0.05)  # nor did anything of node b
            assert synced_b[ENDPOINT_TYPE].version_info == synced_a[ENDPOINT_TYPE].version_info

            # The same content under a new snapshot version pushes nothing at all.
            cache.set("a", mesh_snapshot("v3", 3, first_port=31000))
            await a.expect_silence(0.2)
            statuses = {s.node.id: s for s in server.service.status()}
            assert statuses["a"].snapshot_version == "v3"
            assert all(t.state is SyncState.SYNCED for t in statuses["a"].types)

            # A new cluster: CDS carries the whole set again; EDS waits for its name.
            cache.set("a", mesh_snapshot("v4", 4, first_port=31000))
            cds = await a.recv()
            assert cds.type_url == CLUSTER_TYPE
            assert names_of(cds) == ["svc0", "svc1", "svc2", "svc3"]
            a.ack(cds)
            await a.expect_silence(0.2)
            a.ack(response, names_of(cds))  # the EDS request naming svc3
            eds = await a.recv()
            assert names_of(eds) == ["svc3"]  # the client holds the others
            a.close()
            b.close()

    run(main)


def test_a_burst_of_sets_is_pushed_once() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.2, max_delay=1.0)
        cache.set("a", mesh_snapshot("v0", 2))
        async with ads_server(cache) as server, channel_to(server) as channel:
            client = AdsClient(channel, node("a"))
            client.send(ENDPOINT_TYPE, ["svc0"])
            client.ack(await client.recv(), ["svc0"])
            await client.expect_silence(0.25)
            flushes = cache.flushes
            for i in range(1, 11):
                cache.set("a", mesh_snapshot(f"v{i}", 2, first_port=32000 + i))
                await asyncio.sleep(0.005)
            assert cache.pending == {"a"}
            response = await client.recv(within=2.0)
            assert cache.flushes == flushes + 1
            latest = cache.get("a")
            assert latest is not None
            assert response.version_info == latest.get(ENDPOINT_TYPE).version
            client.ack(response, ["svc0"])
            await client.expect_silence(0.3)
            eds = server.service.status()[0].type("EDS")
            assert eds is not None and eds.responses == 2
            client.close()

    run(main)


def test_a_reconnected_proxy_gets_the_current_config() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        cache.set("a", mesh_snapshot("v1", 2))
        async with ads_server(cache, forget=False) as server:  # keep it while it is gone
            async with channel_to(server) as channel:
                first = AdsClient(channel, node("a"))
                old = await _initial_sync(first)
                first.cancel()
            for _ in range(100):
                if not server.service.status():
                    break
                await asyncio.sleep(0.01)
            assert server.service.status() == []
            cache.set("a", mesh_snapshot("v2", 2, first_port=33000))
            async with channel_to(server) as channel:
                again = AdsClient(channel, node("a"))
                # Envoy resumes with the versions it has and no nonce.
                again.send(CLUSTER_TYPE, version=old[CLUSTER_TYPE].version_info)
                again.send(ENDPOINT_TYPE, ["svc0", "svc1"], version=old[ENDPOINT_TYPE].version_info)
                cds, eds = await again.recv(), await again.recv()
                assert (cds.type_url, eds.type_url) == (CLUSTER_TYPE, ENDPOINT_TYPE)
                assert cds.version_info == old[CLUSTER_TYPE].version_info  # same clusters
                assert eds.version_info != old[ENDPOINT_TYPE].version_info
                latest = cache.get("a")
                assert latest is not None
                assert eds.version_info == latest.get(ENDPOINT_TYPE).version
                again.close()

    run(main)


def test_source_builds_on_first_connect_and_disconnect_forgets() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        seen: list[ProxyNode] = []

        def source(proxy: ProxyNode) -> Snapshot:
            seen.append(proxy)
            return mesh_snapshot(f"built-for-{proxy.id}", 1)

        async with ads_server(cache, source) as server, channel_to(server) as channel:
            client = AdsClient(
                channel, node("web-1", WORKLOAD_NAME="web", SERVICE_ACCOUNT="web-sa")
            )
            client.send(LISTENER_TYPE)
            response = await client.recv()
            assert names_of(response) == ["outbound"]
            assert [p.workload_name for p in seen] == ["web"]
            assert seen[0].identity().principal == "unknown"  # no namespace given
            assert server.service.connected_nodes() == seen
            assert cache.get("web-1") is not None
            client.cancel()
            for _ in range(100):
                if cache.get("web-1") is None:
                    break
                await asyncio.sleep(0.01)
            assert cache.get("web-1") is None

    run(main)


def test_an_inconsistent_snapshot_is_refused_and_the_old_one_kept() -> None:
    cache = SnapshotCache()
    good = mesh_snapshot("v1", 1)
    cache.set("a", good)
    broken = Snapshot.of(
        "v2",
        [listener("outbound", "routes"), cluster("svc0"), cluster("svc1", "svc1-eds")],
    )
    with pytest.raises(InconsistentSnapshotError) as raised:
        cache.set("a", broken)
    assert raised.value.missing == (
        "LDS 'outbound' references RDS 'routes', which is not in the snapshot",
        "CDS 'svc0' references EDS 'svc0', which is not in the snapshot",
        "CDS 'svc1' references EDS 'svc1-eds', which is not in the snapshot",
    )
    assert "snapshot 'v2' is inconsistent" in str(raised.value)
    assert cache.get("a") is good
    fixed = Snapshot.of(
        "v3",
        [
            listener("outbound", "routes"),
            route("routes", {"svc0": 1}),
            cluster("svc0"),
            endpoints("svc0", [1]),
        ],
    )
    assert fixed.is_consistent()
    cache.set("a", fixed)
    assert cache.get("a") is fixed


def test_stopping_the_server_ends_streams_cleanly() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        cache.set("a", mesh_snapshot("v1", 1))
        async with ads_server(cache) as server, channel_to(server) as channel:
            client = AdsClient(channel, node("a"))
            client.send(ROUTE_TYPE, ["routes"])
            client.ack(await client.recv(), ["routes"])
            await server.stop(1.0)
            ended = await client.ended()
            assert isinstance(ended, EOFError)  # status OK: the proxy reconnects elsewhere
            assert server.service.status() == []

    run(main)
