"""The REST API's config endpoints: apply, get, list, delete, analyze (in process)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import yaml

from trellis.controlplane.memory_store import MemoryConfigStore

from .api_helpers import GROUP, INVALID_YAML, SHOP_YAML, YAML, in_process

VS = f"{GROUP}/namespaces/shop/virtualservices"


def _outcomes(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(item["kind"], item["name"], item["outcome"]) for item in body["results"]]


def test_apply_then_get_and_list() -> None:
    client = in_process()
    created = client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    assert created.status_code == 200, created.text
    assert {outcome for _, _, outcome in _outcomes(created.json())} == {"created"}
    assert created.json()["warnings"] == []

    got = client.get(f"{VS}/payment")
    assert got.status_code == 200
    document = got.json()
    assert document["apiVersion"] == "networking.istio.io/v1"
    assert document["metadata"]["resourceVersion"] == "5"
    assert document["metadata"]["uid"]
    assert [route["weight"] for route in document["spec"]["http"][0]["route"]] == [90, 10]

    listed = client.get(f"{GROUP}/namespaces/shop/workloadentries").json()
    assert listed["kind"] == "WorkloadEntryList"
    assert listed["metadata"]["resourceVersion"] == "5"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["payment-v1", "payment-v2"]
    assert client.get(f"{GROUP}/namespaces/default/workloadentries").json()["items"] == []
    everywhere = client.get(f"{GROUP}/serviceentries").json()["items"]
    assert [item["metadata"]["namespace"] for item in everywhere] == ["shop"]
    older = client.get("/apis/networking.istio.io/v1beta1/namespaces/shop/virtualservices/payment")
    assert older.json()["apiVersion"] == "networking.istio.io/v1beta1"


def test_reapply_is_unchanged_and_a_change_is_configured() -> None:
    client = in_process()
    client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    again = client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML).json()
    assert {outcome for _, _, outcome in _outcomes(again)} == {"unchanged"}
    changed = SHOP_YAML.replace("weight: 90", "weight: 70").replace("weight: 10", "weight: 30")
    third = client.post("/api/v1/apply", content=changed, headers=YAML).json()
    assert ("VirtualService", "payment", "configured") in _outcomes(third)
    assert ("DestinationRule", "payment", "unchanged") in _outcomes(third)
    document = client.get(f"{VS}/payment").json()
    assert document["metadata"]["generation"] == 2
    assert document["metadata"]["resourceVersion"] == "6"


def test_json_list_body() -> None:
    client = in_process()
    documents = list(yaml.safe_load_all(SHOP_YAML))
    response = client.post("/api/v1/apply", json=documents)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 5


def test_invalid_batch_names_every_field_and_stores_nothing() -> None:
    store = MemoryConfigStore()
    client = in_process(store)
    response = client.post(
        "/api/v1/apply", content=SHOP_YAML + "---\n" + INVALID_YAML, headers=YAML
    )
    assert response.status_code == 422
    status = response.json()
    assert status["kind"] == "Status" and status["reason"] == "Invalid"
    causes = [
        (c["document"], c["kind"], c["namespace"], c["name"], c["field"], c["message"])
        for c in status["details"]["causes"]
    ]
    assert causes == [
        (7, "VirtualService", "shop", "cart", "spec.http[0].route[0].weight", "must be >= 0"),
        (7, "VirtualService", "shop", "cart", "spec.http[1].retriez", "unknown field"),
    ]
    assert "nothing was applied" in status["message"]
    assert asyncio.run(store.current_version()) == "0"
    assert client.get(f"{GROUP}/serviceentries").json()["items"] == []


def test_bad_yaml_and_bad_content_type() -> None:
    client = in_process()
    broken = client.post("/api/v1/apply", content="kind: [unclosed", headers=YAML)
    assert broken.status_code == 422
    assert "invalid YAML" in broken.json()["details"]["causes"][0]["message"]
    text = client.post("/api/v1/apply", content=SHOP_YAML, headers={"content-type": "text/plain"})
    assert text.status_code == 415  # also keeps browsers' simple cross-site POSTs out


def test_analysis_errors_reject_unless_forced() -> None:
    client = in_process()
    client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    bad = SHOP_YAML.split("---")[-1].replace("subset: v2", "subset: v9")
    rejected = client.post("/api/v1/apply", content=bad, headers=YAML)
    assert rejected.status_code == 422
    findings = rejected.json()["details"]["findings"]
    assert [(f["code"], f["severity"], f["path"]) for f in findings] == [
        ("IST0101", "Error", "spec.http[0].route[1].destination.subset")
    ]
    assert findings[0]["hint"]
    stored = client.get(f"{VS}/payment").json()
    assert stored["spec"]["http"][0]["route"][1]["destination"]["subset"] == "v2"

    forced = client.post("/api/v1/apply", params={"force": "true"}, content=bad, headers=YAML)
    assert forced.status_code == 200
    assert [f["code"] for f in forced.json()["warnings"]] == ["IST0101"]


def test_warnings_are_returned_with_the_apply() -> None:
    client = in_process()
    client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    rule = SHOP_YAML.split("---")[3]
    extra = rule.rstrip() + "\n  - name: v3\n    labels:\n      version: v3\n"
    response = client.post("/api/v1/apply", content=extra, headers=YAML)
    assert response.status_code == 200, response.text
    warnings = response.json()["warnings"]
    assert [(w["code"], w["severity"], w["resource"]["name"]) for w in warnings] == [
        ("IST0173", "Warning", "payment")
    ]


def test_stale_resource_version_is_a_conflict() -> None:
    client = in_process()
    client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    document = client.get(f"{VS}/payment").json()
    fresh = {
        "apiVersion": document["apiVersion"],
        "kind": document["kind"],
        "metadata": {"name": "payment", "namespace": "shop", "resourceVersion": "5"},
        "spec": document["spec"],
    }
    fresh["spec"]["http"][0]["route"][0]["weight"] = 50
    fresh["spec"]["http"][0]["route"][1]["weight"] = 50
    assert client.post("/api/v1/apply", json=[fresh]).status_code == 200

    stale = json.loads(json.dumps(fresh))
    stale["spec"]["http"][0]["route"][0]["weight"] = 1
    stale["spec"]["http"][0]["route"][1]["weight"] = 99
    conflict = client.post("/api/v1/apply", json=[stale])
    assert conflict.status_code == 409
    body = conflict.json()
    assert body["reason"] == "Conflict"
    assert (body["details"]["expected"], body["details"]["actual"]) == ("5", "6")
    weights = client.get(f"{VS}/payment").json()["spec"]["http"][0]["route"]
    assert [route["weight"] for route in weights] == [50, 50]


def test_dry_run_plans_without_storing() -> None:
    client = in_process()
    response = client.post(
        "/api/v1/apply", params={"dryRun": "true"}, content=SHOP_YAML, headers=YAML
    )
    assert response.status_code == 200
    assert response.json()["dryRun"] is True
    assert {outcome for _, _, outcome in _outcomes(response.json())} == {"created"}
    assert client.get(f"{GROUP}/serviceentries").json()["items"] == []


def test_delete() -> None:
    client = in_process()
    client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    stale = client.delete(f"{VS}/payment", params={"resourceVersion": "1"})
    assert stale.status_code == 409
    deleted = client.delete(f"{VS}/payment")
    assert deleted.status_code == 200
    assert deleted.json()["metadata"]["resourceVersion"] == "6"
    missing = client.get(f"{VS}/payment")
    assert missing.status_code == 404
    assert missing.json()["message"] == 'virtualservices.networking.istio.io "payment" not found'
    assert client.delete(f"{VS}/payment").status_code == 404


def test_unknown_resource_paths() -> None:
    client = in_process()
    for path in (f"{GROUP}/gateways", "/apis/networking.istio.io/v2/virtualservices"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["reason"] == "NotFound"


def test_every_error_is_a_status() -> None:
    client = in_process()
    nowhere = client.get("/no/such/path")
    assert nowhere.status_code == 404 and nowhere.json()["kind"] == "Status"
    bad_query = client.get("/api/v1/watch", params={"timeoutSeconds": "-1"})
    assert bad_query.status_code == 400
    assert "timeoutSeconds" in bad_query.json()["message"]
    wrong_method = client.put(f"{VS}/payment")
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == 405


def test_analyze_endpoints() -> None:
    client = in_process()
    client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    clean = client.get("/api/v1/analyze").json()
    assert clean["findings"] == [] and clean["resourceVersion"] == "5"
    ghost = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
    ghost += "metadata: {name: ghost, namespace: shop}\nspec: {host: ghost}\n"
    merged = client.post("/api/v1/analyze", content=ghost, headers=YAML).json()
    assert [(f["code"], f["resource"]["name"]) for f in merged["findings"]] == [
        ("IST0174", "ghost")
    ]
    assert (
        client.get(f"{GROUP}/destinationrules").json()["items"][0]["metadata"]["name"] == "payment"
    )


def test_openapi_document_and_health() -> None:
    client = in_process()
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Trellis control plane"
    for path in (
        "/api/v1/apply",
        "/api/v1/watch",
        "/api/v1/analyze",
        "/api/v1/proxies",
        "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}",
        "/healthz",
    ):
        assert path in spec["paths"], path
    apply = spec["paths"]["/api/v1/apply"]["post"]
    assert set(apply["requestBody"]["content"]) == {"application/json", "application/yaml"}
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert client.get("/healthz").json() == {"status": "ok"}
