"""The application's probes pointed at the sidecar's 15020, as Istio's injector does."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from trellis.core.app_probe import (
    APP_PROBERS_ENV,
    AppProbe,
    GrpcCheck,
    HttpGetCheck,
    TcpCheck,
    parse_app_probes,
)
from trellis.kube.admission import review_response
from trellis.kube.inject import inject_pod
from trellis.kube.probe_rewrite import rewrite_probes
from trellis.kube.settings import PROXY_NAME, InjectionError, InjectionSettings

from .helpers import apply_response, validate

SETTINGS = InjectionSettings()


def probed_pod(**annotations: str) -> dict[str, Any]:
    """A pod whose containers use every kind of probe."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "annotations": dict(annotations)},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "example.com/web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "livenessProbe": {
                        "httpGet": {
                            "path": "/healthz",
                            "port": "http",
                            "scheme": "HTTPS",
                            "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}],
                        },
                        "periodSeconds": 5,
                        "failureThreshold": 4,
                    },
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
                    "startupProbe": {"exec": {"command": ["/bin/ready"]}},
                },
                {
                    "name": "api",
                    "image": "example.com/api:1",
                    "livenessProbe": {"grpc": {"port": 7070, "service": "shop"}},
                },
            ]
        },
    }


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        if container["name"] == name:
            found: dict[str, Any] = container
            return found
    raise AssertionError(f"no container {name}")


def _probes_env(pod: dict[str, Any]) -> str | None:
    env = _container(pod, PROXY_NAME)["env"]
    values = [item["value"] for item in env if item["name"] == APP_PROBERS_ENV]
    return values[0] if values else None


def _sidecar_get(path: str) -> dict[str, Any]:
    return {"path": path, "port": 15020, "scheme": "HTTP"}


def test_http_tcp_and_grpc_probes_go_through_the_sidecar_and_exec_stays() -> None:
    injected = inject_pod(probed_pod(), SETTINGS)
    web, api = _container(injected, "web"), _container(injected, "api")
    # The timing fields stay; the action becomes a plaintext GET on the sidecar.
    assert web["livenessProbe"] == {
        "httpGet": _sidecar_get("/app-health/web/livez"),
        "periodSeconds": 5,
        "failureThreshold": 4,
    }
    assert web["readinessProbe"] == {
        "httpGet": _sidecar_get("/app-health/web/readyz"),
        "timeoutSeconds": 3,
    }
    assert web["startupProbe"] == {"exec": {"command": ["/bin/ready"]}}
    assert api["livenessProbe"] == {"httpGet": _sidecar_get("/app-health/api/livez")}
    env = _probes_env(injected)
    assert env is not None
    # The originals, as the proxy will read them: the named port resolved, scheme and
    # headers kept, timeoutSeconds explicit (the kubelet's default of 1 when unset).
    assert parse_app_probes(env) == {
        "/app-health/web/livez": AppProbe(
            HttpGetCheck(8080, "/healthz", "HTTPS", headers=(("X-Probe", "kubelet"),)), 1
        ),
        "/app-health/web/readyz": AppProbe(TcpCheck(8080), 3),
        "/app-health/api/livez": AppProbe(GrpcCheck(7070, "shop"), 1),
    }
    validate(injected, "1.29")
    validate(inject_pod(probed_pod(), InjectionSettings(native_sidecar=False)), "1.25")


def test_injecting_twice_changes_nothing_and_a_rewritten_probe_is_not_rewritten_again() -> None:
    injected = inject_pod(probed_pod(), SETTINGS)
    assert inject_pod(injected, SETTINGS) == injected
    containers = injected["spec"]["containers"]
    again, probes = rewrite_probes(copy.deepcopy(containers), "containers", ())
    assert again == containers
    assert probes == {}


@pytest.mark.parametrize(
    "annotations",
    [
        {"sidecar.trellis.io/rewriteAppHTTPProbers": "false"},
        {"sidecar.istio.io/rewriteAppHTTPProbers": "false"},
        # Trellis's own annotation wins over Istio's.
        {
            "sidecar.trellis.io/rewriteAppHTTPProbers": "False",
            "sidecar.istio.io/rewriteAppHTTPProbers": "true",
        },
    ],
)
def test_the_pod_can_keep_its_probes(annotations: dict[str, str]) -> None:
    original = probed_pod(**annotations)
    injected = inject_pod(original, SETTINGS)
    for name in ("web", "api"):
        for field in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert _container(injected, name).get(field) == _container(original, name).get(field)
    assert _probes_env(injected) is None


def test_a_rewrite_annotation_that_is_not_a_boolean_is_an_error_naming_it() -> None:
    with pytest.raises(InjectionError, match=r"sidecar.istio.io/rewriteAppHTTPProbers: 'maybe'"):
        inject_pod(probed_pod(**{"sidecar.istio.io/rewriteAppHTTPProbers": "maybe"}), SETTINGS)


def test_probes_the_kubelet_reaches_without_the_sidecar_are_left_alone() -> None:
    pod = probed_pod(**{"traffic.sidecar.istio.io/excludeInboundPorts": "8080"})
    web = _container(pod, "web")
    web["livenessProbe"]["httpGet"]["port"] = "admin"  # no such container port
    injected = inject_pod(pod, SETTINGS)
    web_after = _container(injected, "web")
    assert web_after["livenessProbe"] == web["livenessProbe"]
    assert web_after["readinessProbe"] == web["readinessProbe"]  # 8080 is not captured
    env = _probes_env(injected)
    assert env is not None
    assert list(parse_app_probes(env)) == ["/app-health/api/livez"]


def test_a_pod_without_rewritable_probes_gets_no_variable() -> None:
    pod = probed_pod()
    for container in pod["spec"]["containers"]:
        container.pop("livenessProbe")
        container.pop("readinessProbe", None)
    assert _probes_env(inject_pod(pod, SETTINGS)) is None


def test_a_sidecar_init_container_of_the_application_is_probed_too() -> None:
    pod = probed_pod()
    pod["spec"]["initContainers"] = [
        {
            "name": "cache",
            "image": "example.com/cache:1",
            "restartPolicy": "Always",
            "readinessProbe": {"tcpSocket": {"port": 6379}},
        }
    ]
    injected = inject_pod(pod, SETTINGS)
    cache = _container(injected, "cache")
    assert cache["readinessProbe"] == {"httpGet": _sidecar_get("/app-health/cache/readyz")}
    env = _probes_env(injected)
    assert env is not None
    assert parse_app_probes(env)["/app-health/cache/readyz"] == AppProbe(TcpCheck(6379), 1)
    validate(injected, "1.29")


def test_a_probe_the_sidecar_could_not_send_safely_is_an_error_naming_the_field() -> None:
    pod = probed_pod()
    header = {"name": "X-Probe", "value": "a\r\nInjected: yes"}
    _container(pod, "web")["livenessProbe"]["httpGet"]["httpHeaders"] = [header]
    with pytest.raises(InjectionError, match=r"spec\.containers\[0\]\.livenessProbe: .*value"):
        inject_pod(pod, SETTINGS)


def test_the_webhook_patch_rewrites_the_probes_and_the_result_is_a_valid_pod() -> None:
    pod = probed_pod()
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "4b0f3c8e-probe",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": pod,
        },
    }
    answer = review_response(review, SETTINGS)
    operations = json.loads(base64.b64decode(answer["response"]["patch"]))
    assert any("/containers" in op["path"] for op in operations)
    patched = apply_response(copy.deepcopy(pod), answer)
    assert patched == inject_pod(pod, SETTINGS)
    validate(patched, "1.29")
