"""ORIGINAL_DST clusters (Istio's PassthroughCluster): accepted with lb_policy
CLUSTER_PROVIDED and nothing that names hosts; anything else is refused by path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trellis.core.config import ProxyConfig
from trellis.errors import ConfigError

Compile = Callable[[dict[str, Any]], ProxyConfig]
C1 = "static_resources.clusters[1]"


def _with_passthrough(d: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`minimal.yaml` plus `PassthroughCluster`, which the TCP listener proxies to."""
    cluster = {
        "name": "PassthroughCluster",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        **fields,
    }
    d["static_resources"]["clusters"].append(cluster)
    tcp = d["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]
    tcp["typed_config"]["cluster"] = "PassthroughCluster"
    return d


def test_an_original_dst_cluster_has_no_endpoints_of_its_own(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    config = compile_dict(_with_passthrough(minimal_dict))
    app, passthrough = config.clusters
    assert not app.original_dst
    assert passthrough.original_dst
    assert passthrough.endpoints == ()
    assert passthrough.connect_timeout == 1.0


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"lb_policy": "ROUND_ROBIN"}, "lb_policy", "needs CLUSTER_PROVIDED"),
        (
            {"load_assignment": {"cluster_name": "PassthroughCluster"}},
            "load_assignment",
            "not supported on an ORIGINAL_DST cluster",
        ),
        (
            {"outlier_detection": {"consecutive_5xx": 3}},
            "outlier_detection",
            "not supported on an ORIGINAL_DST cluster",
        ),
        ({"original_dst_lb_config": {"use_http_header": True}}, "original_dst_lb_config", ""),
    ],
)
def test_what_an_original_dst_cluster_cannot_have_is_refused_by_path(
    minimal_dict: dict[str, Any],
    compile_dict: Compile,
    fields: dict[str, Any],
    path: str,
    message: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        compile_dict(_with_passthrough(minimal_dict, **fields))
    assert info.value.path == f"{C1}.{path}"
    assert message in str(info.value)


def test_cluster_provided_is_only_for_original_dst(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    minimal_dict["static_resources"]["clusters"][0]["lb_policy"] = "CLUSTER_PROVIDED"
    with pytest.raises(ConfigError) as info:
        compile_dict(minimal_dict)
    assert info.value.path == "static_resources.clusters[0].lb_policy"
    assert "only for type ORIGINAL_DST" in str(info.value)
