"""The connection manager's `tracing`: OpenTelemetry over OTLP gRPC or HTTP."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from trellis.core.config import HttpConnectionManager, ProxyConfig
from trellis.core.tracing import TracingConfig, TracingProvider
from trellis.errors import ConfigError

Compile = Callable[[dict[str, Any]], ProxyConfig]
OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def _with_tracing(base: dict[str, Any], tracing: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    static = data["static_resources"]
    static["clusters"].append(
        {
            "name": "otel",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "otel",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": 4317,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )
    hcm = static["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["tracing"] = tracing
    return data


def _provider(**config: Any) -> dict[str, Any]:
    return {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": OTEL, **config}}


GRPC = {"grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "1s"}}


def _tracing(config: ProxyConfig) -> TracingConfig | None:
    hcm = config.listeners[0].chains[0].filter
    assert isinstance(hcm, HttpConnectionManager)
    return hcm.tracing


def test_grpc_provider(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    data = _with_tracing(
        minimal_dict,
        {
            "provider": _provider(service_name="web.shop", **GRPC),
            "random_sampling": {"value": 1},
            "overall_sampling": {"value": 50},
            "spawn_upstream_span": True,
            "max_path_tag_length": 64,
        },
    )
    assert _tracing(compile_dict(data)) == TracingConfig(
        TracingProvider("otel", grpc=True, timeout=1.0, service_name="web.shop"),
        random_sampling=1.0,
        client_sampling=100.0,
        overall_sampling=50.0,
        spawn_upstream_span=True,
        max_path_tag_length=64,
    )


def test_http_provider(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    http = {
        "http_uri": {
            "uri": "http://collector:4318/v1/traces",
            "cluster": "otel",
            "timeout": "2s",
        }
    }
    data = _with_tracing(minimal_dict, {"provider": _provider(http_service=http)})
    assert _tracing(compile_dict(data)) == TracingConfig(
        TracingProvider(
            "otel", grpc=False, path="/v1/traces", authority="collector:4318", timeout=2.0
        )
    )


def test_no_tracing_is_none(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    assert _tracing(compile_dict(minimal_dict)) is None


@pytest.mark.parametrize(
    ("tracing", "path", "message"),
    [
        ({}, "tracing.provider", "provider is required"),
        (
            {"provider": _provider(**GRPC), "random_sampling": {"value": 101}},
            "tracing.random_sampling.value",
            "between 0 and 100",
        ),
        (
            {"provider": _provider(grpc_service={"envoy_grpc": {"cluster_name": "nope"}})},
            "tracing.provider.typed_config.grpc_service.envoy_grpc.cluster_name",
            "unknown cluster 'nope'",
        ),
        (
            {"provider": _provider()},
            "tracing.provider.typed_config",
            "exactly one of grpc_service and http_service",
        ),
        (
            {
                "provider": _provider(
                    http_service={"http_uri": {"uri": "https://c/v1/traces", "cluster": "otel"}}
                )
            },
            "tracing.provider.typed_config.http_service.http_uri.uri",
            "http:// URL",
        ),
        (
            {"provider": _provider(**GRPC), "verbose": True},
            "tracing.verbose",
            "not supported",
        ),
        (
            {
                "provider": _provider(**GRPC),
                "custom_tags": [{"tag": "a", "literal": {"value": "b"}}],
            },
            "tracing.custom_tags",
            "not supported",
        ),
        (
            {"provider": _provider(sampler={"name": "x"}, **GRPC)},
            "tracing.provider.typed_config.sampler",
            "not supported",
        ),
        (
            {
                "provider": {
                    "name": "envoy.tracers.zipkin",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                        "collector_cluster": "otel",
                    },
                }
            },
            "tracing.provider.typed_config",
            "ZipkinConfig",
        ),
    ],
)
def test_bad_tracing_names_the_field(
    minimal_dict: dict[str, Any],
    compile_dict: Compile,
    tracing: dict[str, Any],
    path: str,
    message: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_dict(_with_tracing(minimal_dict, tracing))
    text = str(caught.value)
    assert f"{HCM_PATH}.{path}" in text
    assert message in text
