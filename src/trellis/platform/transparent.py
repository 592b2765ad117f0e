"""Transparent capture (root on Linux): step 3 of a launch (`trellis.platform.launcher`).

Instead of loopback ports, the workload gets a network namespace of its own
on the bridge (`trellis.platform.netns`; what dead launchers left behind is
removed first), whose /etc/hosts names the services' virtual IPs (kept up to
date while it runs: `TransparentCapture.follow_services`) and whose iptables
rules send the application's TCP to the sidecar. The sidecar runs in it as
the proxy's group, with Istio's fixed ports (15001 outbound, 15006 inbound,
15000 admin, 15020 merged metrics and 15021 health on the namespace's
address), and talks to the control plane over its Unix socket; the
WorkloadEntry is the namespace's address with the application's port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from trellis.platform.api_client import ControlPlaneApi
from trellis.platform.hosts import render_hosts
from trellis.platform.launch_settings import LaunchSettings
from trellis.platform.netns import (
    NetworkSettings,
    WorkloadNetwork,
    create_workload_network,
    remove_stale,
    transparent_unavailable,
)
from trellis.platform.paths import RunDir
from trellis.platform.registration import Registration
from trellis.platform.sidecar import Sidecar
from trellis.platform.spec import (
    DEFAULT_APP_PORT,
    LaunchError,
    SidecarPorts,
    child_environment,
    proxy_arguments,
)

log = logging.getLogger("trellis.run")

SERVICE_WATCH = 60.0
"""The namespace's /etc/hosts follows a watch on ServiceEntries, renewed this often
(and after an error, after `WATCH_RETRY`)."""
WATCH_RETRY = 1.0


class TransparentCapture:
    """One launch's network namespace and the sidecar in it.

    `network`, `ports` and `sidecar` are set as soon as each exists, so that
    the launch can undo them even when the start failed half-way.
    """

    def __init__(
        self, settings: LaunchSettings, api: ControlPlaneApi, registration: Registration
    ) -> None:
        self.settings = settings
        self.spec = settings.workload
        self.api = api
        self.registration = registration
        self.network: WorkloadNetwork | None = None
        self.ports: SidecarPorts | None = None
        self.sidecar: Sidecar | None = None

    async def start(self, run_dir: RunDir, rejected: Callable[[], Awaitable[str | None]]) -> None:
        """Step 3 of transparent capture: the namespace, the registration, the sidecar."""
        settings, spec = self.settings, self.spec
        why_not = transparent_unavailable()
        if why_not is not None:
            raise LaunchError(f"{why_not}; use --capture explicit")
        network = settings.network or NetworkSettings.from_environ(settings.environ)
        for line in await asyncio.to_thread(remove_stale, network):
            log.info("removed what a launcher that died left behind: %s", line)
        xds = await self._xds_socket()
        hosts = await self._hosts_text()
        self.network = await asyncio.to_thread(create_workload_network, spec.name, network, hosts)
        ports = SidecarPorts.in_namespace(self.network.address, spec.app_port or DEFAULT_APP_PORT)
        self.ports = ports
        await self.registration.register(ports)
        arguments = proxy_arguments(
            spec,
            ports,
            xds=xds,
            token_file=str(run_dir.token_file),
            drain_time=settings.drain_time,
            log_level=settings.sidecar_log_level,
        )
        self.sidecar = Sidecar(
            [*self.network.proxy_prefix(), *settings.proxy_command, *arguments],
            child_environment(settings.environ),
            ports.admin,
            settings.sidecar_log or run_dir.sidecar_log,
            host=ports.address,
        )
        await self.sidecar.start()
        # From outside, every port but the admin's is redirected to the inbound capture port.
        listeners = {"virtualOutbound": None, "virtualInbound": ports.inbound}
        await self.sidecar.wait_ready(listeners, settings.ready_timeout, rejected)
        log.info(
            "sidecar (pid %d) ready in network namespace %s at %s: outbound capture :%d, "
            "inbound capture :%d -> application 127.0.0.1:%d, admin %s:%d, "
            "merged metrics :%s, health :%s",
            self.sidecar.pid,
            self.network.namespace,
            ports.address,
            ports.outbound,
            ports.inbound,
            ports.app,
            ports.address,
            ports.admin,
            ports.stats,
            ports.health,
        )

    async def follow_services(self) -> None:
        """Keep the namespace's /etc/hosts in step with the services' virtual IPs: rewrite
        it whenever a ServiceEntry changes (and once per watch, for what came before)."""
        written: str | None = None
        for _ in range(100_000_000):
            try:
                async with self.api.watch("ServiceEntry", SERVICE_WATCH) as events:
                    written = await self._write_hosts(written)
                    async for _event in events:
                        written = await self._write_hosts(written)
            except LaunchError as exc:
                log.debug("cannot follow the services for /etc/hosts: %s", exc)
                await asyncio.sleep(WATCH_RETRY)

    async def _xds_socket(self) -> str:
        """The control plane's xDS socket (127.0.0.1 in the namespace is not the host's),
        from `--xds unix:PATH` or the control plane."""
        if self.settings.xds.startswith("unix:"):
            return self.settings.xds
        path = await self.api.xds_socket()
        if path is None:
            raise LaunchError(
                "transparent capture needs the control plane's xDS Unix socket, and it serves "
                "none (started with --xds-socket ''?); give --xds unix:PATH"
            )
        return f"unix:{path}"

    async def _hosts_text(self) -> str:
        return render_hosts(
            (await self.api.service_addresses(self.spec.namespace)).items, self.spec.namespace
        )

    async def _write_hosts(self, written: str | None) -> str:
        """Rewrite /etc/hosts if the services changed; its text."""
        assert self.network is not None
        text = await self._hosts_text()
        if text != written:
            await asyncio.to_thread(self.network.update_hosts, text)
        return text
