"""Injection of one pod: what it adds, when it does not, and that it happens once."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest

from trellis.kube.inject import inject_pod, injection_decision, namespace_enabled
from trellis.kube.settings import (
    INIT_NAME,
    PROXY_NAME,
    STATUS_ANNOTATION,
    InjectionError,
    InjectionSettings,
    Resources,
)
from trellis.proxy.cli import parser

from .helpers import validate

SETTINGS = InjectionSettings()


def pod(**metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", **metadata},
        "spec": {"containers": [{"name": "web", "image": "example.com/web:1"}]},
    }


def container(spec: dict[str, Any], field: str, name: str) -> dict[str, Any]:
    found = [c for c in spec.get(field, []) if c["name"] == name]
    assert len(found) == 1, f"{name} in {field}: {[c['name'] for c in spec.get(field, [])]}"
    result: dict[str, Any] = found[0]
    return result


def test_native_sidecar_is_an_init_container_after_the_capture_step() -> None:
    injected = inject_pod(pod(), SETTINGS)
    spec = injected["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [INIT_NAME, PROXY_NAME]
    assert [c["name"] for c in spec["containers"]] == ["web"]
    proxy = container(spec, "initContainers", PROXY_NAME)
    assert proxy["restartPolicy"] == "Always"
    assert proxy["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    validate(injected, "1.29")


def test_regular_sidecar_for_older_clusters() -> None:
    injected = inject_pod(pod(), InjectionSettings(native_sidecar=False))
    spec = injected["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [INIT_NAME]
    assert [c["name"] for c in spec["containers"]] == ["web", PROXY_NAME]
    assert "restartPolicy" not in container(spec, "containers", PROXY_NAME)
    validate(injected, "1.25")


def test_the_schema_check_can_fail_a_native_sidecar_before_kubernetes_1_28() -> None:
    injected = inject_pod(pod(), SETTINGS)
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        validate(injected, "1.27")


def test_cni_leaves_out_the_privileged_init_container() -> None:
    injected = inject_pod(pod(), InjectionSettings(cni=True))
    assert [c["name"] for c in injected["spec"]["initContainers"]] == [PROXY_NAME]
    status = json.loads(injected["metadata"]["annotations"][STATUS_ANNOTATION])
    assert status["initContainers"] == []
    injected = inject_pod(pod(), InjectionSettings(cni=True, native_sidecar=False))
    assert "initContainers" not in injected["spec"]
    validate(injected, "1.25")


def test_the_init_step_captures_like_istio() -> None:
    annotations = {
        "traffic.sidecar.istio.io/excludeInboundPorts": "9000, 9001",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "5432",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32,10.0.0.0/8",
    }
    init = container(
        inject_pod(pod(annotations=annotations), SETTINGS)["spec"], "initContainers", INIT_NAME
    )
    assert init["command"] == ["trellis"]
    args = init["args"]
    assert args[0] == "iptables"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options == {
        "--proxy-gid": "1337",
        "--outbound-port": "15001",
        "--inbound-port": "15006",
        "--exclude-inbound-ports": "15000,15020,15021,15090,9000,9001",
        "--exclude-outbound-ports": "5432",
        "--exclude-outbound-ip-ranges": "169.254.169.254/32,10.0.0.0/8",
    }
    security = init["securityContext"]
    assert security["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert (security["runAsUser"], security["runAsNonRoot"]) == (0, False)


def test_the_proxy_knows_its_pod_from_the_downward_api() -> None:
    labels = {"app": "web", "version": "v2", "pod-template-hash": "7f9c"}
    annotations = {"prometheus.io/port": "9100", "prometheus.io/path": "/metrics"}
    injected = inject_pod(
        pod(labels=labels, annotations=annotations), SETTINGS, workload_name="web"
    )
    proxy = container(injected["spec"], "initContainers", PROXY_NAME)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in proxy["env"]}
    assert env == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "SERVICE_ACCOUNT": "spec.serviceAccountName",
        "INSTANCE_IP": "status.podIP",
    }
    args = proxy["args"]
    assert args[:3] == ["proxy", "--xds", "trellis.trellis-system.svc:15012"]
    pairs = list(zip(args[3::2], args[4::2], strict=True))
    # TLS to the control plane, trusting the root from the namespace's ConfigMap.
    root = "/var/run/secrets/trellis/ca/root-cert.pem"
    assert ("--xds-root-ca", root) in pairs
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "trellis-ca-root")
    assert (mount["mountPath"], mount["readOnly"]) == ("/var/run/secrets/trellis/ca", True)
    volume = next(v for v in injected["spec"]["volumes"] if v["name"] == "trellis-ca-root")
    assert volume["configMap"]["name"] == "trellis-ca-root-cert"
    assert volume["configMap"]["items"] == [{"key": "root-cert.pem", "path": "root-cert.pem"}]
    assert ("--metadata", "NAMESPACE=$(POD_NAMESPACE)") in pairs
    assert ("--metadata", "WORKLOAD_NAME=web") in pairs
    assert ("--join-token-file", "/var/run/secrets/tokens/trellis-token") in pairs
    # The probes' and the scrape's ports, from outside the pod; the admin stays local.
    options = parser().parse_args(args[1:])
    assert (options.admin_port, options.admin_address) == (15000, "127.0.0.1")
    assert (options.stats_port, options.health_port) == (15020, 15021)
    assert options.public_address == "0.0.0.0"
    assert [v for k, v in pairs if k == "--label"] == ["app=web", "version=v2"]
    # The application's metrics move to the proxy, which merges them into 15020.
    assert [v for k, v in pairs if k == "--annotation"] == [
        "prometheus.io/path=/metrics",
        "prometheus.io/port=9100",
    ]
    assert injected["metadata"]["annotations"]["prometheus.io/port"] == "15020"
    security = proxy["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (1337, 1337)
    assert proxy["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert proxy["ports"] == [
        {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}
    ]
    token = next(v for v in injected["spec"]["volumes"] if v["name"] == "trellis-token")
    source = token["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == "trellis-ca"


def test_label_values_are_not_expanded_by_the_kubelet() -> None:
    proxy = container(
        inject_pod(pod(labels={"team": "$(HOME)"}), SETTINGS)["spec"], "initContainers", PROXY_NAME
    )
    assert "team=$$(HOME)" in proxy["args"]


def test_prometheus_annotations_point_at_the_merged_endpoint() -> None:
    annotations = inject_pod(pod(), SETTINGS)["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "15020"
    assert annotations["prometheus.io/path"] == "/stats/prometheus"
    kept = inject_pod(pod(annotations={"prometheus.io/scrape": "false"}), SETTINGS)
    assert kept["metadata"]["annotations"]["prometheus.io/scrape"] == "false"
    assert "prometheus.io/port" not in kept["metadata"]["annotations"]


def test_injecting_twice_is_injecting_once() -> None:
    once = inject_pod(pod(labels={"app": "web"}), SETTINGS)
    assert inject_pod(once, SETTINGS) == once
    assert inject_pod(once, InjectionSettings(native_sidecar=False)) == once
    assert injection_decision(once).reason == "already injected"


def test_the_input_is_not_modified() -> None:
    original = pod(annotations={"a": "b"})
    before = copy.deepcopy(original)
    inject_pod(original, SETTINGS)
    assert original == before


@pytest.mark.parametrize("key", ["sidecar.trellis.io/inject", "sidecar.istio.io/inject"])
@pytest.mark.parametrize("where", ["labels", "annotations"])
def test_a_pod_opts_out(key: str, where: str) -> None:
    opted_out = pod(**{where: {key: "false"}})
    assert inject_pod(opted_out, SETTINGS) == opted_out
    assert key in injection_decision(opted_out).reason


def test_host_network_pods_are_left_alone() -> None:
    host = pod()
    host["spec"]["hostNetwork"] = True
    assert inject_pod(host, SETTINGS) == host


def test_the_namespace_label_decides_when_given() -> None:
    assert namespace_enabled({"trellis-injection": "enabled"})
    assert namespace_enabled({"istio-injection": "enabled"})
    assert not namespace_enabled({"trellis-injection": "disabled", "istio-injection": "enabled"})
    assert not namespace_enabled({})
    assert inject_pod(pod(), SETTINGS, namespace_labels={}) == pod()
    assert injection_decision(pod(), {"istio-injection": "enabled"}).inject
    assert injection_decision(pod()).inject  # not given: `trellis inject`, the webhook


def test_workload_name_from_a_replicaset_owner() -> None:
    made = pod(
        generateName="payment-v1-6d8f9b7c5d-",
        labels={"pod-template-hash": "6d8f9b7c5d"},
        ownerReferences=[
            {"kind": "ReplicaSet", "name": "payment-v1-6d8f9b7c5d", "controller": True}
        ],
    )
    del made["metadata"]["name"]
    proxy = container(inject_pod(made, SETTINGS)["spec"], "initContainers", PROXY_NAME)
    assert "WORKLOAD_NAME=payment-v1" in proxy["args"]


@pytest.mark.parametrize(
    ("annotation", "value", "message"),
    [
        ("traffic.sidecar.istio.io/excludeInboundPorts", "http", "excludeInboundPorts: 'http'"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "70000", "excludeOutboundPorts"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.0.0/33", "not a CIDR"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "fd00::/8", "only IPv4"),
    ],
)
def test_bad_annotations_are_named(annotation: str, value: str, message: str) -> None:
    with pytest.raises(InjectionError, match=message):
        inject_pod(pod(annotations={annotation: value}), SETTINGS)


def test_malformed_pods_are_named() -> None:
    with pytest.raises(InjectionError, match=r"metadata\.annotations: expected an object"):
        inject_pod(pod(annotations=["x"]), SETTINGS)
    bad = pod()
    bad["spec"]["volumes"] = {"name": "data"}
    with pytest.raises(InjectionError, match=r"spec\.volumes: expected a list"):
        inject_pod(bad, SETTINGS)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"control_plane": "trellis"}, "control_plane"),
        ({"control_plane": "trellis:0"}, "control_plane"),
        ({"image": ""}, "image"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_settings_name_the_bad_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InjectionError, match=f"^{field}:"):
        InjectionSettings(**kwargs)


def test_resources_are_quantities() -> None:
    with pytest.raises(InjectionError, match="memory_limit"):
        Resources("100m", "64Mi", "1", "lots")
