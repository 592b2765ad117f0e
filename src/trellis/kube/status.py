"""The `status` the elected control plane writes on Trellis CRD objects: a pure function.

Like istiod's status writer, the leader runs the analysis (`trellis.api.analyze`)
over the stored config and reports, on each object, Istio's `IstioStatus`
fields:

- `observedGeneration`: the `metadata.generation` the analysis looked at, so
  `observedGeneration == metadata.generation` says the status is current;
- `conditions`: one condition of Istio's type `PassedAnalysis`, `"True"` when
  the analysis found no error about the object, `"False"` (reason
  `ErrorsFound`) otherwise; its `lastTransitionTime` moves only when that
  answer flips. (`Reconciled`, Istio's other condition, claims that every
  proxy has the config; the control plane does not track that per object, so
  it is not written.)
- `validationMessages`: the findings about the object, in the analysis's
  order, each as Istio's `AnalysisMessageBase` (`level` as the enum's name,
  `type.code`/`type.name`, `documentationUrl` for Istio's own codes) plus a
  `description` with the field, the message and the fix. Absent when there
  are none.

`status_patch` compares the status an object has with the one it should have
and answers the JSON merge patch that makes them equal, or None when they
already are: an unchanged object is never written, and conditions of other
types (another controller's) are kept. The patch carries the
`metadata.resourceVersion` the analysis read, so it applies only to that
version of the object.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trellis.api.analyze import Finding, Severity
from trellis.api.meta import ResourceKey

CONDITION_TYPE = "PassedAnalysis"
ISTIO_ANALYSIS_DOCS = "https://istio.io/latest/docs/reference/config/analysis/{code}/"
OWNED_KEYS = ("observedGeneration", "conditions", "validationMessages")
"""The status fields the control plane writes; anything else in `status` is left alone."""

_LEVELS = {Severity.ERROR: "ERROR", Severity.WARNING: "WARNING", Severity.INFO: "INFO"}
"""Istio's `AnalysisMessageBase.Level` names (its decoders refuse `Error`)."""

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ObjectState:
    """One CRD object as the store holds it: which version, and the status it carries."""

    key: ResourceKey
    generation: int
    resource_version: str
    status: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StatusWrite:
    """A merge patch for one object's `status` subresource."""

    key: ResourceKey
    patch: JsonObject

    def describe(self) -> str:
        kind, namespace, name = self.key
        return f"{kind} {namespace}/{name}"


def validation_message(finding: Finding) -> JsonObject:
    """A finding as an entry of `status.validationMessages`."""
    message: JsonObject = {
        "level": _LEVELS[finding.severity],
        "type": {"code": finding.code, "name": finding.name},
    }
    if finding.code.startswith("IST"):
        message["documentationUrl"] = ISTIO_ANALYSIS_DOCS.format(code=finding.code.lower())
    where = f"{finding.path}: " if finding.path else ""
    message["description"] = f"{where}{finding.message} (fix: {finding.hint})"
    return message


def analysis_condition(
    findings: Sequence[Finding],
    generation: int,
    current: Mapping[str, Any] | None,
    now: datetime.datetime,
) -> JsonObject:
    """The `PassedAnalysis` condition; its transition time kept while its status holds."""
    counts = {level: 0 for level in Severity}
    for finding in findings:
        counts[finding.severity] += 1
    passed = counts[Severity.ERROR] == 0
    status = "True" if passed else "False"
    if findings:
        summary = ", ".join(
            f"{count} {level.value.lower()}{'s' if count > 1 else ''}"
            for level, count in counts.items()
            if count
        )
        message = f"analysis found {summary}; see validationMessages"
    else:
        message = "analysis found nothing to report"
    since = current.get("lastTransitionTime") if current is not None else None
    if current is None or current.get("status") != status or not since:
        since = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": CONDITION_TYPE,
        "status": status,
        "reason": "Passed" if passed else "ErrorsFound",
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def desired_status(
    findings: Sequence[Finding],
    generation: int,
    current: Mapping[str, Any],
    now: datetime.datetime,
) -> JsonObject:
    """The owned status fields an object with these findings should carry."""
    conditions = [c for c in _conditions(current) if c.get("type") != CONDITION_TYPE]
    ours = next((c for c in _conditions(current) if c.get("type") == CONDITION_TYPE), None)
    conditions.append(analysis_condition(findings, generation, ours, now))
    status: JsonObject = {"observedGeneration": generation, "conditions": conditions}
    if findings:
        status["validationMessages"] = [validation_message(finding) for finding in findings]
    return status


def status_patch(
    state: ObjectState, findings: Sequence[Finding], now: datetime.datetime
) -> JsonObject | None:
    """The merge patch that gives the object its status; None when it already has it."""
    desired = desired_status(findings, state.generation, state.status, now)
    if all(state.status.get(key) == desired.get(key) for key in OWNED_KEYS):
        return None
    body: JsonObject = dict(desired)
    for key in OWNED_KEYS:
        if key not in desired and key in state.status:
            body[key] = None  # merge patch: remove it
    return {"metadata": {"resourceVersion": state.resource_version}, "status": body}


def plan_status_writes(
    objects: Iterable[ObjectState], findings: Iterable[Finding], now: datetime.datetime
) -> list[StatusWrite]:
    """The writes that bring every object's status up to date, in key order.

    Findings about resources that are not among `objects` (the platform's
    registry, say) are left out: they have no object to carry them.
    """
    by_key: dict[ResourceKey, list[Finding]] = {}
    for finding in findings:
        by_key.setdefault(finding.resource, []).append(finding)
    writes = []
    for state in sorted(objects, key=lambda item: item.key):
        patch = status_patch(state, by_key.get(state.key, []), now)
        if patch is not None:
            writes.append(StatusWrite(state.key, patch))
    return writes


def _conditions(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = status.get("conditions")
    if not isinstance(found, list):
        return []
    return [item for item in found if isinstance(item, Mapping)]
