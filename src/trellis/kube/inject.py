"""Sidecar injection of one pod, as a pure function: pod in, injected pod out.

`injection_decision` says whether a pod gets a sidecar (its opt-out label or
annotation, its namespace's label when the caller knows it, host networking,
an earlier injection); `inject_pod` returns a new pod with the init step, the
proxy, its volumes and annotations, or the same pod unchanged when the
decision is no. The webhook (`admission`) and `trellis inject` (`workload`)
share both, so a pod injected offline looks exactly like one injected by the
webhook, and injecting twice changes nothing the second time.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trellis import __version__
from trellis.core.app_probe import encode_app_probes
from trellis.core.sidecar_ports import (
    MERGED_METRICS_PORT,
)
from trellis.kube.probe_rewrite import rewrite_enabled, rewrite_probes
from trellis.kube.settings import (
    INIT_NAME,
    INJECT_KEYS,
    METRICS_PATH,
    NAMESPACE_LABELS,
    PODINFO_VOLUME,
    PROXY_NAME,
    STATUS_ANNOTATION,
    TEMPLATE_HASH_LABEL,
    TLS_MODE_LABEL,
    TMP_VOLUME,
    TOKEN_VOLUME,
    InjectionError,
    InjectionSettings,
)
from trellis.kube.sidecar import Capture, Workload, init_container, proxy_container, volumes

Json = dict[str, Any]

OPT_OUT_VALUES = frozenset({"false", "n", "no", "off", "disabled"})
PROMETHEUS_KEYS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
TRAFFIC_PREFIXES = ("traffic.sidecar.trellis.io/", "traffic.sidecar.istio.io/")


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to inject, and why (for logs and `trellis inject`'s messages)."""

    inject: bool
    reason: str


def injection_decision(
    pod: Mapping[str, Any], namespace_labels: Mapping[str, str] | None = None
) -> Decision:
    """Whether `pod` gets a sidecar.

    `namespace_labels` None means the namespace was checked elsewhere (the
    webhook's namespaceSelector) or not at all (`trellis inject`, like
    `istioctl kube-inject`); otherwise the namespace must be labelled
    `trellis-injection=enabled` (or `istio-injection=enabled`).
    """
    metadata = _mapping(pod.get("metadata"), "metadata")
    labels = _mapping(metadata.get("labels"), "metadata.labels")
    annotations = _mapping(metadata.get("annotations"), "metadata.annotations")
    if STATUS_ANNOTATION in annotations or PROXY_NAME in _container_names(pod):
        return Decision(False, "already injected")
    for where, values in (("label", labels), ("annotation", annotations)):
        for key in INJECT_KEYS:
            if str(values.get(key, "")).strip().lower() in OPT_OUT_VALUES:
                return Decision(False, f"the pod's {where} {key} is {values[key]!r}")
    spec = _mapping(pod.get("spec"), "spec")
    if spec.get("hostNetwork") is True:
        return Decision(False, "the pod uses the host's network")
    if namespace_labels is not None and not namespace_enabled(namespace_labels):
        return Decision(False, "its namespace is not labelled trellis-injection=enabled")
    return Decision(True, "injected")


def namespace_enabled(labels: Mapping[str, str]) -> bool:
    """The first of `trellis-injection`, `istio-injection` present decides: "enabled"."""
    for key in NAMESPACE_LABELS:
        if key in labels:
            return labels[key] == "enabled"
    return False


def inject_pod(
    pod: Mapping[str, Any],
    settings: InjectionSettings,
    *,
    namespace_labels: Mapping[str, str] | None = None,
    workload_name: str | None = None,
) -> Json:
    """A copy of `pod` (a Pod or a pod template) with the sidecar, when it should get one.

    `workload_name` names the Deployment, StatefulSet... the pod belongs to;
    without it the name is read from the pod (owner, generateName, name).
    InjectionError names the annotation or field that cannot be honoured.
    """
    result: Json = copy.deepcopy(dict(pod))
    if not injection_decision(pod, namespace_labels).inject:
        return result
    metadata: Json = result.setdefault("metadata", {})
    spec: Json = result.setdefault("spec", {})
    labels: Json = metadata.setdefault("labels", {})
    annotations: Json = metadata.setdefault("annotations", {})
    capture = _capture(annotations)
    workload = Workload(
        name=workload_name or _workload_name(metadata),
        labels={k: str(v) for k, v in labels.items() if k != TEMPLATE_HASH_LABEL},
        metrics_annotations=_app_metrics(annotations),
        app_probes=_rewrite_app_probes(spec, annotations, capture),
    )
    proxy = proxy_container(settings, workload)
    init = [] if settings.cni else [init_container(settings, capture)]
    app_init = _list(spec, "initContainers")
    if settings.native_sidecar:
        spec["initContainers"] = [*init, proxy, *app_init]
    else:
        spec["initContainers"] = [*init, *app_init]
        spec["containers"] = [*_list(spec, "containers"), proxy]
    if not spec["initContainers"]:
        del spec["initContainers"]
    spec["volumes"] = [*_list(spec, "volumes"), *volumes()]
    labels[TLS_MODE_LABEL] = "istio"
    if str(annotations.get("prometheus.io/scrape", "")).lower() != "false":
        annotations.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(MERGED_METRICS_PORT),
                "prometheus.io/path": METRICS_PATH,
            }
        )
    annotations[STATUS_ANNOTATION] = status(settings)
    return result


def status(settings: InjectionSettings) -> str:
    """The status annotation: what injection added (Istio's `sidecar.istio.io/status`)."""
    return json.dumps(
        {
            "version": __version__,
            "initContainers": [] if settings.cni else [INIT_NAME],
            "containers": [PROXY_NAME],
            "volumes": [TOKEN_VOLUME, PODINFO_VOLUME, TMP_VOLUME],
            "nativeSidecar": settings.native_sidecar,
        },
        separators=(",", ":"),
    )


def _rewrite_app_probes(spec: Json, annotations: Mapping[str, Any], capture: Capture) -> str:
    """Points the application's probes in `spec` at the sidecar (unless the pod opts out);
    the originals as the proxy's JSON, "" when there are none."""
    if not rewrite_enabled(annotations):
        return ""
    probes = {}
    for field in ("initContainers", "containers"):
        if field in spec:
            spec[field], found = rewrite_probes(
                _list(spec, field), field, capture.exclude_inbound_ports
            )
            probes.update(found)
    return encode_app_probes(probes) if probes else ""


def _workload_name(metadata: Mapping[str, Any]) -> str:
    """The workload a pod belongs to: a ReplicaSet's pods drop its template hash."""
    owners = metadata.get("ownerReferences") or []
    controller = next(
        (o for o in owners if isinstance(o, Mapping) and o.get("controller")),
        owners[0] if owners and isinstance(owners[0], Mapping) else None,
    )
    base = str(controller.get("name", "")) if controller else ""
    if not base:
        base = str(metadata.get("generateName") or metadata.get("name") or "").rstrip("-")
    pod_hash = str((metadata.get("labels") or {}).get(TEMPLATE_HASH_LABEL, ""))
    if pod_hash and base.endswith(f"-{pod_hash}"):
        base = base[: -len(pod_hash) - 1]
    return base or "unknown"


def _app_metrics(annotations: Mapping[str, Any]) -> dict[str, str]:
    """The application's `prometheus.io/*` annotations, which the proxy merges (not 15020's)."""
    if str(annotations.get("prometheus.io/scrape", "")).lower() == "false":
        return {}
    if "prometheus.io/port" not in annotations:
        return {}
    return {key: str(annotations[key]) for key in PROMETHEUS_KEYS if key in annotations}


def _capture(annotations: Mapping[str, Any]) -> Capture:
    return Capture(
        exclude_inbound_ports=_ports(annotations, "excludeInboundPorts"),
        exclude_outbound_ports=_ports(annotations, "excludeOutboundPorts"),
        exclude_outbound_ip_ranges=_cidrs(annotations, "excludeOutboundIPRanges"),
    )


def _traffic_annotation(annotations: Mapping[str, Any], name: str) -> tuple[str, list[str]]:
    """The first of `traffic.sidecar.trellis.io/NAME`, `traffic.sidecar.istio.io/NAME` set."""
    for prefix in TRAFFIC_PREFIXES:
        key = prefix + name
        if key in annotations:
            items = [item.strip() for item in str(annotations[key]).split(",")]
            return key, [item for item in items if item]
    return "", []


def _ports(annotations: Mapping[str, Any], name: str) -> tuple[int, ...]:
    key, items = _traffic_annotation(annotations, name)
    ports: list[int] = []
    for item in items:
        if not item.isdigit() or not 0 < int(item) <= 65535:
            raise InjectionError(f"annotation {key}: {item!r} is not a port (1-65535)")
        ports.append(int(item))
    return tuple(dict.fromkeys(ports))


def _cidrs(annotations: Mapping[str, Any], name: str) -> tuple[str, ...]:
    key, items = _traffic_annotation(annotations, name)
    ranges: list[str] = []
    for item in items:
        if item == "*":
            ranges.append("0.0.0.0/0")
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InjectionError(f"annotation {key}: {item!r} is not a CIDR range") from None
        if network.version != 4:
            raise InjectionError(f"annotation {key}: {item!r}: only IPv4 is captured")
        ranges.append(str(network))
    return tuple(dict.fromkeys(ranges))


def _container_names(pod: Mapping[str, Any]) -> set[str]:
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return set()
    names: set[str] = set()
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            if isinstance(container, Mapping):
                names.add(str(container.get("name", "")))
    return names


def _list(spec: Mapping[str, Any], field: str) -> list[Any]:
    value = spec.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InjectionError(f"spec.{field}: expected a list, got {type(value).__name__}")
    return value


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InjectionError(f"{field}: expected an object, got {type(value).__name__}")
    return value
