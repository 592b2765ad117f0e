"""The Kubernetes platform's parts of the control plane: CRD store and discovery.

`trellis control-plane --platform kubernetes` keeps mesh config in the Istio
CRDs (`KubeConfigStore`) instead of SQLite, and takes the service registry
from Services, EndpointSlices and Pods (`KubeDiscovery`) instead of
registered WorkloadEntries. Both share one API client.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightkube import AsyncClient

from trellis.controlplane.kube_client import connect
from trellis.controlplane.kube_discovery import KubeDiscovery
from trellis.controlplane.kube_store import KubeConfigStore
from trellis.kube.registry import Registry

log = logging.getLogger("trellis.controlplane.kube")


class Platform(enum.StrEnum):
    """Where the control plane runs (DESIGN.md section 3)."""

    LOCAL = "local"
    KUBERNETES = "kubernetes"


@dataclass(slots=True)
class KubePlatform:
    """The API client and the CRD store on it."""

    client: AsyncClient
    store: KubeConfigStore

    @classmethod
    async def open(cls, kubeconfig: Path | None) -> KubePlatform:
        """Connect (kubeconfig file, else in-cluster) and list the CRDs; raises TrellisError."""
        client = connect(kubeconfig)
        try:
            store = await KubeConfigStore.open(client)
        except BaseException:
            await client.close()
            raise
        where = kubeconfig or "the in-cluster service account"
        log.info("config store: Istio CRDs in the Kubernetes API (%s)", where)
        return cls(client, store)

    async def discover(self, on_registry: Callable[[Registry], None]) -> None:
        """Follow Services, EndpointSlices, Pods and Namespaces until cancelled."""
        await KubeDiscovery(self.client, on_registry).run()

    async def close(self) -> None:
        await self.store.close()
        await self.client.close()
