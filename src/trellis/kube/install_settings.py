"""What `trellis install` is asked for, and the object names that follow from it.

`InstallSettings` holds the operator's choices (namespace, image, replicas,
revision, the CA bundle); `InstallNames` derives every object's name from
them, so the manifests, the RBAC rules that name those objects, and the
documentation agree. A revision (Istio's `--revision`) installs a second
control plane beside the first: its namespaced objects get a `-REVISION`
suffix and its webhook injects namespaces labelled `trellis.io/rev=REVISION`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trellis import __version__
from trellis.errors import TrellisError
from trellis.kube.settings import DEFAULT_IMAGE
from trellis.kube.webhook_config import CONFIGURATION_NAME, SERVICE_NAME, SERVICE_NAMESPACE

DEFAULT_NAMESPACE = SERVICE_NAMESPACE
DEFAULT_REPLICAS = 2
MAX_REPLICAS = 50
REVISION_LABEL = "trellis.io/rev"
ISTIO_REVISION_LABEL = "istio.io/rev"
PART_OF = "trellis"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_MAX_REVISION = 30  # leaves room for the longest derived name within 63 characters


class InstallError(TrellisError):
    """A setting of `trellis install` is unusable; `option` names the command-line flag."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.reason = message


@dataclass(frozen=True, slots=True)
class InstallSettings:
    """The operator's choices for one installation of the control plane."""

    ca_bundle_pem: str
    """The mesh CA's root certificate(s), PEM: the webhook's `caBundle`."""
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    replicas: int = DEFAULT_REPLICAS
    revision: str = ""
    """Empty for the default control plane; else a DNS label naming this one."""
    trust_domain: str = "cluster.local"

    def __post_init__(self) -> None:
        if "-----BEGIN CERTIFICATE-----" not in self.ca_bundle_pem:
            raise InstallError("--ca-bundle", "holds no PEM certificate")
        if len(self.namespace) > 63 or not _DNS1123_LABEL.match(self.namespace):
            raise InstallError(
                "--namespace",
                f"{self.namespace!r} must be a DNS-1123 label (lowercase letters, digits and "
                "'-', at most 63)",
            )
        if not self.image or any(c.isspace() for c in self.image):
            raise InstallError("--image", f"{self.image!r} is not an image reference")
        if self.image_pull_policy not in _PULL_POLICIES:
            raise InstallError(
                "--image-pull-policy",
                f"{self.image_pull_policy!r} is not one of {', '.join(_PULL_POLICIES)}",
            )
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise InstallError("--replicas", f"must be between 1 and {MAX_REPLICAS}")
        if self.revision and (
            len(self.revision) > _MAX_REVISION or not _DNS1123_LABEL.match(self.revision)
        ):
            raise InstallError(
                "--revision",
                f"{self.revision!r} must be a DNS-1123 label of at most {_MAX_REVISION} characters",
            )
        if not _TRUST_DOMAIN.match(self.trust_domain) or len(self.trust_domain) > 255:
            raise InstallError(
                "--trust-domain",
                f"{self.trust_domain!r} may hold only lowercase letters, digits, '.', '-' "
                "and '_' (SPIFFE)",
            )

    @property
    def names(self) -> InstallNames:
        return InstallNames(self.namespace, self.revision)


@dataclass(frozen=True, slots=True)
class InstallNames:
    """Every object's name for one installation (namespace + revision)."""

    namespace: str
    revision: str = ""

    @property
    def suffix(self) -> str:
        return f"-{self.revision}" if self.revision else ""

    @property
    def cluster_suffix(self) -> str:
        """For cluster-scoped objects: also the namespace, unless it is the default one."""
        if self.namespace == DEFAULT_NAMESPACE:
            return self.suffix
        return f"{self.suffix}-{self.namespace}"

    @property
    def control_plane(self) -> str:
        """Deployment, ServiceAccount and the xDS/API Service."""
        return f"trellis{self.suffix}"

    @property
    def webhook_service(self) -> str:
        return f"{SERVICE_NAME}{self.suffix}"

    @property
    def cluster_role(self) -> str:
        return f"trellis-control-plane{self.cluster_suffix}"

    @property
    def role(self) -> str:
        return f"trellis-control-plane{self.suffix}"

    @property
    def webhook_configuration(self) -> str:
        return f"{CONFIGURATION_NAME}{self.cluster_suffix}"

    @property
    def leader_lease(self) -> str:
        """The coordination.k8s.io Lease the replicas elect their leader with."""
        return f"trellis-leader{self.suffix}"

    @property
    def revision_value(self) -> str:
        """The `trellis.io/rev` label value: the revision, or `default`."""
        return self.revision or "default"

    def selector(self) -> dict[str, str]:
        """The labels that pick this installation's control-plane pods."""
        return {"app": "trellis", REVISION_LABEL: self.revision_value}

    def labels(self, component: str) -> dict[str, str]:
        """Labels of every object of this installation."""
        return {
            "app.kubernetes.io/name": "trellis",
            "app.kubernetes.io/part-of": PART_OF,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/version": __version__,
            REVISION_LABEL: self.revision_value,
        }
