"""The kinds the REST API serves, with their Kubernetes-style names.

A kind has a group (`networking.istio.io`), served versions, a plural for URL
paths (`virtualservices`), a singular and short names for the CLI (`vs`). Pure
data, shared by the API server and the CLI; it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

NETWORKING_GROUP = "networking.istio.io"
NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")
SECURITY_GROUP = "security.istio.io"
SECURITY_VERSIONS = ("v1", "v1beta1")
TELEMETRY_GROUP = "telemetry.istio.io"
TELEMETRY_VERSIONS = ("v1", "v1alpha1")


@dataclass(frozen=True, slots=True)
class KindInfo:
    """How one kind is named in URLs and on the command line."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    group: str = NETWORKING_GROUP
    versions: tuple[str, ...] = NETWORKING_VERSIONS

    @property
    def preferred_version(self) -> str:
        return self.versions[0]

    @property
    def api_version(self) -> str:
        """`group/version` of the preferred version."""
        return f"{self.group}/{self.preferred_version}"

    @property
    def resource(self) -> str:
        """kubectl's `plural.group`, e.g. `virtualservices.networking.istio.io`."""
        return f"{self.plural}.{self.group}"

    def qualified(self, name: str) -> str:
        """kubectl's `singular.group/name`, e.g. `virtualservice.networking.istio.io/payment`."""
        return f"{self.singular}.{self.group}/{name}"

    def collection_path(self, namespace: str | None, version: str | None = None) -> str:
        """The list URL path; `namespace` None means all namespaces."""
        base = f"/apis/{self.group}/{version or self.preferred_version}"
        if namespace is None:
            return f"{base}/{self.plural}"
        return f"{base}/namespaces/{namespace}/{self.plural}"

    def item_path(self, namespace: str, name: str, version: str | None = None) -> str:
        return f"{self.collection_path(namespace, version)}/{name}"


KINDS: tuple[KindInfo, ...] = (
    KindInfo("VirtualService", "virtualservices", "virtualservice", ("vs",)),
    KindInfo("DestinationRule", "destinationrules", "destinationrule", ("dr",)),
    KindInfo("ServiceEntry", "serviceentries", "serviceentry", ("se",)),
    KindInfo("WorkloadEntry", "workloadentries", "workloadentry", ("we",)),
    KindInfo(
        "PeerAuthentication",
        "peerauthentications",
        "peerauthentication",
        ("pa",),
        SECURITY_GROUP,
        SECURITY_VERSIONS,
    ),
    KindInfo(
        "AuthorizationPolicy",
        "authorizationpolicies",
        "authorizationpolicy",
        ("ap",),
        SECURITY_GROUP,
        SECURITY_VERSIONS,
    ),
    KindInfo(
        "Telemetry",
        "telemetries",
        "telemetry",
        (),
        TELEMETRY_GROUP,
        TELEMETRY_VERSIONS,
    ),
)


class UnknownKindError(LookupError):
    """No served kind has this name."""


def kind_info(kind: str) -> KindInfo:
    """The entry for a kind (exact `kind` spelling, e.g. `VirtualService`)."""
    for info in KINDS:
        if info.kind == kind:
            return info
    raise UnknownKindError(f"kind {kind!r} is not served")


def find_collection(group: str, version: str, plural: str) -> KindInfo | None:
    """The kind served at `/apis/{group}/{version}/.../{plural}`, or None."""
    for info in KINDS:
        if info.group == group and info.plural == plural and version in info.versions:
            return info
    return None


def resolve_kind(text: str) -> KindInfo:
    """A kind from what a user types: kind, singular, plural or short name, any case,
    optionally qualified with the group (`virtualservices.networking.istio.io`).
    """
    wanted = text.strip().lower()
    name, _, group = wanted.partition(".")
    for info in KINDS:
        if group and group != info.group:
            continue
        if name in (info.kind.lower(), info.singular, info.plural, *info.short_names):
            return info
    known = ", ".join(f"{info.plural} ({'/'.join(info.short_names)})" for info in KINDS)
    raise UnknownKindError(
        f'the server doesn\'t have a resource type "{text}" (known types: {known})'
    )
