"""Errors of the translator; each names the resource and field it is about."""

from __future__ import annotations

from trellis.api.meta import Resource
from trellis.errors import ConfigError, TrellisError


class UnsupportedConfigError(ConfigError):
    """Valid Istio config that the Trellis proxy cannot carry out (yet).

    Raised rather than dropped: a field that is set is never silently ignored.
    """

    resource_key: tuple[str, str, str] | None = None


def unsupported(resource: Resource, path: str, message: str) -> UnsupportedConfigError:
    """The error for `path` of `resource`, e.g. `VirtualService default/reviews: spec.http[0]`."""
    error = UnsupportedConfigError(
        message, path=path, source=f"{resource.kind} {resource.display_name}"
    )
    error.resource_key = resource.key
    return error


class InconsistentSnapshotError(TrellisError):
    """A set of resources names RDS or EDS resources it does not contain."""

    def __init__(self, missing_routes: tuple[str, ...], missing_endpoints: tuple[str, ...]):
        self.missing_routes = missing_routes
        self.missing_endpoints = missing_endpoints
        parts = []
        if missing_routes:
            parts.append("route configurations " + ", ".join(missing_routes))
        if missing_endpoints:
            parts.append("cluster load assignments " + ", ".join(missing_endpoints))
        super().__init__("snapshot is inconsistent: missing " + "; ".join(parts))
