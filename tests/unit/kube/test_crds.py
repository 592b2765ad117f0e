"""The CRDs: Istio's names, structural schemas generated from the models, and schemas that
accept what Trellis accepts and reject what it rejects."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from trellis.api.loader import RESOURCE_TYPES, parse_resource
from trellis.api.problem import ResourceError
from trellis.controlplane.api_kinds import KINDS
from trellis.kube.crds import PRINTER_COLUMNS, crd_manifests
from trellis.kube.structural import structural_problems

from .crd_validation import errors, schemas_by_api_version, shipped_documents

CRDS = crd_manifests(KINDS)
SCHEMAS = schemas_by_api_version()
K8S_VERSIONS = ("1.29", "1.33", kubernetes_validate.latest_version())


def crd(kind: str) -> dict[str, Any]:
    return next(c for c in CRDS if c["spec"]["names"]["kind"] == kind)


def test_one_crd_per_kind_with_istio_names() -> None:
    assert sorted(c["spec"]["names"]["kind"] for c in CRDS) == sorted(RESOURCE_TYPES)
    names = {c["metadata"]["name"] for c in CRDS}
    assert names == {
        "virtualservices.networking.istio.io",
        "destinationrules.networking.istio.io",
        "serviceentries.networking.istio.io",
        "workloadentries.networking.istio.io",
        "peerauthentications.security.istio.io",
        "authorizationpolicies.security.istio.io",
        "telemetries.telemetry.istio.io",
    }
    vs = crd("VirtualService")["spec"]
    assert vs["scope"] == "Namespaced"
    assert vs["names"]["shortNames"] == ["vs"]
    assert vs["names"]["listKind"] == "VirtualServiceList"
    assert vs["names"]["categories"] == ["istio-io", "networking-istio-io", "trellis-io"]
    assert crd("AuthorizationPolicy")["spec"]["names"]["categories"][1] == "security-istio-io"


def test_every_served_version_has_the_schema_and_status_and_v1_is_stored() -> None:
    for info in KINDS:
        versions = crd(info.kind)["spec"]["versions"]
        assert [v["name"] for v in versions] == list(info.versions)
        assert [v["name"] for v in versions if v["storage"]] == ["v1"]
        assert all(v["served"] and v["subresources"] == {"status": {}} for v in versions)
        schemas = {json.dumps(v["schema"], sort_keys=True) for v in versions}
        assert len(schemas) == 1


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crds_are_valid_kubernetes_objects(version: str) -> None:
    for manifest in CRDS:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_schemas_are_structural() -> None:
    for manifest in CRDS:
        for version in manifest["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            assert structural_problems(schema) == [], manifest["metadata"]["name"]
            text = json.dumps(schema)
            for banned in ('"$ref"', '"anyOf"', '"const"', '"title"', '"default"'):
                assert banned not in text, (manifest["metadata"]["name"], banned)


def test_schema_details_follow_the_models() -> None:
    spec = crd("DestinationRule")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert spec["required"] == ["spec"]
    policy = spec["properties"]["spec"]["properties"]["trafficPolicy"]
    assert policy["nullable"] is True
    simple = policy["properties"]["loadBalancer"]["properties"]["simple"]
    assert simple["type"] == "string"
    assert "ROUND_ROBIN" in simple["enum"] and "LEAST_CONN" not in simple["enum"]
    outlier = policy["properties"]["outlierDetection"]["properties"]
    assert outlier["interval"]["type"] == "string" and "pattern" in outlier["interval"]
    assert outlier["maxEjectionPercent"] == {
        "maximum": 100,
        "minimum": 0,
        "type": "integer",
        "format": "int32",
    }
    subsets = spec["properties"]["spec"]["properties"]["subsets"]["items"]["properties"]
    assert subsets["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    pa = crd("PeerAuthentication")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "required" not in pa  # an empty PeerAuthentication is legal
    assert pa["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_printer_columns_point_at_schema_fields() -> None:
    for kind, columns in PRINTER_COLUMNS.items():
        schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for column in columns:
            if column.json_path.startswith(".metadata."):
                continue
            node = schema
            for part in column.json_path.strip(".").split("."):
                node = node["properties"][part]
            assert node["type"] in ("string", "array"), (kind, column.name)


def test_every_shipped_example_trellis_accepts_is_accepted_by_its_crd() -> None:
    accepted, kinds = 0, set()
    for where, document in shipped_documents():
        try:
            resource = parse_resource(document)
        except ResourceError:
            continue  # examples of errors; the CRD may or may not catch them earlier
        schema = SCHEMAS[(document["apiVersion"], document["kind"])]
        assert errors(schema, document) == [], where
        # What the control plane writes back (e.g. `trellis get -o yaml`) is accepted too.
        written = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert errors(schema, written) == [], f"{where} (as written back)"
        accepted += 1
        kinds.add(document["kind"])
    assert accepted >= 40
    assert kinds == set(RESOURCE_TYPES)


GOOD: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1beta1",
    "kind": "VirtualService",
    "metadata": {"name": "payment", "namespace": "shop"},
    "spec": {
        "hosts": ["payment"],
        "http": [
            {
                "match": [{"uri": {"prefix": "/pay"}, "headers": {"x-canary": {"exact": "1"}}}],
                "route": [
                    {"destination": {"host": "payment", "subset": "v1"}, "weight": 90},
                    {"destination": {"host": "payment", "subset": "v2"}, "weight": 10},
                ],
                "timeout": "1.5s",
                "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx"},
            }
        ],
    },
}


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(GOOD))
    node: Any = document
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return document


def test_good_virtual_service_is_accepted_by_both() -> None:
    parse_resource(GOOD)
    assert errors(SCHEMAS[("networking.istio.io/v1beta1", "VirtualService")], GOOD) == []


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("spec", "http", 0, "mirror"), {"host": "x"}, "'mirror' was unexpected"),
        (("spec", "http", 0, "route", 0, "weight"), "ninety", "'ninety' is not of type"),
        (("spec", "http", 0, "timeout"), 10, "10 is not of type 'string'"),
        (("spec", "http", 0, "timeout"), "ten seconds", "does not match"),
        (("spec", "http", 0, "retries", "attempts"), -1, "less than the minimum"),
        (("spec", "hosts"), "payment", "'payment' is not of type 'array'"),
    ],
)
def test_bad_virtual_service_is_rejected_by_both(
    path: tuple[Any, ...], value: Any, message: str
) -> None:
    document = _with(path, value)
    with pytest.raises(ResourceError):
        parse_resource(document)
    found = errors(SCHEMAS[("networking.istio.io/v1beta1", "VirtualService")], document)
    assert any(message in problem for problem in found), found


def test_missing_required_and_unsupported_enum_are_rejected() -> None:
    schema = SCHEMAS[("networking.istio.io/v1", "DestinationRule")]
    assert any("'host' is a required property" in e for e in errors(schema, {"spec": {}}))
    lb = {"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_CONN"}}}
    assert any("is not one of" in e for e in errors(schema, {"spec": lb}))
    policy = SCHEMAS[("security.istio.io/v1", "AuthorizationPolicy")]
    assert any("is not one of" in e for e in errors(policy, {"spec": {"action": "CUSTOM"}}))
