"""CustomResourceDefinitions for the Istio kinds Trellis implements.

The CRDs use Istio's groups, kinds, plurals and short names, so Istio manifests
apply to a Trellis cluster unchanged, and `kubectl get vs` works as it does
with Istio. The price: Trellis and Istio cannot be installed in one cluster
(a CRD name is owned by one definition; installing one over the other would
replace its schemas).

Each served version (`v1`, `v1beta1`, ...) has the same schema, generated from
the config model (`crd_schema.structural_schema`), so the API server rejects
what Trellis would reject for type, enum and unknown fields before the control
plane ever sees it; `v1` is the storage version. Each version has the status
subresource, where the control plane reports what it made of the resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from trellis.api.loader import RESOURCE_TYPES
from trellis.kube.crd_schema import structural_schema

CRD_API_VERSION = "apiextensions.k8s.io/v1"
ISTIO_CATEGORY = "istio-io"
TRELLIS_CATEGORY = "trellis-io"


class KindNames(Protocol):
    """How a kind is named: what `trellis.controlplane.api_kinds.KindInfo` provides."""

    @property
    def kind(self) -> str: ...
    @property
    def plural(self) -> str: ...
    @property
    def singular(self) -> str: ...
    @property
    def short_names(self) -> tuple[str, ...]: ...
    @property
    def group(self) -> str: ...
    @property
    def versions(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class PrinterColumn:
    """An extra column of `kubectl get` (Istio shows the same ones)."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""

    def manifest(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        return column


_AGE = PrinterColumn(
    "Age",
    ".metadata.creationTimestamp",
    "date",
    "When the resource was created (CreationTimestamp).",
)
PRINTER_COLUMNS: Mapping[str, tuple[PrinterColumn, ...]] = {
    "VirtualService": (
        PrinterColumn("Gateways", ".spec.gateways", description="The gateways or mesh."),
        PrinterColumn("Hosts", ".spec.hosts", description="The destination hosts."),
        _AGE,
    ),
    "DestinationRule": (
        PrinterColumn("Host", ".spec.host", description="The service the rule applies to."),
        _AGE,
    ),
    "ServiceEntry": (
        PrinterColumn("Hosts", ".spec.hosts", description="The hosts of the service."),
        PrinterColumn("Location", ".spec.location", description="Inside or outside the mesh."),
        PrinterColumn("Resolution", ".spec.resolution", description="How endpoints are found."),
        _AGE,
    ),
    "WorkloadEntry": (
        _AGE,
        PrinterColumn("Address", ".spec.address", description="The workload's address."),
    ),
    "PeerAuthentication": (
        PrinterColumn("Mode", ".spec.mtls.mode", description="The mutual TLS mode."),
        _AGE,
    ),
    "AuthorizationPolicy": (
        PrinterColumn("Action", ".spec.action", description="ALLOW, DENY or AUDIT."),
        _AGE,
    ),
}
"""kind -> its columns; a kind not listed shows Age only."""


def resource_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A CRD version's `openAPIV3Schema` for a config model's resources."""
    spec = structural_schema(model, "spec")
    full = model.model_json_schema(by_alias=True)
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string", "description": "The group and version."},
        "kind": {"type": "string", "description": "The resource's kind."},
        "metadata": {"type": "object"},
        "spec": spec,
        "status": {
            "type": "object",
            "description": "What the control plane made of the resource.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if model.__doc__:
        schema["description"] = _first_paragraph(model.__doc__)
    if "spec" in full.get("required", ()):
        schema["required"] = ["spec"]
    return schema


def crd_manifest(
    names: KindNames, model: type[BaseModel], labels: Mapping[str, str]
) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, every version served, the first stored."""
    schema = resource_schema(model)
    columns = [column.manifest() for column in PRINTER_COLUMNS.get(names.kind, (_AGE,))]
    versions = [
        {
            "name": version,
            "served": True,
            "storage": index == 0,
            "schema": {"openAPIV3Schema": schema},
            "subresources": {"status": {}},
            "additionalPrinterColumns": columns,
        }
        for index, version in enumerate(names.versions)
    ]
    group_category = names.group.replace(".", "-")
    return {
        "apiVersion": CRD_API_VERSION,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{names.plural}.{names.group}", "labels": dict(labels)},
        "spec": {
            "group": names.group,
            "names": {
                "kind": names.kind,
                "listKind": f"{names.kind}List",
                "plural": names.plural,
                "singular": names.singular,
                "shortNames": list(names.short_names),
                "categories": [ISTIO_CATEGORY, group_category, TRELLIS_CATEGORY],
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    }


def crd_manifests(
    kinds: Iterable[KindNames], labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The CRDs of `kinds` (pass `trellis.controlplane.api_kinds.KINDS`), sorted by name.

    Every kind must be one Trellis implements (`trellis.api.loader.RESOURCE_TYPES`).
    """
    manifests = []
    for names in kinds:
        model = RESOURCE_TYPES.get(names.kind)
        if model is None:
            raise KeyError(f"no config model for kind {names.kind!r}")
        manifests.append(crd_manifest(names, model, labels or {}))
    return sorted(manifests, key=lambda crd: str(crd["metadata"]["name"]))


def crd_names(manifests: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(group, plural) of each CRD, for RBAC rules."""
    return [(crd["spec"]["group"], crd["spec"]["names"]["plural"]) for crd in manifests]


def _first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n", 1)[0].split())
