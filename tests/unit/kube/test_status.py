"""The status the leader writes on CRD objects: findings in, merge patches out.

`trellis.kube.status`, pure: no API server, no clock but the one passed in.
"""

from __future__ import annotations

import datetime
from typing import Any

from trellis.api.analyze import Finding, Severity, analyze
from trellis.api.loader import parse_resource
from trellis.kube.status import (
    CONDITION_TYPE,
    ObjectState,
    plan_status_writes,
    status_patch,
    validation_message,
)

T0 = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)
VS = ("VirtualService", "shop", "reviews")
SE = ("ServiceEntry", "shop", "ratings")


def _resources(host: str) -> list[Any]:
    documents = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": host}}]}]},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "ratings", "namespace": "shop"},
            "spec": {
                "hosts": ["ratings.shop.svc.cluster.local"],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "10.0.0.7"}],
            },
        },
    ]
    return [parse_resource(document, source="test") for document in documents]


def _state(key: Any, status: dict[str, Any], generation: int = 1, version: str = "7") -> Any:
    return ObjectState(key, generation, version, status)


def _apply(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The status after the API server merges `patch` in (RFC 7386, one level)."""
    merged = dict(status)
    for key, value in patch["status"].items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def test_a_finding_becomes_an_istio_validation_message() -> None:
    (finding,) = analyze(_resources("nowhere"))
    assert finding.code == "IST0101"
    message = validation_message(finding)
    assert message == {
        "level": "ERROR",
        "type": {"code": "IST0101", "name": "ReferencedResourceNotFound"},
        "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/",
        "description": "spec.http[0].route[0].destination.host: "
        'Referenced host not found: "nowhere" '
        "(fix: create a ServiceEntry with host 'nowhere' or correct the host)",
    }
    own = Finding("TRL0102", Severity.WARNING, SE, "", "no endpoints", "start one")
    assert validation_message(own) == {
        "level": "WARNING",
        "type": {"code": "TRL0102", "name": "ServiceHasNoEndpoints"},
        "description": "no endpoints (fix: start one)",
    }  # Trellis's own codes have no Istio page


def test_findings_are_written_then_cleared_and_unchanged_objects_are_not_written() -> None:
    broken = analyze(_resources("nowhere"))
    objects = [_state(VS, {}), _state(SE, {})]
    writes = {write.key: write.patch for write in plan_status_writes(objects, broken, T0)}
    assert set(writes) == {VS, SE}  # every object gets its first status
    vs = _apply({}, writes[VS])
    assert writes[VS]["metadata"] == {"resourceVersion": "7"}  # the version analysed
    assert vs["observedGeneration"] == 1
    assert [m["type"]["code"] for m in vs["validationMessages"]] == ["IST0101"]
    (condition,) = vs["conditions"]
    assert condition == {
        "type": CONDITION_TYPE,
        "status": "False",
        "reason": "ErrorsFound",
        "message": "analysis found 1 error; see validationMessages",
        "observedGeneration": 1,
        "lastTransitionTime": "2025-03-01T12:00:00Z",
    }
    se = _apply({}, writes[SE])
    assert "validationMessages" not in se and se["conditions"][0]["status"] == "True"

    # Analysed again later with nothing changed: nothing to write.
    written = [_state(VS, vs, version="8"), _state(SE, se, version="9")]
    assert plan_status_writes(written, broken, T1) == []

    # The host fixed (generation 2): the messages go, the condition flips at T1.
    fixed = analyze(_resources("ratings"))
    assert fixed == []
    (write,) = plan_status_writes([_state(VS, vs, generation=2), _state(SE, se)], fixed, T1)
    assert write.patch["status"]["validationMessages"] is None  # removed by the merge
    cleared = _apply(vs, write.patch)
    assert "validationMessages" not in cleared and cleared["observedGeneration"] == 2
    assert cleared["conditions"][0]["status"] == "True"
    assert cleared["conditions"][0]["lastTransitionTime"] == "2025-03-01T12:05:00Z"


def test_a_new_generation_with_the_same_answer_keeps_the_transition_time() -> None:
    findings = analyze(_resources("nowhere"))
    first = _apply({}, plan_status_writes([_state(VS, {})], findings, T0)[0].patch)
    patch = status_patch(_state(VS, first, generation=3), findings, T1)
    assert patch is not None
    again = _apply(first, patch)
    assert again["observedGeneration"] == 3
    assert again["conditions"][0]["lastTransitionTime"] == "2025-03-01T12:00:00Z"


def test_other_conditions_and_fields_are_kept() -> None:
    theirs = {"type": "Reconciled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    status = {"conditions": [theirs], "somethingElse": {"kept": True}}
    patch = status_patch(_state(SE, status), [], T0)
    assert patch is not None
    assert "somethingElse" not in patch["status"]  # not ours: the merge leaves it alone
    merged = _apply(status, patch)
    assert merged["somethingElse"] == {"kept": True}
    assert [c["type"] for c in merged["conditions"]] == ["Reconciled", CONDITION_TYPE]
    assert status_patch(_state(SE, merged), [], T1) is None


def test_warnings_pass_and_are_counted() -> None:
    findings = [
        Finding("IST0130", Severity.WARNING, VS, "spec.http[1]", "rule not used", "move it"),
        Finding("IST0130", Severity.WARNING, VS, "spec.http[2]", "rule not used", "move it"),
        Finding("TRL0102", Severity.INFO, VS, "", "just so you know", "nothing"),
    ]
    patch = status_patch(_state(VS, {}), findings, T0)
    assert patch is not None
    (condition,) = patch["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("True", "Passed")
    assert condition["message"] == "analysis found 2 warnings, 1 info; see validationMessages"
    assert [m["level"] for m in patch["status"]["validationMessages"]] == [
        "WARNING",
        "WARNING",
        "INFO",
    ]


def test_findings_about_objects_the_store_does_not_hold_are_left_out() -> None:
    elsewhere = Finding("TRL0102", Severity.WARNING, SE, "", "no endpoints", "start one")
    (write,) = plan_status_writes([_state(VS, {})], [elsewhere], T0)
    assert write.key == VS and "validationMessages" not in write.patch["status"]


def test_a_malformed_status_is_replaced() -> None:
    patch = status_patch(_state(VS, {"conditions": "nonsense", "observedGeneration": "1"}), [], T0)
    assert patch is not None
    assert [c["type"] for c in patch["status"]["conditions"]] == [CONDITION_TYPE]
    assert patch["status"]["observedGeneration"] == 1
