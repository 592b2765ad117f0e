"""What sidecar injection is configured with, and the names it uses.

`InjectionSettings` is the operator's choice (image, control plane, native
sidecar or not, CNI or init container); the constants are the contract with
the proxy and with Istio's tooling: ports (DESIGN.md §4), the proxy's uid/gid
1337, the annotations and labels users set on pods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trellis import __version__
from trellis.core.sidecar_ports import (
    INBOUND_CAPTURE_PORT,
    OUTBOUND_CAPTURE_PORT,
)
from trellis.errors import TrellisError

PROXY_NAME = "trellis-proxy"
INIT_NAME = "trellis-init"
TOKEN_VOLUME = "trellis-token"
PODINFO_VOLUME = "trellis-podinfo"
TMP_VOLUME = "trellis-tmp"
ROOT_CERT_VOLUME = "trellis-ca-root"
ROOT_CERT_DIR = "/var/run/secrets/trellis/ca"
"""Where the proxy finds the mesh root (`trellis.kube.root_cert`'s ConfigMap), which it
trusts for the control plane's TLS port."""
TOKEN_DIR = "/var/run/secrets/tokens"
TOKEN_PATH = f"{TOKEN_DIR}/{TOKEN_VOLUME}"
PODINFO_DIR = "/etc/trellis/pod"
TOKEN_AUDIENCE = "trellis-ca"
"""The audience of the projected service-account token the proxy shows the CA."""
TOKEN_EXPIRATION = 43200
"""Seconds; the kubelet refreshes the token at 80% of this."""

OUTBOUND_PORT = OUTBOUND_CAPTURE_PORT
INBOUND_PORT = INBOUND_CAPTURE_PORT
METRICS_PATH = "/stats/prometheus"
READY_PATH = "/healthz/ready"

STATUS_ANNOTATION = "sidecar.trellis.io/status"
"""Set on every injected pod: what was added, by which version (makes injection idempotent)."""
INJECT_KEYS = ("sidecar.trellis.io/inject", "sidecar.istio.io/inject")
"""Label or annotation: "false" keeps the pod out of the mesh."""
REWRITE_PROBES_KEYS = (
    "sidecar.trellis.io/rewriteAppHTTPProbers",
    "sidecar.istio.io/rewriteAppHTTPProbers",
)
"""Pod annotation: "false" leaves the application's probes as they are (the first one
present decides; rewriting is on by default)."""
NAMESPACE_LABELS = ("trellis-injection", "istio-injection")
"""Namespace label: "enabled" turns injection on (the first one present decides)."""
TLS_MODE_LABEL = "security.istio.io/tlsMode"
"""Istio's mark of an endpoint with a sidecar: peers send it mTLS."""
TEMPLATE_HASH_LABEL = "pod-template-hash"

DEFAULT_IMAGE = f"trellis:{__version__}"
DEFAULT_CONTROL_PLANE = "trellis.trellis-system.svc:15012"

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class InjectionError(TrellisError):
    """A pod or a setting cannot be injected as given; the message names the field."""


@dataclass(frozen=True, slots=True)
class Resources:
    """A container's requests and limits (Kubernetes quantities)."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str

    def __post_init__(self) -> None:
        for name in ("cpu_request", "memory_request", "cpu_limit", "memory_limit"):
            value = getattr(self, name)
            if not _QUANTITY.match(value):
                raise InjectionError(f"{name}: {value!r} is not a Kubernetes quantity")

    def to_spec(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


PROXY_RESOURCES = Resources("100m", "64Mi", "2", "256Mi")
INIT_RESOURCES = Resources("10m", "32Mi", "500m", "128Mi")


@dataclass(frozen=True, slots=True)
class InjectionSettings:
    """How pods are injected; the defaults suit a cluster at Kubernetes 1.29 or later."""

    image: str = DEFAULT_IMAGE
    """The Trellis image: `trellis proxy` for the sidecar, `trellis iptables` for the init step."""
    control_plane: str = DEFAULT_CONTROL_PLANE
    """HOST:PORT of the control plane's xDS and CA service over TLS (15012), as the pods
    reach it; the proxy checks that HOST is a name on the control plane's certificate."""
    native_sidecar: bool = True
    """The proxy as an init container with `restartPolicy: Always` (Kubernetes >= 1.29):
    it starts before, and stops after, the application. False: a regular container."""
    cni: bool = False
    """A CNI plugin installs the capture rules: no privileged init container."""
    image_pull_policy: str = "IfNotPresent"
    proxy_resources: Resources = PROXY_RESOURCES
    init_resources: Resources = INIT_RESOURCES
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.image or any(c.isspace() for c in self.image):
            raise InjectionError(f"image: {self.image!r} is not an image reference")
        if not _HOST_PORT.match(self.control_plane) or _port_of(self.control_plane) <= 0:
            raise InjectionError(f"control_plane: expected HOST:PORT, got {self.control_plane!r}")
        if self.image_pull_policy not in _PULL_POLICIES:
            raise InjectionError(
                f"image_pull_policy: {self.image_pull_policy!r} is not one of "
                f"{', '.join(_PULL_POLICIES)}"
            )
        if self.log_level not in _LOG_LEVELS:
            raise InjectionError(
                f"log_level: {self.log_level!r} is not one of {', '.join(_LOG_LEVELS)}"
            )


def _port_of(address: str) -> int:
    port = int(address.rpartition(":")[2])
    return port if port <= 65535 else 0
