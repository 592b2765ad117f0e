"""The webhook's pure handler on recorded AdmissionReviews: patch, apply, validate."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from trellis.kube.admission import AdmissionReviewError, review_response
from trellis.kube.settings import PROXY_NAME, STATUS_ANNOTATION, InjectionSettings

from .helpers import apply_response, review, validate

SETTINGS = InjectionSettings()


def test_a_replicaset_pod_is_injected_and_valid_for_kubernetes_1_29() -> None:
    request = review("review-replicaset-pod.json")
    answer = review_response(request, SETTINGS)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == request["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    pod = apply_response(request["request"]["object"], answer)
    validate(pod, "1.29")
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    # The sidecar runs before the application's own init containers (they are meshed too).
    assert names == ["trellis-init", PROXY_NAME, "migrate"]
    proxy = pod["spec"]["initContainers"][1]
    assert "WORKLOAD_NAME=payment-v1" in proxy["args"]
    assert "prometheus.io/port=9100" in proxy["args"]
    init_args = pod["spec"]["initContainers"][0]["args"]
    assert init_args[init_args.index("--exclude-outbound-ports") + 1] == "5432"
    assert init_args[init_args.index("--exclude-outbound-ip-ranges") + 1] == "169.254.169.254/32"
    volumes = [v["name"] for v in pod["spec"]["volumes"]]
    assert volumes[0] == "kube-api-access-x7k2p"
    assert {"trellis-token", "trellis-podinfo", "trellis-tmp"} <= set(volumes)
    assert STATUS_ANNOTATION in pod["metadata"]["annotations"]


def test_the_patch_escapes_annotation_keys() -> None:
    answer = review_response(review("review-replicaset-pod.json"), SETTINGS)
    operations = json.loads(base64.b64decode(answer["response"]["patch"]))
    paths = {op["path"] for op in operations}
    assert "/metadata/annotations/sidecar.trellis.io~1status" in paths
    assert "/metadata/annotations/prometheus.io~1port" in paths


def test_regular_container_variant_is_valid_for_kubernetes_1_25() -> None:
    request = review("review-replicaset-pod.json")
    settings = InjectionSettings(native_sidecar=False)
    pod = apply_response(request["request"]["object"], review_response(request, settings))
    validate(pod, "1.25")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["payment", PROXY_NAME]


def test_an_injected_pod_gets_no_patch() -> None:
    request = review("review-replicaset-pod.json")
    injected = apply_response(request["request"]["object"], review_response(request, SETTINGS))
    again = copy.deepcopy(request)
    again["request"]["object"] = injected
    response = review_response(again, SETTINGS)["response"]
    assert response == {"uid": request["request"]["uid"], "allowed": True}


def test_an_opted_out_pod_gets_no_patch() -> None:
    request = review("review-opt-out-pod.json")
    response = review_response(request, SETTINGS)["response"]
    assert response == {"uid": request["request"]["uid"], "allowed": True}


def test_other_operations_and_resources_pass() -> None:
    request = review("review-replicaset-pod.json")
    update = copy.deepcopy(request)
    update["request"]["operation"] = "UPDATE"
    assert "patch" not in review_response(update, SETTINGS)["response"]
    service = copy.deepcopy(request)
    service["request"]["kind"] = {"group": "", "version": "v1", "kind": "Service"}
    service["request"]["resource"] = {"group": "", "version": "v1", "resource": "services"}
    assert "patch" not in review_response(service, SETTINGS)["response"]
    status = copy.deepcopy(request)
    status["request"]["subResource"] = "status"
    assert "patch" not in review_response(status, SETTINGS)["response"]


def test_an_annotation_that_cannot_be_honoured_refuses_the_pod() -> None:
    request = review("review-replicaset-pod.json")
    request["request"]["object"]["metadata"]["annotations"][
        "traffic.sidecar.istio.io/excludeOutboundPorts"
    ] = "postgres"
    response = review_response(request, SETTINGS)["response"]
    assert response["allowed"] is False
    assert "patch" not in response
    assert "excludeOutboundPorts: 'postgres'" in response["status"]["message"]
    assert response["status"]["code"] == 400


def _without(path: str) -> dict[str, Any]:
    request = review("review-replicaset-pod.json")
    *parents, last = path.split(".")
    node: Any = request
    for key in parents:
        node = node[key]
    del node[last]
    return request


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected an AdmissionReview object"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "apiVersion/kind"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "^request:"),
        (_without("request.uid"), "request.uid"),
        (_without("request.object"), "request.object"),
    ],
)
def test_malformed_reviews_are_named(document: Any, message: str) -> None:
    with pytest.raises(AdmissionReviewError, match=message):
        review_response(document, SETTINGS)


def test_a_malformed_pod_is_an_error_not_a_crash() -> None:
    request = review("review-replicaset-pod.json")
    request["request"]["object"]["metadata"]["labels"] = "app=payment"
    response = review_response(request, SETTINGS)["response"]
    assert response["allowed"] is False
    assert "metadata.labels" in response["status"]["message"]
