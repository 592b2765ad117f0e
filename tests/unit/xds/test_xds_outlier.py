"""Compiling `outlier_detection` and `common_lb_config.healthy_panic_threshold`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from trellis.core.config import OutlierDetection, ProxyConfig
from trellis.errors import ConfigError
from trellis.xds.compile_dynamic import cluster_resource

Compile = Callable[[dict[str, Any]], ProxyConfig]
C0 = "static_resources.clusters[0]"
OD = f"{C0}.outlier_detection"
GOLDEN = Path(__file__).parents[1] / "xds_mesh" / "golden" / "traffic_policy" / "expected.json"


def _cluster(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = d["static_resources"]["clusters"][0]
    return value


def _with(d: dict[str, Any], **fields: Any) -> dict[str, Any]:
    _cluster(d).update(fields)
    return d


def test_no_outlier_detection_by_default(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    cluster = compile_dict(minimal_dict).clusters[0]
    assert cluster.outlier_detection is None
    assert cluster.healthy_panic_threshold == 50.0


def test_empty_outlier_detection_takes_envoys_defaults(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    cluster = compile_dict(_with(minimal_dict, outlier_detection={})).clusters[0]
    outlier = cluster.outlier_detection
    assert outlier == OutlierDetection()
    assert outlier is not None
    assert (outlier.consecutive_5xx, outlier.consecutive_gateway_failure) == (5, 5)
    assert (outlier.enforcing_consecutive_5xx, outlier.enforcing_consecutive_gateway_failure) == (
        100,
        0,
    )
    assert (outlier.interval, outlier.base_ejection_time, outlier.max_ejection_time) == (
        10.0,
        30.0,
        300.0,
    )
    assert outlier.max_ejection_percent == 10
    assert not outlier.always_eject_one_host
    assert cluster.healthy_panic_threshold == 50.0


def test_every_supported_field(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    outlier = {
        "consecutive_5xx": 3,
        "consecutive_gateway_failure": 2,
        "enforcing_consecutive_5xx": 90,
        "enforcing_consecutive_gateway_failure": 100,
        "interval": "1.5s",
        "base_ejection_time": "2s",
        "max_ejection_time": "20s",
        "max_ejection_time_jitter": "0.25s",
        "max_ejection_percent": 50,
        "always_eject_one_host": True,
        "enforcing_success_rate": 0,
        "enforcing_failure_percentage": 0,
    }
    lb = {"healthy_panic_threshold": {"value": 33.5}}
    cluster = compile_dict(
        _with(minimal_dict, outlier_detection=outlier, common_lb_config=lb)
    ).clusters[0]
    assert cluster.outlier_detection == OutlierDetection(
        consecutive_5xx=3,
        consecutive_gateway_failure=2,
        enforcing_consecutive_5xx=90,
        enforcing_consecutive_gateway_failure=100,
        interval=1.5,
        base_ejection_time=2.0,
        max_ejection_time=20.0,
        max_ejection_time_jitter=0.25,
        max_ejection_percent=50,
        always_eject_one_host=True,
    )
    assert cluster.healthy_panic_threshold == 34.0  # rounded half up, as Envoy does


def test_max_ejection_time_defaults_to_the_larger_of_300s_and_base(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    config = _with(minimal_dict, outlier_detection={"base_ejection_time": "400s"})
    outlier = compile_dict(config).clusters[0].outlier_detection
    assert outlier is not None
    assert outlier.max_ejection_time == 400.0


def test_panic_threshold_without_outlier_detection(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    config = _with(minimal_dict, common_lb_config={"healthy_panic_threshold": {}})
    assert compile_dict(config).clusters[0].healthy_panic_threshold == 0.0
    config = _with(minimal_dict, common_lb_config={})
    assert compile_dict(config).clusters[0].healthy_panic_threshold == 50.0


def test_the_control_planes_clusters_are_accepted() -> None:
    """What `trellis.xds.mesh` emits for a DestinationRule outlierDetection (golden file)."""
    resources = json.loads(GOLDEN.read_text())[
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    ]
    with_outlier = 0
    for name, resource in resources.items():
        message = json_format.ParseDict(resource, cluster_pb2.Cluster())
        compiled = cluster_resource(message)
        assert compiled.name == name
        if compiled.outlier_detection is None:
            continue
        with_outlier += 1
        assert compiled.outlier_detection.consecutive_5xx == 7
        assert compiled.outlier_detection.consecutive_gateway_failure == 3
        assert compiled.outlier_detection.enforcing_consecutive_gateway_failure == 100
        assert compiled.outlier_detection.interval == 5.0
        assert compiled.outlier_detection.base_ejection_time == 60.0
        assert compiled.outlier_detection.max_ejection_percent == 50
        assert compiled.healthy_panic_threshold == 20.0
    assert with_outlier >= 1


def _outlier(**fields: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: _cluster(d).update(outlier_detection=fields)


def _panic(value: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: _cluster(d).update(common_lb_config={"healthy_panic_threshold": value})


CASES: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
    ("zero interval", _outlier(interval="0s"), f"{OD}.interval", "greater than zero"),
    (
        "zero base time",
        _outlier(base_ejection_time="0s"),
        f"{OD}.base_ejection_time",
        "greater than zero",
    ),
    (
        "max below base",
        _outlier(base_ejection_time="60s", max_ejection_time="30s"),
        f"{OD}.max_ejection_time",
        "cannot be smaller than base_ejection_time",
    ),
    (
        "percent over 100",
        _outlier(max_ejection_percent=101),
        f"{OD}.max_ejection_percent",
        "at most 100",
    ),
    (
        "5xx enforcement over 100",
        _outlier(enforcing_consecutive_5xx=150),
        f"{OD}.enforcing_consecutive_5xx",
        "at most 100",
    ),
    (
        "gateway enforcement over 100",
        _outlier(enforcing_consecutive_gateway_failure=101),
        f"{OD}.enforcing_consecutive_gateway_failure",
        "at most 100",
    ),
    (
        "success rate enforced",
        _outlier(enforcing_success_rate=100),
        f"{OD}.enforcing_success_rate",
        "only 0 is supported",
    ),
    (
        "failure percentage enforced",
        _outlier(enforcing_failure_percentage=5),
        f"{OD}.enforcing_failure_percentage",
        "only 0 is supported",
    ),
    (
        "success rate hosts",
        _outlier(success_rate_minimum_hosts=3),
        f"{OD}.success_rate_minimum_hosts",
        "not supported",
    ),
    (
        "failure percentage threshold",
        _outlier(failure_percentage_threshold=50),
        f"{OD}.failure_percentage_threshold",
        "not supported",
    ),
    (
        "split local origin errors",
        _outlier(split_external_local_origin_errors=True),
        f"{OD}.split_external_local_origin_errors",
        "not supported",
    ),
    (
        "local origin threshold",
        _outlier(consecutive_local_origin_failure=2),
        f"{OD}.consecutive_local_origin_failure",
        "not supported",
    ),
    (
        "panic over 100",
        _panic({"value": 150}),
        f"{C0}.common_lb_config.healthy_panic_threshold.value",
        "between 0 and 100",
    ),
    (
        "negative panic",
        _panic({"value": -1}),
        f"{C0}.common_lb_config.healthy_panic_threshold.value",
        "between 0 and 100",
    ),
    (
        "zone aware",
        lambda d: _cluster(d).update(common_lb_config={"zone_aware_lb_config": {}}),
        f"{C0}.common_lb_config.zone_aware_lb_config",
        "not supported",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [(m, p, msg) for _, m, p, msg in CASES],
    ids=[name for name, _, _, _ in CASES],
)
def test_bad_value_names_the_field(
    minimal_dict: dict[str, Any],
    compile_dict: Compile,
    mutate: Callable[[dict[str, Any]], object],
    path: str,
    message: str,
) -> None:
    mutate(minimal_dict)
    with pytest.raises(ConfigError) as info:
        compile_dict(minimal_dict)
    assert info.value.path == path
    assert message in str(info.value)


def test_cds_error_names_the_resource() -> None:
    message = cluster_pb2.Cluster(name="backend")
    message.outlier_detection.max_ejection_percent.value = 200
    with pytest.raises(ConfigError) as info:
        cluster_resource(message)
    assert info.value.path == "outlier_detection.max_ejection_percent"
    assert "CDS cluster 'backend'" in str(info.value)
