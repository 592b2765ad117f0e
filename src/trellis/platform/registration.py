"""A workload's registration: its WorkloadEntry, and its service's ServiceEntry if missing.

Every write is conditional (`resourceVersion`), so two launchers never
overwrite each other: `"0"` creates, a stored version replaces exactly that
version. The WorkloadEntry carries the launcher's `run.trellis.io/owner`
annotation; only its owner updates or deletes it. One found at start is:

- not the launcher's (no owner annotation): refused, it is someone's config;
- a launcher's, with the workload's sidecar connected: refused, it is live;
- a launcher's without a connected sidecar: left by a launcher that died, and
  replaced.

The `app` label is what puts a workload into its service (the ServiceEntry's
`workloadSelector`), so it is how the launcher keeps peers away from an
application that cannot serve: the entry is first written without it (the
sidecar gets its inbound listener, no peer routes to it), gets it once the
application accepts connections (`set_serving`, in the same write as the
service's ServiceEntry when there is none yet, so an application that never
listens creates no service), and loses it again before the application is
told to stop. The entry itself is deleted only after the sidecar has stopped:
while a proxy runs, the control plane describes it from its entry. A
ServiceEntry the launcher created stays, for other replicas and for clients,
like any other config.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from trellis.platform.api_client import ApiRefusedError, ControlPlaneApi, resource_version_of
from trellis.platform.spec import (
    SERVICE_PORT_NAME,
    LaunchError,
    SidecarPorts,
    WorkloadSpec,
    owner_of,
    service_entry,
    service_port_names,
    workload_entry,
)

log = logging.getLogger("trellis.run")

WORKLOADS = "workloadentries"
SERVICES = "serviceentries"
LIVE_SIDECAR_WAIT = 8.0
"""How long a connected sidecar of a stale-looking registration may take to go away."""
APPLY_ATTEMPTS = 3


class Registration:
    """The WorkloadEntry of one launch, written and removed through the REST API."""

    def __init__(self, api: ControlPlaneApi, spec: WorkloadSpec, owner: str) -> None:
        self.api = api
        self.spec = spec
        self.owner = owner
        self.resource_version: str | None = None
        """The version of our entry as last written; None while not registered."""
        self._port_names: tuple[str, ...] = ()
        self._ports: SidecarPorts | None = None
        self._create_service = False
        self._serving = False
        self._stale_version = "0"
        """What a first write must find: "0" (nothing), or a dead launcher's version."""
        self._written = False
        self._lock = asyncio.Lock()

    @property
    def registered(self) -> bool:
        """Whether an entry may be stored (a write was sent, even if its answer was lost)."""
        return self._written

    @property
    def where(self) -> str:
        return f"WorkloadEntry {self.spec.namespace}/{self.spec.name}"

    async def prepare(self) -> None:
        """Check the service and any existing entry of this name; raises LaunchError."""
        spec = self.spec
        await self._check_service()
        entry = await self.api.get(WORKLOADS, spec.namespace, spec.name)
        self.resource_version = None
        self._stale_version = "0"
        if entry is not None:
            self._stale_version = await self._check_stale(entry)

    async def _check_service(self) -> None:
        """Learn the service's port names; a missing service is created when serving."""
        spec = self.spec
        existing = await self.api.get(SERVICES, spec.namespace, spec.service_name)
        self._create_service = existing is None
        if existing is None:
            self._port_names = (SERVICE_PORT_NAME,)
        else:
            self._port_names = service_port_names(existing, spec)

    async def _check_stale(self, entry: dict[str, Any]) -> str:
        """The version of a dead launcher's entry, to replace; LaunchError otherwise."""
        owner = owner_of(entry)
        if owner is None:
            raise LaunchError(
                f"{self.where} exists and was not registered by trellis run; delete it "
                f"(`trellis delete we {self.spec.name} -n {self.spec.namespace}`) or choose "
                "another --name"
            )
        deadline = time.monotonic() + LIVE_SIDECAR_WAIT
        peer = await self._connected_sidecar()
        while peer is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # a dying launcher's sidecar may still be draining
            peer = await self._connected_sidecar()
        if peer is not None:
            raise LaunchError(
                f"workload {self.spec.namespace}/{self.spec.name} is taken by a live workload: "
                f"its sidecar is connected to the control plane from {peer} (registered by "
                f"{owner}); choose another --name"
            )
        log.warning("replacing the stale registration of %s left by %s", self.where, owner)
        return str((entry.get("metadata") or {}).get("resourceVersion", ""))

    async def _connected_sidecar(self) -> str | None:
        for item in await self.api.proxies():
            same_id = item.get("id") == self.spec.node_id
            same_workload = (item.get("workload"), item.get("namespace")) == (
                self.spec.name,
                self.spec.namespace,
            )
            if same_id or same_workload:
                return str(item.get("peer") or item.get("id"))
        return None

    async def register(self, ports: SidecarPorts) -> None:
        """Write the entry for `ports`, out of its service (again after a port clash)."""
        async with self._lock:
            self._ports = ports
            await self._write(serving=False)

    async def set_serving(self, serving: bool = True) -> str | None:
        """Put the workload into its service (label `app`; the ServiceEntry is created if the
        service has none) or take it out; the entry's new resourceVersion, None when nothing
        was written (not registered, or already so)."""
        async with self._lock:
            if self.resource_version is None or self._serving == serving:
                return None
            await self._write(serving=serving)
            return self.resource_version

    async def _write(self, *, serving: bool) -> None:
        """Apply the entry (and a missing ServiceEntry when `serving`), conditionally."""
        for attempt in range(APPLY_ATTEMPTS):
            version = self.resource_version or self._stale_version
            documents = [self._entry(version, serving)]
            create_service = serving and self._create_service
            if create_service:
                documents.insert(0, service_entry(self.spec, self.owner))
            self._written = True
            try:
                answer = await self.api.apply(documents)
            except ApiRefusedError as exc:
                if exc.code != 409 or attempt == APPLY_ATTEMPTS - 1:
                    raise LaunchError(f"cannot register {self.where}: {exc}") from None
                if exc.details.get("kind") == "ServiceEntry":
                    await self._check_service()  # another replica created it meanwhile
                    continue
                if self.resource_version is not None:
                    raise LaunchError(f"{self.where} was changed by someone else: {exc}") from None
                await self.prepare()  # another launcher registered the name meanwhile
                continue
            self.resource_version = resource_version_of(answer, "WorkloadEntry", self.spec.name)
            self._serving = serving
            if create_service:
                log.info("created ServiceEntry %s/%s", self.spec.namespace, self.spec.service_name)
                self._create_service = False
            return

    def _entry(self, version: str, serving: bool) -> dict[str, Any]:
        assert self._ports is not None
        return workload_entry(
            self.spec,
            self._ports,
            self._port_names,
            owner=self.owner,
            serving=serving,
            resource_version=version,
        )

    async def deregister(self) -> None:
        """Delete our entry; a no-op when not registered.

        The delete is conditional on the version we last wrote. When that is
        unknown or stale (a write whose answer was lost), the stored entry is
        deleted if its owner annotation is ours, and left alone otherwise.
        """
        async with self._lock:
            if not self._written:
                return
            version = self.resource_version
            for _ in range(2):
                if version is None:
                    stored = await self.api.get(WORKLOADS, self.spec.namespace, self.spec.name)
                    if stored is None or owner_of(stored) != self.owner:
                        break
                    version = str((stored.get("metadata") or {}).get("resourceVersion", ""))
                try:
                    await self.api.delete(WORKLOADS, self.spec.namespace, self.spec.name, version)
                    break
                except ApiRefusedError as exc:
                    if exc.code != 409:
                        raise
                    version = None  # look again: is it still ours?
            else:
                log.warning("%s keeps changing; left in place", self.where)
            self.resource_version = None
            self._written = False
