"""Mesh-wide tracing: every sidecar connection manager traces to the collector cluster."""

from __future__ import annotations

from dataclasses import replace

import pytest
from mesh_support import case_names, inline_bootstrap, load_case

from trellis.core.config import HttpConnectionManager
from trellis.core.tracing import TracingProvider
from trellis.errors import ConfigError
from trellis.xds.compile import compile_bootstrap
from trellis.xds.mesh import CLUSTER_TYPE, translate
from trellis.xds.mesh.tracing import COLLECTOR_CLUSTER, MeshTracing


@pytest.mark.parametrize("name", case_names())
def test_every_connection_manager_traces_and_the_proxy_accepts_it(name: str) -> None:
    case = load_case(name)
    config = replace(case.config, tracing=MeshTracing("10.0.0.9", 4317, 100.0))
    resources = translate(config, case.proxy, case.options)
    assert COLLECTOR_CLUSTER in resources[CLUSTER_TYPE]
    compiled = compile_bootstrap(inline_bootstrap(resources), f"golden/{name}")
    collector = next(c for c in compiled.clusters if c.name == COLLECTOR_CLUSTER)
    assert [str(e.address) for e in collector.endpoints] == ["10.0.0.9:4317"]
    managers = [
        chain.filter
        for listener in compiled.listeners
        for chain in listener.chains
        if isinstance(chain.filter, HttpConnectionManager)
    ]
    # authz_tcp's proxy sees TCP services only: no connection manager in transparent capture.
    assert managers or name == "authz_tcp"
    labels = case.proxy.labels
    service = labels.get("app") or case.proxy.workload_name
    for hcm in managers:
        assert hcm.tracing is not None
        assert hcm.tracing.random_sampling == 100.0
        assert hcm.tracing.provider == TracingProvider(
            COLLECTOR_CLUSTER, grpc=True, service_name=f"{service}.{case.proxy.namespace}"
        )


def test_without_the_setting_nothing_traces() -> None:
    case = load_case("authz")
    resources = translate(case.config, case.proxy, case.options)
    assert COLLECTOR_CLUSTER not in resources[CLUSTER_TYPE]
    compiled = compile_bootstrap(inline_bootstrap(resources), "golden/authz")
    for listener in compiled.listeners:
        for chain in listener.chains:
            if isinstance(chain.filter, HttpConnectionManager):
                assert chain.filter.tracing is None


def test_settings_are_checked() -> None:
    assert MeshTracing.parse("127.0.0.1:4317") == MeshTracing("127.0.0.1", 4317, 1.0)
    assert MeshTracing.parse("[::1]:4317", 100).host == "::1"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        MeshTracing.parse("127.0.0.1")
    with pytest.raises(ConfigError, match="must be an IP address"):
        MeshTracing.parse("jaeger:4317")
    with pytest.raises(ConfigError, match="1-65535"):
        MeshTracing.parse("127.0.0.1:0")
    with pytest.raises(ConfigError, match="between 0 and 100"):
        MeshTracing("127.0.0.1", 4317, 101)


def test_a_collector_on_a_unix_socket_reaches_across_network_namespaces() -> None:
    case = load_case("authz")
    tracing = MeshTracing.parse("unix:/run/trellis/xds.sock", 100)
    resources = translate(replace(case.config, tracing=tracing), case.proxy, case.options)
    compiled = compile_bootstrap(inline_bootstrap(resources), "golden/authz")
    collector = next(c for c in compiled.clusters if c.name == COLLECTOR_CLUSTER)
    assert [str(e.address) for e in collector.endpoints] == ["/run/trellis/xds.sock"]
    with pytest.raises(ConfigError, match="must be absolute"):
        MeshTracing.parse("unix:relative.sock")
