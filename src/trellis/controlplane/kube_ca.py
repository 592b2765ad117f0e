"""The control plane's Kubernetes identity parts: TokenReview for the CA, the leader Lease.

`KubeIdentitySettings` says what to use (credentials, the Lease, who we are);
`KubeIdentity.open()` makes one API client and, from it, the CA's
authenticator and, when a Lease is named, the leader elector whose `run()`
the control plane runs as a task. Replicas all serve certificates; the
elector's `leading` event gates what only one replica should do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lightkube import KubeConfig

from trellis.controlplane.kube_calls import KubeCalls, api_client
from trellis.controlplane.kube_leader import LeaderElector
from trellis.controlplane.kube_token_auth import TokenReviewAuthenticator
from trellis.errors import ConfigError
from trellis.kube.leader import ElectionTiming

POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"


@dataclass(frozen=True, slots=True)
class KubeIdentitySettings:
    """`kubeconfig` None: the pod's service account (in-cluster). `lease` None: no election."""

    kubeconfig: Path | None = None
    lease: str | None = None
    namespace: str = ""
    identity: str = ""
    timing: ElectionTiming = field(default_factory=ElectionTiming)

    @classmethod
    def from_environment(cls, lease: str | None, kubeconfig: Path | None) -> KubeIdentitySettings:
        """Who we are from the downward API (POD_NAME, POD_NAMESPACE), checked when electing."""
        namespace = os.environ.get(POD_NAMESPACE_ENV, "")
        identity = os.environ.get(POD_NAME_ENV, "")
        if lease is not None and not (namespace and identity):
            raise ConfigError(
                "leader election needs POD_NAME and POD_NAMESPACE in the environment "
                "(the install's Deployment sets them from the downward API)"
            )
        return cls(kubeconfig, lease, namespace, identity)


class KubeIdentity:
    """The API client and what is built on it; `close()` when done."""

    def __init__(self, calls: KubeCalls, settings: KubeIdentitySettings) -> None:
        self.calls = calls
        self.authenticator = TokenReviewAuthenticator(calls)
        self.elector: LeaderElector | None = None
        if settings.lease is not None:
            self.elector = LeaderElector(
                calls,
                name=settings.lease,
                namespace=settings.namespace,
                identity=settings.identity,
                timing=settings.timing,
            )

    @classmethod
    def open(cls, settings: KubeIdentitySettings) -> KubeIdentity:
        try:
            if settings.kubeconfig is not None:
                config = KubeConfig.from_file(settings.kubeconfig)
            else:
                config = KubeConfig.from_service_account()
        except Exception as exc:  # lightkube raises several kinds for a missing/bad config
            where = settings.kubeconfig or "the in-cluster service account"
            raise ConfigError(f"cannot read Kubernetes credentials from {where}: {exc}") from None
        return cls(KubeCalls(api_client(config)), settings)

    async def close(self) -> None:
        await self.calls.close()
