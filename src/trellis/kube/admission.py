"""The injection webhook's answer, as a pure function: AdmissionReview in, AdmissionReview out.

The API server sends `admission.k8s.io/v1` AdmissionReviews for the pods the
MutatingWebhookConfiguration selects; its namespaceSelector has already kept
out namespaces without `trellis-injection=enabled`, and the webhook cannot
see namespace labels, so every pod it is sent is injected unless it opts out.
The answer allows the pod and carries the injection as a base64 JSONPatch
(none at all when nothing changes, e.g. an already injected pod); a pod whose
annotations cannot be honoured is refused with a message naming them.
A document that is not an AdmissionReview raises `AdmissionReviewError`
(the server's 400).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from trellis.errors import TrellisError
from trellis.kube.inject import inject_pod, injection_decision
from trellis.kube.json_patch import JsonPatch, diff
from trellis.kube.settings import InjectionError, InjectionSettings

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
MAX_UID_LENGTH = 128


class AdmissionReviewError(TrellisError):
    """The request is not an AdmissionReview v1 the webhook can answer; names the field."""


def review_response(review: Any, settings: InjectionSettings) -> dict[str, Any]:
    """The AdmissionReview answering `review` (a parsed JSON document)."""
    request = _request(review)
    uid = request["uid"]
    if not _is_pod_creation(request):
        return _response(uid, allowed=True)
    pod = request.get("object")
    if not isinstance(pod, Mapping):
        raise AdmissionReviewError("request.object: expected the pod, an object")
    try:
        _text(request, "namespace")  # validated; the pod learns its namespace at run time
        patch = pod_patch(pod, settings)
    except InjectionError as exc:
        return _response(uid, allowed=False, message=f"trellis sidecar injection: {exc}")
    return _response(uid, allowed=True, patch=patch)


def pod_patch(pod: Mapping[str, Any], settings: InjectionSettings) -> JsonPatch:
    """The JSONPatch that injects `pod`; empty when it opts out or is injected already."""
    if not injection_decision(pod).inject:
        return []
    return diff(pod, inject_pod(pod, settings))


def _request(review: Any) -> Mapping[str, Any]:
    if not isinstance(review, Mapping):
        raise AdmissionReviewError("expected an AdmissionReview object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise AdmissionReviewError(
            f"apiVersion/kind: expected {API_VERSION} {KIND}, got "
            f"{review.get('apiVersion')!r} {review.get('kind')!r}"
        )
    request = review.get("request")
    if not isinstance(request, Mapping):
        raise AdmissionReviewError("request: missing, or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > MAX_UID_LENGTH:
        raise AdmissionReviewError("request.uid: expected a non-empty string")
    for field in ("kind", "resource"):
        if field in request and not isinstance(request[field], Mapping):
            raise AdmissionReviewError(f"request.{field}: expected an object")
    return request


def _is_pod_creation(request: Mapping[str, Any]) -> bool:
    """A CREATE of a core/v1 Pod (not a subresource): all the webhook injects."""
    kind = request.get("kind") or {}
    resource = request.get("resource") or {}
    is_pod = (kind.get("group", ""), kind.get("kind")) == ("", "Pod") or (
        resource.get("group", ""),
        resource.get("resource"),
    ) == ("", "pods")
    return is_pod and not request.get("subResource") and request.get("operation") == "CREATE"


def _text(request: Mapping[str, Any], field: str) -> str:
    value = request.get(field, "")
    if not isinstance(value, str):
        raise AdmissionReviewError(f"request.{field}: expected a string")
    return value


def _response(
    uid: str, *, allowed: bool, patch: JsonPatch | None = None, message: str = ""
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(
            json.dumps(patch, separators=(",", ":")).encode()
        ).decode("ascii")
    if message:
        response["status"] = {"code": 400, "reason": "BadRequest", "message": message}
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
