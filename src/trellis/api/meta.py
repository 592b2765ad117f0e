"""Shared pieces of every config resource: the model base, metadata, the envelope.

Field names follow Istio: attributes are snake_case, the YAML/JSON keys are the
protobuf JSON (camelCase) names, and both spellings are accepted on input.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

ISTIO_NETWORKING_VERSIONS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
DEFAULT_NAMESPACE = "default"
# On the WorkloadEntries `trellis run` registers: which launcher owns the entry. The
# control plane removes such an entry when its sidecar stays gone (a killed launcher).
RUN_OWNER_ANNOTATION = "run.trellis.io/owner"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def to_camel(name: str) -> str:
    """`consecutive_5xx_errors` -> `consecutive5xxErrors` (protobuf's JSON name rule)."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def unsupported_field(name: str) -> PydanticCustomError:
    """The error for an Istio field Trellis knows but does not implement."""
    return PydanticCustomError(
        "unsupported_field", "field not supported by Trellis", {"field": name}
    )


class ApiModel(BaseModel):
    """Base of every config model: frozen, unknown keys rejected, camelCase aliases.

    `unsupported` lists Istio's (camelCase) names of fields this message has in
    Istio but Trellis does not implement; setting one is an error naming it.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=False,
        use_enum_values=False,
        validate_default=False,
    )

    unsupported: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _reject_unsupported(cls, data: Any) -> Any:
        if cls.unsupported and isinstance(data, Mapping):
            for key in data:
                if key in cls.unsupported or to_camel(str(key)) in cls.unsupported:
                    raise unsupported_field(str(key))
        return data


def check_dns1123_label(value: str, what: str) -> str:
    """Kubernetes' DNS-1123 label rule (namespaces): lowercase alphanumerics and '-'."""
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise ValueError(
            f"{what} {value!r} must be a DNS-1123 label: at most 63 lowercase letters, "
            "digits or '-', starting and ending with a letter or digit"
        )
    return value


def check_dns1123_subdomain(value: str, what: str) -> str:
    """Kubernetes' DNS-1123 subdomain rule (object names)."""
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise ValueError(
            f"{what} {value!r} must be a DNS-1123 subdomain: lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit, at most 253 characters"
        )
    return value


class ObjectMeta(ApiModel):
    """Kubernetes-style metadata; `namespace` defaults to `default` (DESIGN.md §2)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = None
    """Set by the store; on apply, a stale value is a conflict (optimistic concurrency)."""
    # Set by the server and read back by `trellis get -o yaml`; accepted on apply so
    # that output can be applied again, and never stored from the input.
    uid: str | None = Field(default=None, exclude=True)
    generation: int | None = Field(default=None, exclude=True)
    creation_timestamp: str | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_dns1123_subdomain(value, "name")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return check_dns1123_label(value, "namespace")


ResourceKey = tuple[str, str, str]
"""(kind, namespace, name): what identifies a stored resource."""


class Resource(ApiModel):
    """The envelope shared by every kind: apiVersion, kind, metadata, spec.

    Subclasses narrow `kind` to one literal and add a typed `spec`.
    """

    api_version: str
    kind: str
    metadata: ObjectMeta

    api_versions: ClassVar[tuple[str, ...]] = ISTIO_NETWORKING_VERSIONS

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value not in cls.api_versions:
            raise PydanticCustomError(
                "api_version",
                "apiVersion {value} is not served for this kind (expected one of {expected})",
                {"value": repr(value), "expected": ", ".join(cls.api_versions)},
            )
        return value

    @property
    def key(self) -> ResourceKey:
        """(kind, namespace, name)."""
        return (self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def display_name(self) -> str:
        """`namespace/name`, as kubectl and istioctl print it."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    def to_document(self) -> dict[str, Any]:
        """The resource as a YAML/JSON-ready dict: camelCase keys, defaults and nulls left out.

        `apiVersion`, `kind`, `metadata.name`/`namespace` and `spec` are always present.
        Parsing the result gives back an equal resource.
        """
        document = self.model_dump(
            mode="json", by_alias=True, exclude_defaults=True, exclude_none=True
        )
        document["apiVersion"] = self.api_version
        document["kind"] = self.kind
        meta = document.setdefault("metadata", {})
        meta["name"] = self.metadata.name
        meta["namespace"] = self.metadata.namespace
        document.setdefault("spec", {})
        return {key: document[key] for key in ("apiVersion", "kind", "metadata", "spec")}


def enum_value(allowed: type[enum.StrEnum], not_supported: frozenset[str]) -> Callable[[Any], Any]:
    """A before-validator for an Istio enum field of which Trellis implements a subset.

    Istio's other values (`not_supported`) get "value X not supported by Trellis";
    unknown strings get the list of valid values.
    """
    names = ", ".join(member.value for member in allowed)

    def check(value: Any) -> Any:
        if isinstance(value, allowed):
            return value
        if isinstance(value, str) and value in not_supported:
            raise PydanticCustomError(
                "unsupported_value",
                "value {value} is not supported by Trellis (supported: {names})",
                {"value": value, "names": names},
            )
        if not isinstance(value, str) or value not in {m.value for m in allowed}:
            raise PydanticCustomError(
                "enum",
                "unknown value {value} (expected one of {names})",
                {"value": repr(value), "names": names},
            )
        return allowed(value)

    return check
