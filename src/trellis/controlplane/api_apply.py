"""What `POST /api/v1/apply` and `/api/v1/analyze` do, apart from HTTP.

An apply validates every document (all problems reported at once), checks the
resulting config with `analyze` (new errors reject the batch unless forced),
then writes the batch to the store in one transaction. A dry run plans the
same batch with the store's own planner and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from trellis.api.analyze import Finding, Severity, analyze
from trellis.api.loader import load_documents, parse_resource
from trellis.api.meta import ResourceKey
from trellis.api.networking import NetworkingResource
from trellis.api.problem import Problem, ResourceError
from trellis.controlplane.api_kinds import UnknownKindError, kind_info
from trellis.controlplane.api_status import StatusError
from trellis.controlplane.store import (
    ApplyResult,
    ConfigStore,
    ConflictError,
    ResourceWrite,
    StoredResource,
)
from trellis.controlplane.translatable import translation_findings
from trellis.controlplane.write_plan import plan_batch, prepare_writes, rfc3339
from trellis.errors import ConfigError

log = logging.getLogger("trellis.controlplane.api")


def problem_json(problem: Problem) -> dict[str, Any]:
    """One validation problem, as a `Status` cause with Trellis' placement fields."""
    return {
        "reason": "FieldValueInvalid",
        "field": problem.path,
        "message": problem.message,
        "source": problem.source,
        "document": problem.document,
        "item": problem.item,
        "kind": problem.kind,
        "namespace": problem.namespace,
        "name": problem.name,
        "text": str(problem),
    }


def finding_json(finding: Finding) -> dict[str, Any]:
    kind, namespace, name = finding.resource
    return {
        "code": finding.code,
        "codeName": finding.name,
        "severity": finding.severity.value,
        "resource": {"kind": kind, "namespace": namespace, "name": name},
        "path": finding.path,
        "message": finding.message,
        "hint": finding.hint,
        "text": str(finding),
    }


def result_json(result: ApplyResult) -> dict[str, Any]:
    stored = result.resource
    entry: dict[str, Any] = {
        "apiVersion": stored.api_version,
        "kind": stored.kind,
        "namespace": stored.namespace,
        "name": stored.name,
        "resourceVersion": stored.resource_version,
        "generation": stored.generation,
        "outcome": result.outcome.value,
    }
    try:
        entry["qualifiedName"] = kind_info(stored.kind).qualified(stored.name)
    except UnknownKindError:
        entry["qualifiedName"] = f"{stored.kind.lower()}/{stored.name}"
    return entry


def parse_batch(text: str, source: str) -> list[NetworkingResource]:
    """Every resource of a request body, or StatusError 422 listing every problem."""
    try:
        return load_documents(text, source)
    except ResourceError as exc:
        raise StatusError(
            422,
            f"{len(exc.problems)} validation error(s); nothing was applied:\n{exc}",
            details={"causes": [problem_json(problem) for problem in exc.problems]},
        ) from None


def to_write(resource: NetworkingResource) -> ResourceWrite:
    meta = resource.metadata
    return ResourceWrite(
        api_version=resource.api_version,
        kind=resource.kind,
        namespace=meta.namespace,
        name=meta.name,
        spec=resource.to_document()["spec"],
        labels=dict(meta.labels),
        annotations=dict(meta.annotations),
        expected_version=meta.resource_version,
    )


def stored_models(items: Iterable[StoredResource]) -> list[NetworkingResource]:
    """Stored records as models; one that no longer validates is left out (and logged)."""
    models: list[NetworkingResource] = []
    for stored in items:
        document = {
            "apiVersion": stored.api_version,
            "kind": stored.kind,
            "metadata": {
                "name": stored.name,
                "namespace": stored.namespace,
                "labels": dict(stored.labels),
                "annotations": dict(stored.annotations),
            },
            "spec": stored.spec,
        }
        try:
            models.append(parse_resource(document, source="store"))
        except ResourceError as exc:
            log.warning("stored %s no longer validates, not analyzed: %s", stored.describe(), exc)
    return models


def merged(
    base: Sequence[NetworkingResource], batch: Sequence[NetworkingResource]
) -> list[NetworkingResource]:
    """`base` with the batch's resources added or replacing those with the same key."""
    replaced = {resource.key for resource in batch}
    return [item for item in base if item.key not in replaced] + list(batch)


def _identity(finding: Finding) -> tuple[str, ResourceKey, str, str]:
    return (finding.code, finding.resource, finding.path, finding.message)


def check_batch(
    stored: Sequence[NetworkingResource], batch: Sequence[NetworkingResource], *, force: bool
) -> list[Finding]:
    """Findings the batch is answerable for: those about its resources and those it causes.

    Raises StatusError 422 when one of them is an error, unless `force`.
    """
    before = {_identity(finding) for finding in analyze(stored)}
    keys = {resource.key for resource in batch}
    after = merged(stored, batch)
    relevant = [
        finding
        for finding in [*analyze(after), *translation_findings(after)]
        if finding.resource in keys or _identity(finding) not in before
    ]
    errors = [finding for finding in relevant if finding.severity is Severity.ERROR]
    if errors and not force:
        codes = ", ".join(sorted({finding.code for finding in errors}))
        lines = "\n".join(str(finding) for finding in errors)
        raise StatusError(
            422,
            f"analysis found {len(errors)} error(s) ({codes}); nothing was applied "
            f"(apply with ?force=true, or `trellis apply --force`, to store it anyway):\n{lines}",
            details={"findings": [finding_json(finding) for finding in relevant]},
        )
    return relevant


def _check_stored(
    stored: Sequence[StoredResource],
    batch: Sequence[NetworkingResource],
    force: bool,
    registry: Sequence[NetworkingResource] = (),
) -> list[Finding]:
    return check_batch([*stored_models(stored), *registry], batch, force=force)


async def plan_dry_run(store: ConfigStore, writes: Sequence[ResourceWrite]) -> list[ApplyResult]:
    """What `store.apply(writes)` would do now, without writing (same planner as the stores)."""
    prepared = prepare_writes(writes)
    currents = {write.key: await store.get(*write.key) for write in prepared}
    version = int(await store.current_version())
    return plan_batch(prepared, currents.get, version, rfc3339(time.time())).results


async def apply_batch(
    store: ConfigStore,
    text: str,
    *,
    source: str,
    force: bool,
    dry_run: bool,
    analyze_on_apply: bool,
    registry: Sequence[NetworkingResource] = (),
) -> dict[str, Any]:
    """Validate, check and store a batch; the JSON answer (results like kubectl's, warnings)."""
    # Parsing and analysis are CPU work: off the event loop, which also serves xDS.
    batch = await asyncio.to_thread(parse_batch, text, source)
    findings: list[Finding] = []
    if analyze_on_apply:
        stored = await store.list()
        findings = await asyncio.to_thread(_check_stored, stored, batch, force, registry)
    writes = [to_write(resource) for resource in batch]
    try:
        results = await (plan_dry_run(store, writes) if dry_run else store.apply(writes))
    except ConflictError as exc:
        raise StatusError(
            409,
            str(exc),
            details={
                "kind": exc.kind,
                "namespace": exc.namespace,
                "name": exc.name,
                "expected": exc.expected,
                "actual": exc.actual,
            },
        ) from None
    except ConfigError as exc:
        raise StatusError(422, f"nothing was applied: {exc}") from None
    return {
        "kind": "ApplyResult",
        "dryRun": dry_run,
        "results": [result_json(result) for result in results],
        "warnings": [finding_json(finding) for finding in findings],
    }


async def analyze_config(
    store: ConfigStore,
    text: str | None,
    source: str,
    registry: Sequence[NetworkingResource] = (),
) -> dict[str, Any]:
    """Findings over the stored config, with the documents in `text` (if any) merged in.

    `registry`: the platform's services (Kubernetes discovery), analysed beside the store's.
    """
    listing = await store.list_with_version()

    def run() -> list[Finding]:
        resources = [*stored_models(listing.items), *registry]
        if text is not None:
            resources = merged(resources, parse_batch(text, source))
        return analyze(resources)

    findings = await asyncio.to_thread(run)
    return {
        "kind": "AnalysisResult",
        "resourceVersion": listing.resource_version,
        "findings": [finding_json(finding) for finding in findings],
    }
