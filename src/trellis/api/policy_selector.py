"""What the `security.istio.io` kinds share: their API versions and the workload selector.

Istio's security policies pick workloads with `selector.matchLabels`
(`istio.type.v1beta1.WorkloadSelector`), not the `workloadSelector.labels` of
the networking kinds. A policy without a selector applies to its whole
namespace; in the mesh's root namespace, to the whole mesh.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator

from trellis.api.meta import ApiModel

SECURITY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
"""`v1` and `v1beta1` share one schema, as in Istio."""

ROOT_NAMESPACES = ("trellis-system", "istio-system")
"""The mesh's root namespace and its Istio alias (DESIGN.md §2)."""


def is_root_namespace(namespace: str) -> bool:
    """Whether policies in `namespace` are the mesh-wide ones."""
    return namespace in ROOT_NAMESPACES


class PolicySelector(ApiModel):
    """`selector`: the workloads (in the policy's namespace) whose labels include these."""

    match_labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("match_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not key:
                raise ValueError("an empty label key is not allowed in a selector")
            if "*" in key or "*" in label:
                raise ValueError(f"wildcards are not allowed in a selector: {key}={label}")
        return value

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether a workload with `labels` carries every selector label."""
        return all(labels.get(key) == value for key, value in self.match_labels.items())


def selector_is_empty(selector: PolicySelector | None) -> bool:
    """No selector, or one without labels: the policy is namespace- (or mesh-) wide."""
    return selector is None or not selector.match_labels
