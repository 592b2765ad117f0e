"""Injection of workload manifests, for `trellis inject -f` (like `istioctl kube-inject`).

A Pod is injected as it is; the controllers that make pods are injected in
their pod template (`spec.template`, or `spec.jobTemplate.spec.template` for a
CronJob), with the controller's name as the workload name. Every other kind
(Services, ConfigMaps, ...) passes through unchanged, so a whole application
manifest can be piped through `trellis inject`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from trellis.kube.inject import Decision, inject_pod, injection_decision
from trellis.kube.settings import InjectionError, InjectionSettings

TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
"""Where each kind keeps the pod it makes (the empty path: the document is the pod)."""


def inject_document(
    document: Mapping[str, Any], settings: InjectionSettings
) -> tuple[dict[str, Any], Decision | None]:
    """`document` with its pod (template) injected, and the decision; None: not a workload.

    InjectionError names the document and the field when its pod is malformed
    or an annotation cannot be honoured.
    """
    result = copy.deepcopy(dict(document))
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in TEMPLATE_PATHS:
        return result, None
    path = TEMPLATE_PATHS[kind]
    metadata = document.get("metadata")
    name = str(metadata.get("name") or "") if isinstance(metadata, Mapping) else ""
    label = f"{kind} {name}" if name else kind
    parent: dict[str, Any] = result
    for depth, key in enumerate(path[:-1]):
        child = parent.get(key)
        if not isinstance(child, dict):
            dotted = ".".join(path[: depth + 1])
            raise InjectionError(f"{label}: {dotted}: expected an object")
        parent = child
    pod = parent[path[-1]] if path else result
    if not isinstance(pod, dict):
        raise InjectionError(f"{label}: {'.'.join(path)}: expected a pod template object")
    try:
        decision = injection_decision(pod)
        injected = inject_pod(pod, settings, workload_name=name or None)
    except InjectionError as exc:
        raise InjectionError(f"{label}: {exc}") from None
    if not path:
        return injected, decision
    parent[path[-1]] = injected
    return result, decision
