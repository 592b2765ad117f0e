"""Keeps the mesh root in a ConfigMap in every namespace (`trellis.kube.root_cert`).

Injected sidecars mount `trellis-ca-root-cert` to verify the control plane's
TLS port before they have a certificate. One replica writes it: the elected
leader when the replicas elect one, else this one. Every `interval` seconds,
and as soon as this replica starts leading, a round lists the namespaces and
the existing ConfigMaps (two calls, whatever the cluster's size) and creates
or rewrites only what is missing or wrong. A failed call is logged and the
next round tries again; a write that conflicts with another writer is
simply redone from a fresh listing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from trellis.controlplane.kube_calls import KubeCalls, KubeConflictError, KubeUnavailableError
from trellis.kube.root_cert import ROOT_CERT_CONFIG_MAP, RootCertPlan, plan_root_certs

log = logging.getLogger("trellis.controlplane.kube")

_Write = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_INTERVAL = 5.0


class RootCertPublisher:
    """Writes `root_pem` into every meshable namespace while `leading` is set (None: always)."""

    def __init__(
        self,
        calls: KubeCalls,
        root_pem: str,
        *,
        leading: asyncio.Event | None = None,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.calls = calls
        self.root_pem = root_pem
        self.leading = leading
        self.interval = interval
        self.rounds = 0
        self.written = 0

    async def run(self) -> None:
        """Reconcile until cancelled, only while leading."""
        while True:
            if self.leading is not None:
                await self.leading.wait()
            try:
                await self.reconcile()
            except (KubeUnavailableError, KubeConflictError) as exc:
                log.warning("root certificate ConfigMaps: %s; retrying", exc)
            await asyncio.sleep(self.interval)

    async def reconcile(self) -> RootCertPlan:
        """One round: list, compare, write what differs; the plan it carried out."""
        namespaces = await self.calls.list_namespaces()
        existing = await self.calls.list_config_maps(ROOT_CERT_CONFIG_MAP)
        plan = plan_root_certs(namespaces, existing, self.root_pem)
        self.rounds += 1
        for config_map in plan.create:
            await self._write(self.calls.create_config_map, config_map, "created")
        for config_map in plan.update:
            await self._write(self.calls.replace_config_map, config_map, "updated")
        return plan

    async def _write(self, call: _Write, config_map: dict[str, Any], done: str) -> None:
        namespace = config_map["metadata"]["namespace"]
        try:
            await call(config_map)
        except KubeConflictError:
            log.debug("%s/%s changed meanwhile; next round", namespace, ROOT_CERT_CONFIG_MAP)
            return
        except KubeUnavailableError as exc:
            log.warning("cannot write %s/%s: %s", namespace, ROOT_CERT_CONFIG_MAP, exc)
            return
        self.written += 1
        log.info("%s %s/%s", done, namespace, ROOT_CERT_CONFIG_MAP)
