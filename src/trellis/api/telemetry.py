"""Telemetry (`telemetry.istio.io`): access logging and trace sampling per mesh, namespace
or workload.

Field names and rules follow istio/api `telemetry/v1/telemetry.proto`. A
Telemetry without a selector in the mesh's root namespace applies to the whole
mesh, one in another namespace to that namespace, one with a selector to the
namespace's workloads it selects; which one a workload gets is decided in
`trellis.xds.mesh.telemetry`. Metrics overrides, access-log filters (CEL),
custom trace tags and `targetRef(s)` are Istio's but not implemented: setting
one is an error naming it.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from trellis.api.meta import ApiModel, Resource, enum_value
from trellis.api.policy_selector import PolicySelector

TELEMETRY_VERSIONS = ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1")
"""`v1` and `v1alpha1` share one schema, as in Istio."""


class WorkloadMode(enum.StrEnum):
    """Istio `WorkloadMode`: which side of a request a setting is for."""

    CLIENT_AND_SERVER = "CLIENT_AND_SERVER"
    CLIENT = "CLIENT"
    """Requests the workload sends (its outbound listener)."""
    SERVER = "SERVER"
    """Requests the workload receives (its inbound listeners)."""

    def covers(self, mode: WorkloadMode) -> bool:
        """Whether a setting for `self` applies on side `mode` (CLIENT or SERVER)."""
        return self is WorkloadMode.CLIENT_AND_SERVER or self is mode


_Mode = Annotated[WorkloadMode, BeforeValidator(enum_value(WorkloadMode, frozenset()))]


class ProviderRef(ApiModel):
    """`providers[]`: a provider by name (the mesh's, see `trellis.xds.mesh.telemetry`)."""

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value:
            raise ValueError("a provider name must not be empty")
        return value


class ModeSelector(ApiModel):
    """`match` of an access logging or tracing entry."""

    mode: _Mode = WorkloadMode.CLIENT_AND_SERVER


class AccessLogging(ApiModel):
    """`accessLogging[]`: whether, and to which providers, requests are logged."""

    unsupported = frozenset({"filter"})

    match: ModeSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    """None: the mesh's default access log provider."""
    disabled: bool | None = None

    @property
    def mode(self) -> WorkloadMode:
        return self.match.mode if self.match is not None else WorkloadMode.CLIENT_AND_SERVER


class Tracing(ApiModel):
    """`tracing[]`: trace sampling and reporting."""

    unsupported = frozenset({"customTags", "useRequestIdForTraceSampling"})

    match: ModeSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    random_sampling_percentage: float | None = None
    """Percent of the traces this proxy starts that are sampled (0-100)."""
    disable_span_reporting: bool | None = None

    @field_validator("random_sampling_percentage")
    @classmethod
    def _percentage(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value <= 100.0:
            raise ValueError(f"randomSamplingPercentage must be 0-100, got {value:g}")
        return value

    @property
    def mode(self) -> WorkloadMode:
        return self.match.mode if self.match is not None else WorkloadMode.CLIENT_AND_SERVER


class TelemetrySpec(ApiModel):
    """`Telemetry` spec."""

    unsupported = frozenset({"targetRef", "targetRefs", "metrics"})

    selector: PolicySelector | None = None
    """Workloads of the resource's namespace it applies to; none: the whole namespace
    (in the root namespace: the whole mesh)."""
    access_logging: list[AccessLogging] | None = None
    tracing: list[Tracing] | None = None


class Telemetry(Resource):
    """`telemetry.istio.io/v1` Telemetry."""

    api_versions = TELEMETRY_VERSIONS

    kind: Literal["Telemetry"]
    spec: TelemetrySpec = Field(default_factory=TelemetrySpec)
