"""Istio's `istio.services` cluster metadata: the service an inbound TCP connection reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trellis.core.config import ProxyConfig
from trellis.errors import ConfigError

Compile = Callable[[dict[str, Any]], ProxyConfig]
WHERE = "static_resources.clusters[0].metadata.filter_metadata.istio.services"


def _services(d: dict[str, Any], services: Any) -> dict[str, Any]:
    cluster = d["static_resources"]["clusters"][0]
    cluster["metadata"] = {"filter_metadata": {"istio": {"services": services}}}
    return d


def test_the_first_service_host_is_the_clusters(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    services = [
        {"host": "tcpecho.default.svc.cluster.local", "name": "tcpecho", "namespace": "default"},
        {"host": "echo-alias.default.svc.cluster.local"},
    ]
    config = compile_dict(_services(minimal_dict, services))
    assert config.clusters[0].service_host == "tcpecho.default.svc.cluster.local"


def test_without_metadata_no_service(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    assert compile_dict(minimal_dict).clusters[0].service_host == ""


@pytest.mark.parametrize(
    ("services", "path"),
    [
        ("tcpecho", WHERE),
        ([{"name": "tcpecho"}], f"{WHERE}[0].host"),
        ([{"host": "a"}, {"host": 7}], f"{WHERE}[1].host"),
    ],
)
def test_a_malformed_service_list_is_refused_by_path(
    minimal_dict: dict[str, Any], compile_dict: Compile, services: Any, path: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_dict(_services(minimal_dict, services))
    assert path in str(caught.value)
