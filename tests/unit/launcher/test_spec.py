"""The documents, proxy arguments and environment `trellis run` derives from its flags."""

from __future__ import annotations

import random

import pytest

from trellis.errors import ConfigError
from trellis.platform.api_client import acknowledged, rejection, resource_version_of
from trellis.platform.child import describe_exit, exit_status
from trellis.platform.ports import candidate_range, candidates
from trellis.platform.sidecar import listener_names
from trellis.platform.spec import (
    LaunchError,
    SidecarPorts,
    WorkloadSpec,
    app_environment,
    owner_of,
    proxy_arguments,
    service_entry,
    service_port_names,
    workload_entry,
)
from trellis.xds.mesh.names import inbound_listener

PORTS = SidecarPorts(outbound=21001, inbound=21002, admin=21003, app=8000)
SPEC = WorkloadSpec(name="payment-v1", namespace="shop", service="payment", version="v1")


def test_defaults_follow_the_name() -> None:
    spec = WorkloadSpec(name="web")
    assert (spec.service_name, spec.account, spec.namespace) == ("web", "web", "default")
    assert spec.host == "web.default.svc.cluster.local"
    assert spec.node_id == "web.default"


@pytest.mark.parametrize(
    ("fields", "flag", "text"),
    [
        ({"name": "Web_1"}, "--name", "DNS-1123 subdomain"),
        ({"name": "web", "namespace": "a.b"}, "--namespace", "DNS-1123 label"),
        ({"name": "web", "service": "Pay"}, "--service", "DNS-1123 label"),
        ({"name": "web", "version": "v 1"}, "--version", "not a valid label value"),
        ({"name": "web", "app_port": 0}, "--port", "1-65535"),
        ({"name": "web", "extra_labels": {"app": "x"}}, "--label", "set by the launcher"),
        ({"name": "web", "extra_labels": {"-bad": "x"}}, "--label", "not a valid label name"),
    ],
)
def test_bad_flags_name_the_flag(fields: dict[str, object], flag: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WorkloadSpec(**fields)  # type: ignore[arg-type]
    assert caught.value.path == flag
    assert text in str(caught.value)


def test_workload_entry_is_out_of_service_until_serving() -> None:
    entry = workload_entry(
        SPEC, PORTS, ["http"], owner="host/1/abc", serving=False, resource_version="0"
    )
    assert entry["metadata"] == {
        "name": "payment-v1",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "trellis-run"},
        "annotations": {"run.trellis.io/owner": "host/1/abc"},
        "resourceVersion": "0",
    }
    assert entry["spec"] == {
        "address": "127.0.0.1",
        "ports": {"http": 21002},
        "labels": {"version": "v1", "security.istio.io/tlsMode": "istio"},
        "serviceAccount": "payment-v1",
    }
    serving = workload_entry(
        SPEC, PORTS, ["http", "web"], owner="o", serving=True, resource_version="7"
    )
    assert serving["spec"]["labels"]["app"] == "payment"
    assert serving["spec"]["ports"] == {"http": 21002, "web": 21002}
    assert owner_of(serving) == "o"
    assert owner_of({"metadata": {"name": "x"}}) is None


def test_service_entry_is_created_only_if_absent() -> None:
    entry = service_entry(SPEC, "o")
    assert entry["metadata"]["resourceVersion"] == "0"
    assert entry["spec"] == {
        "hosts": ["payment.shop.svc.cluster.local"],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "workloadSelector": {"labels": {"app": "payment"}},
    }


def _existing(selector: dict[str, str] | None, ports: list[dict[str, object]]) -> dict[str, object]:
    spec: dict[str, object] = {"hosts": ["payment"], "ports": ports}
    if selector is not None:
        spec["workloadSelector"] = {"labels": selector}
    return {"spec": spec}


def test_an_existing_service_gives_its_port_names() -> None:
    ports = [{"number": 9080, "name": "http", "protocol": "HTTP"}, {"number": 9081, "name": "h2"}]
    ports[1]["protocol"] = "HTTP2"
    assert service_port_names(_existing({"app": "payment"}, ports), SPEC) == ("http", "h2")


@pytest.mark.parametrize(
    ("selector", "ports", "text"),
    [
        (None, [{"number": 80, "name": "http", "protocol": "HTTP"}], "no workloadSelector"),
        ({"app": "pay"}, [{"number": 80, "name": "http", "protocol": "HTTP"}], "app=pay"),
        (
            {"app": "payment"},
            [{"number": 80, "name": "http", "protocol": "HTTP"}, {"number": 5432, "name": "db"}],
            "mixes HTTP and TCP",
        ),
    ],
)
def test_an_existing_service_that_cannot_take_the_workload(
    selector: dict[str, str] | None, ports: list[dict[str, object]], text: str
) -> None:
    with pytest.raises(LaunchError, match=text):
        service_port_names(_existing(selector, ports), SPEC)


def test_proxy_arguments() -> None:
    args = proxy_arguments(SPEC, PORTS, xds="127.0.0.1:15010", token_file="/run/t", drain_time=2.5)
    text = " ".join(args)
    assert text.startswith(
        "--xds 127.0.0.1:15010 --node-id payment-v1.shop --admin-port 21003 "
        "--join-token-file /run/t --drain-time-s 2.5 --log-level info"
    )
    assert "--stats-port" not in args and "--health-port" not in args  # explicit: not served
    for item in (
        "WORKLOAD_NAME=payment-v1",
        "NAMESPACE=shop",
        "SERVICE_ACCOUNT=payment-v1",
        "TRELLIS_CAPTURE_MODE=explicit",
        "TRELLIS_OUTBOUND_PORT=21001",
        "TRELLIS_APP_PORTS=21002:8000",
    ):
        assert f"--metadata {item}" in text
    labels = [args[i + 1] for i, arg in enumerate(args) if arg == "--label"]
    # The proxy's metrics carry app and version (destination_app, canonical service).
    assert labels == ["app=payment", "version=v1", "security.istio.io/tlsMode=istio"]


def test_application_environment_points_at_the_sidecar_and_drops_credentials() -> None:
    env = app_environment(
        {"PATH": "/bin", "TRELLIS_TOKEN": "secret", "TRELLIS_JOIN_TOKEN": "jwt", "HOME": "/h"},
        SPEC,
        PORTS,
    )
    assert env == {
        "PATH": "/bin",
        "HOME": "/h",
        "HTTP_PROXY": "http://127.0.0.1:21001",
        "http_proxy": "http://127.0.0.1:21001",
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
        "PORT": "8000",
        "TRELLIS_WORKLOAD": "payment-v1",
        "TRELLIS_NAMESPACE": "shop",
        "TRELLIS_SERVICE": "payment",
    }


def test_inbound_listener_name_matches_the_translation() -> None:
    # The launcher waits for the listener by this name without importing trellis.xds.mesh.
    assert inbound_listener(21002) == "inbound_21002"
    dump = {
        "configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"},
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "dynamic_listeners": [
                    {"name": "outbound", "active_state": {"listener": {}}},
                    {"name": "inbound_21002", "active_state": {"listener": {}}},
                    {"name": "warming", "warming_state": {"listener": {}}},
                ],
            },
        ]
    }
    assert listener_names(dump) == {"outbound", "inbound_21002"}


def test_api_answers() -> None:
    answer = {"results": [{"kind": "WorkloadEntry", "name": "w", "resourceVersion": "12"}]}
    assert resource_version_of(answer, "WorkloadEntry", "w") == "12"
    with pytest.raises(LaunchError, match="ServiceEntry s"):
        resource_version_of(answer, "ServiceEntry", "s")
    nack = {"message": "cannot listen: address already in use"}
    proxies = [
        {"id": "other", "types": {"LDS": {"lastNack": {"message": "x"}}}},
        {"id": "w.default", "types": {"LDS": {"lastNack": nack}, "CDS": {"lastNack": None}}},
    ]
    assert rejection(proxies, "w.default") == f"LDS: {nack['message']}"
    assert rejection(proxies, "absent") is None


def test_exit_status_like_a_shell() -> None:
    assert [exit_status(code) for code in (0, 3, -15, -9, None)] == [0, 3, 143, 137, 1]
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "status 2"


def test_port_candidates_stay_below_the_ephemeral_range() -> None:
    assert candidate_range((32768, 60999)) == range(20000, 32768)
    assert candidate_range((20500, 60999)) == range(61000, 65536)
    assert candidate_range((20500, 65000)) == range(1024, 65536)
    order = list(candidates(range(100, 110), random.Random(7)))
    assert sorted(order) == list(range(100, 110))
    assert order[1] == order[0] + 1 or order[0] == 109


def test_a_change_is_acknowledged_when_every_proxy_has_it() -> None:
    synced = {"CDS": {"state": "SYNCED"}, "RDS": {"state": "NOT SENT"}}
    stale = {"CDS": {"state": "SYNCED"}, "EDS": {"state": "STALE"}}
    proxies = [
        {"id": "a", "snapshotVersion": "12", "types": synced},
        {"id": "b", "snapshotVersion": "13", "types": synced},
    ]
    assert acknowledged(proxies, 12)
    assert not acknowledged(proxies, 13)  # `a` has not got it yet
    assert not acknowledged([{"id": "c", "snapshotVersion": "14", "types": stale}], 12)
    assert acknowledged([{"id": "broken", "snapshotVersion": "", "types": synced}], 12)
    assert acknowledged([], 12)


IN_NAMESPACE = SidecarPorts.in_namespace("10.213.0.7", 8080)


def test_transparent_capture_registers_the_namespace_address_and_the_app_port() -> None:
    entry = workload_entry(
        SPEC, IN_NAMESPACE, ["http"], owner="h/1/a", serving=True, resource_version="3"
    )
    assert entry["spec"]["address"] == "10.213.0.7"
    assert entry["spec"]["ports"] == {"http": 8080}  # iptables sends it to 15006


def test_transparent_capture_proxy_arguments() -> None:
    args = proxy_arguments(
        SPEC, IN_NAMESPACE, xds="unix:/d/xds.sock", token_file="/run/t", drain_time=1
    )
    text = " ".join(args)
    assert text.startswith(
        "--xds unix:/d/xds.sock --node-id payment-v1.shop --admin-port 15000 "
        "--admin-address 10.213.0.7 "
    )
    assert "--metadata TRELLIS_CAPTURE_MODE=transparent" in text
    assert "--metadata TRELLIS_OUTBOUND_PORT=15001" in text
    assert "TRELLIS_APP_PORTS" not in text
    # Istio's agent ports, reachable from the host at the namespace's address.
    assert "--stats-port 15020 --health-port 15021 --public-address 10.213.0.7 " in text


def test_transparent_capture_gives_the_application_no_proxy() -> None:
    env = app_environment(
        {"PATH": "/bin", "HTTP_PROXY": "http://corp:3128", "no_proxy": "x"}, SPEC, IN_NAMESPACE
    )
    assert env == {
        "PATH": "/bin",
        "PORT": "8080",
        "TRELLIS_WORKLOAD": "payment-v1",
        "TRELLIS_NAMESPACE": "shop",
        "TRELLIS_SERVICE": "payment",
    }


def test_metrics_port_becomes_prometheus_annotations() -> None:
    spec = WorkloadSpec(name="orders", metrics_port=9100, metrics_path="/custom")
    args = proxy_arguments(spec, PORTS, xds="127.0.0.1:15010", token_file="/run/t", drain_time=1)
    annotations = [args[i + 1] for i, arg in enumerate(args) if arg == "--annotation"]
    assert annotations == [
        "prometheus.io/scrape=true",
        "prometheus.io/port=9100",
        "prometheus.io/path=/custom",
    ]
    args = proxy_arguments(SPEC, PORTS, xds="127.0.0.1:15010", token_file="/run/t", drain_time=1)
    assert "--annotation" not in args


@pytest.mark.parametrize(
    ("fields", "flag"),
    [({"metrics_port": 0}, "--metrics-port"), ({"metrics_path": "metrics"}, "--metrics-path")],
)
def test_bad_metrics_flags_are_named(fields: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WorkloadSpec(name="orders", **fields)  # type: ignore[arg-type]
    assert caught.value.path == flag
