"""Shared by the injection tests: the recorded AdmissionReviews and the schema check."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate

DATA = Path(__file__).resolve().parents[2] / "data" / "kube"


def review(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / name).read_text())
    return loaded


def apply_response(pod: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """What the API server does with the webhook's answer: decode and apply the patch."""
    response = answer["response"]
    assert response["allowed"] is True
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, operations)
    return patched


def validate(manifest: dict[str, Any], version: str) -> None:
    """Raises kubernetes_validate.ValidationError when `manifest` is not valid for `version`
    (strict: unknown fields are errors)."""
    kubernetes_validate.validate(manifest, version, strict=True)
