"""`trellis control-plane`: the store, the xDS server and the REST API in one process.

Stored config changes are watched, debounced, translated for every connected
proxy and pushed over ADS; a proxy that connects gets its snapshot built on the
spot. An acknowledged apply is durable (SQLite, WAL, synchronous=FULL). The
same gRPC server carries the CA's certificate service (`ca_service`); its
root is `ControlPlane.ca.root_bundle_pem`, and the OTLP trace receiver (`otlp`).
The proxies' metrics are scraped for the dashboard (`stats_collector`); the
control plane's own are served on its monitoring port (`monitoring`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trellis.api.meta import RUN_OWNER_ANNOTATION
from trellis.api.networking import NetworkingResource
from trellis.controlplane.ads import AdsServer, serve_ads
from trellis.controlplane.ads_status import ProxyNode
from trellis.controlplane.ca import DEFAULT_CERT_TTL, DEFAULT_TRUST_DOMAIN, CertificateAuthority
from trellis.controlplane.ca_auth import Authenticator
from trellis.controlplane.ca_files import open_authority
from trellis.controlplane.ca_service import CertificateService
from trellis.controlplane.join_token import JoinTokenAuthenticator, JoinTokens
from trellis.controlplane.kube_ca import KubeIdentity, KubeIdentitySettings
from trellis.controlplane.kube_calls import KubeCalls
from trellis.controlplane.kube_platform import KubePlatform, Platform
from trellis.controlplane.kube_root_cert import RootCertPublisher
from trellis.controlplane.kube_status import StatusWriter
from trellis.controlplane.mesh_state import MeshState
from trellis.controlplane.monitoring import ControlPlaneMetrics, serve_monitoring
from trellis.controlplane.otlp import trace_rpc_handler
from trellis.controlplane.snapshot import Snapshot
from trellis.controlplane.snapshot_cache import SnapshotCache
from trellis.controlplane.sqlite_store import SqliteConfigStore
from trellis.controlplane.stats_collector import DEFAULT_INTERVAL, MetricsCollector, ScrapeTarget
from trellis.controlplane.store import (
    ConfigStore,
    ConflictError,
    WatchEventType,
    WatchExpiredError,
)
from trellis.controlplane.traces import TraceStore
from trellis.controlplane.vips import ServiceVips
from trellis.controlplane.xds_tls import ServingCertificate, XdsTlsSettings
from trellis.errors import ConfigError, TrellisError
from trellis.kube.registry import Registry
from trellis.xds.mesh import LogEncoding, MeshAccessLog, MeshTls
from trellis.xds.mesh.service_addresses import ServiceAddressList
from trellis.xds.mesh.tracing import MeshTracing
from trellis.xds.mesh.vips import DEFAULT_VIP_HOLD, DEFAULT_VIP_RANGE, VipPolicy, VipRange

log = logging.getLogger("trellis.controlplane")


DB_FILE = "config.db"
_PUBLISH_BATCH = 50
_CATCH_UP_POLLS = 200  # of 10 ms: how long the service-addresses API waits for the watch


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    data_dir: Path
    xds_address: str = "127.0.0.1:15010"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    debounce: float = 0.1
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    cert_ttl: float = DEFAULT_CERT_TTL
    ca_cert: Path | None = None
    ca_key: Path | None = None
    ca_chain: Path | None = None
    access_log_file: str | None = None  # every sidecar's access log; None: none
    access_log_json: bool = True
    tracing: MeshTracing | None = None  # every sidecar's spans to this OTLP collector
    # How long a `trellis run` workload's sidecar may stay disconnected before its
    # registration is removed (the launcher died without deregistering).
    orphan_grace: float = 60.0
    # Services' virtual IPs (transparent capture) come from here; a removed
    # host's address stays reserved for it `vip_hold` seconds.
    vip_range: str = DEFAULT_VIP_RANGE
    vip_hold: float = DEFAULT_VIP_HOLD
    # xDS and the CA also on this Unix socket (absolute path; None: not served):
    # sidecars in other network namespaces reach the control plane through it.
    xds_socket: Path | None = None
    # Every connected proxy's /stats/prometheus is read this often for the dashboard.
    scrape_interval: float = DEFAULT_INTERVAL
    # Kubernetes: the CA checks projected service-account tokens with TokenReview
    # (instead of join tokens) and, with a Lease named, the replicas elect a leader.
    kube_identity: KubeIdentitySettings | None = None
    # kubernetes: config in the Istio CRDs and the registry from Services and
    # EndpointSlices, through `kubeconfig` (None: the in-cluster service account).
    platform: Platform = Platform.LOCAL
    kubeconfig: Path | None = None
    # xDS and the CA also over TLS (port 15012 on Kubernetes); None: not served.
    xds_tls: XdsTlsSettings | None = None
    # The control plane's own metrics, GET /metrics (port 15014 on Kubernetes); None: not served.
    monitoring_address: tuple[str, int] | None = None


class ControlPlane:
    """Keeps every connected proxy's snapshot in step with the store."""

    def __init__(self, store: ConfigStore, cache: SnapshotCache) -> None:
        self.store = store
        self.cache = cache
        self.state = MeshState()
        self.ads: AdsServer | None = None
        self.ca: CertificateAuthority | None = None
        self.join_tokens: JoinTokens | None = None
        self.vips: ServiceVips | None = None
        self.metrics: MetricsCollector | None = None
        self.traces = TraceStore()
        self.kube: KubeIdentity | None = None  # TokenReview and the leader elector
        self._republish = asyncio.Event()

    def registry(self) -> list[NetworkingResource]:
        """The platform's service registry as config models (empty on the local platform)."""
        return self.state.registry()

    def set_registry(self, registry: Registry) -> None:
        """Take the platform's service registry (Kubernetes discovery) and push it."""
        self.state.set_registry(registry.resources())
        self._republish.set()

    async def load(self) -> None:
        listing = await self.store.list_with_version()
        self.state.load(listing.items, listing.resource_version)
        self.sync_vips()

    def sync_vips(self) -> None:
        """Give new service hosts their virtual IPs and release removed ones', and hand
        the table to translation."""
        if self.vips is not None:
            self.vips.refresh(self.state.resources(), time.time())
            assigned = self.vips.table.assigned
            self.state.set_service_vips({host: str(vip) for host, vip in assigned.items()})

    async def service_addresses(self, namespace: str | None) -> ServiceAddressList:
        """The services' virtual IPs (all, or as seen from `namespace`) as of the store now.

        Waits (at most ~2 s) for the watch to take in the latest change, so that a
        ServiceEntry whose apply was just acknowledged is listed with its address.
        """
        if self.vips is None:
            raise TrellisError("this control plane allocates no virtual IPs")
        target = await self.store.current_version()
        for _ in range(_CATCH_UP_POLLS):
            if not target.isdigit() or int(self.state.version) >= int(target):
                break
            await asyncio.sleep(0.01)
        self.sync_vips()
        return self.vips.addresses(self.state.resources(), namespace)

    def admin_address(self, node_id: str) -> str | None:
        """A connected proxy's admin address, from its node metadata (TRELLIS_ADMIN_ADDRESS)."""
        if self.ads is None:
            return None
        for node in self.ads.service.connected_nodes():
            if node.id == node_id:
                address = node.metadata.get("TRELLIS_ADMIN_ADDRESS")
                return str(address) if address else None
        return None

    def scrape_targets(self) -> list[ScrapeTarget]:
        """The connected proxies that announced an admin address, once each."""
        if self.ads is None:
            return []
        targets: dict[str, ScrapeTarget] = {}
        for node in self.ads.service.connected_nodes():
            address = node.metadata.get("TRELLIS_ADMIN_ADDRESS")
            if address and node.id not in targets:
                targets[node.id] = ScrapeTarget(node.id, str(address))
        return list(targets.values())

    def snapshot_for(self, node: ProxyNode) -> Snapshot | None:
        """The ADS server's source for a proxy that has no snapshot yet."""
        try:
            return self.state.snapshot_for(node)
        except TrellisError as exc:
            log.error("cannot build config for proxy %s: %s", node.id, exc)
            return None

    async def watch(self) -> None:
        """Follow the store; mark the snapshots stale on every change."""
        since = self.state.version
        while True:
            try:
                async with contextlib.aclosing(self.store.watch(since)) as events:
                    async for event in events:
                        if event.type is WatchEventType.DELETED:
                            self.state.remove(event.resource.key)
                        else:
                            self.state.put(event.resource)
                        self.state.version = since = event.resource_version
                        self._republish.set()
            except WatchExpiredError:
                log.warning("store watch expired; re-listing")
                await self.load()
                since = self.state.version
                self._republish.set()

    async def reap_orphans(self, grace: float, interval: float) -> None:
        """Delete the WorkloadEntries `trellis run` registered whose sidecar has been gone
        for `grace` seconds: a launcher that was killed (SIGKILL, a crash) never
        deregistered, and its workload would stay an endpoint nobody answers on.

        Only entries with the launcher's owner annotation are touched, each by
        the resourceVersion it was seen with; the sidecar's node id is
        `NAME.NAMESPACE`. The clock starts when this control plane first sees
        the entry unconnected, so a restart gives every sidecar the whole grace
        to reconnect.
        """
        unconnected_since: dict[tuple[str, str], float] = {}
        while True:
            await asyncio.sleep(interval)
            connected = (
                {node.id for node in self.ads.service.connected_nodes()}
                if self.ads is not None
                else set()
            )
            now = time.monotonic()
            seen = set()
            for entry in await self.store.list("WorkloadEntry"):
                if RUN_OWNER_ANNOTATION not in entry.annotations:
                    continue
                key = (entry.namespace, entry.name)
                seen.add(key)
                if f"{entry.name}.{entry.namespace}" in connected:
                    unconnected_since.pop(key, None)
                    continue
                since = unconnected_since.setdefault(key, now)
                if now - since < grace:
                    continue
                with contextlib.suppress(ConflictError):  # changed meanwhile: look again later
                    await self.store.delete(
                        "WorkloadEntry", entry.namespace, entry.name, entry.resource_version
                    )
                    log.warning(
                        "removed WorkloadEntry %s/%s: its sidecar has been gone for %.0fs "
                        "(its launcher did not deregister it)",
                        entry.namespace,
                        entry.name,
                        now - since,
                    )
                unconnected_since.pop(key, None)
            for key in set(unconnected_since) - seen:
                del unconnected_since[key]

    async def publish(self, debounce: float) -> None:
        """Rebuild connected proxies' snapshots after a burst of changes settles."""
        while True:
            await self._republish.wait()
            await asyncio.sleep(debounce)
            self._republish.clear()
            self.sync_vips()
            if self.ads is None:
                continue
            for count, node in enumerate(self.ads.service.connected_nodes(), start=1):
                snapshot = self.snapshot_for(node)
                if snapshot is not None:
                    try:
                        self.cache.set(node.id, snapshot)
                    except TrellisError as exc:
                        log.error("not publishing config for %s: %s", node.id, exc)
                if count % _PUBLISH_BATCH == 0:
                    await asyncio.sleep(0)  # let the first proxies' pushes go out meanwhile


async def serve(
    settings: ControlPlaneSettings,
    make_api: Callable[[ConfigStore, ControlPlane], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; `make_api` serves the REST API (uvicorn) when given."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    kube: KubePlatform | None = None
    store: ConfigStore
    if settings.platform is Platform.KUBERNETES:
        kube = await KubePlatform.open(settings.kubeconfig)
        store = kube.store
    else:
        store = await SqliteConfigStore.open(settings.data_dir / DB_FILE)
    # `ControlPlane.publish` already waits for bursts to settle: the cache pushes at once.
    cache = SnapshotCache(debounce=0.0, max_delay=0.0)
    plane = ControlPlane(store, cache)
    try:
        try:
            vip_range = VipRange.parse(settings.vip_range, "--service-vip-range")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if kube is None:  # on Kubernetes, services' addresses are their cluster IPs
            policy = VipPolicy(vip_range, settings.vip_hold)
            plane.vips = ServiceVips.open(settings.data_dir, policy)

        await plane.load()
        plane.ca = open_authority(
            settings.data_dir,
            trust_domain=settings.trust_domain,
            ca_cert=settings.ca_cert,
            ca_key=settings.ca_key,
            ca_chain=settings.ca_chain,
            now=datetime.datetime.now(datetime.UTC),
        )
        root = plane.ca.root.subject.rfc4514_string()
        log.info("certificate authority: %s (root %s)", plane.ca.source, root)
        # Sidecars verify peers against this root (xDS secret ROOTCA): mesh mTLS is on.
        plane.state.set_tls(
            MeshTls(plane.ca.root_bundle_pem.encode(), trust_domain=plane.ca.trust_domain)
        )
        if settings.access_log_file is not None:
            encoding = LogEncoding.JSON if settings.access_log_json else LogEncoding.TEXT
            plane.state.set_access_log(MeshAccessLog(settings.access_log_file, encoding))
        if settings.tracing is not None:
            plane.state.set_tracing(settings.tracing)
        plane.join_tokens = JoinTokens.load_or_create(settings.data_dir)
        authenticator: Authenticator = JoinTokenAuthenticator(plane.join_tokens)
        if settings.kube_identity is not None:
            plane.kube = KubeIdentity.open(settings.kube_identity)
            authenticator = plane.kube.authenticator
            log.info("the CA authenticates projected service-account tokens (TokenReview)")
        certificates = CertificateService(plane.ca, authenticator, cert_ttl=settings.cert_ttl)
        tls = settings.xds_tls
        plane.ads = await serve_ads(
            settings.xds_address,
            cache,
            plane.snapshot_for,
            handlers=(certificates.rpc_handler(), trace_rpc_handler(plane.traces)),
            unix_socket=settings.xds_socket,
            tls_address=tls.address if tls is not None else None,
            tls_credentials=(
                ServingCertificate(plane.ca, tls.dns_names, tls.ttl).credentials()
                if tls is not None
                else None
            ),
        )
        log.info("xDS (ADS) on port %d", plane.ads.port)
        plane.metrics = MetricsCollector(plane.scrape_targets, interval=settings.scrape_interval)
        # On Kubernetes with an election, the leader writes the CRD objects' status.
        elector = plane.kube.elector if plane.kube is not None else None
        status = (
            StatusWriter(kube.store, elector.is_leader, plane.registry)
            if kube is not None and elector is not None
            else None
        )

        def on_registry(registry: Registry) -> None:
            plane.set_registry(registry)
            if status is not None:
                status.refresh()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(plane.watch(), name="store watch"),
                *(
                    [group.create_task(kube.discover(on_registry), name="discovery")]
                    if kube is not None
                    else []
                ),
                group.create_task(plane.publish(settings.debounce), name="publish"),
                group.create_task(
                    plane.reap_orphans(settings.orphan_grace, min(5.0, settings.orphan_grace)),
                    name="orphan reaper",
                ),
                group.create_task(plane.metrics.run(), name="metrics collector"),
            ]
            if make_api is not None:
                tasks.append(group.create_task(make_api(store, plane), name="rest api"))
            if settings.monitoring_address is not None:
                own = _own_metrics(plane, certificates)
                monitoring = serve_monitoring(own, *settings.monitoring_address)
                tasks.append(group.create_task(monitoring, name="monitoring"))
            if elector is not None:
                tasks.append(group.create_task(elector.run(), name="leader election"))
            if status is not None:
                tasks.append(group.create_task(status.run(), name="status writer"))
            if kube is not None and settings.xds_tls is not None:
                tasks.append(group.create_task(_root_publisher(kube, plane).run(), name="root"))
            await stop.wait()
            log.info("stopping")
            for task in tasks:
                task.cancel()
    finally:
        if plane.ads is not None:
            await plane.ads.stop()
        if plane.kube is not None:
            await plane.kube.close()
        await (kube.close() if kube is not None else store.close())
    return 0


def _root_publisher(kube: KubePlatform, plane: ControlPlane) -> RootCertPublisher:
    """Sidecars dialing the TLS port trust the CA's root from a ConfigMap in their
    namespace; the leader (or the only replica) keeps it there."""
    assert plane.ca is not None
    elector = plane.kube.elector if plane.kube is not None else None
    return RootCertPublisher(
        KubeCalls(kube.client),
        plane.ca.root_bundle_pem,
        leading=elector.leading if elector is not None else None,
    )


def _own_metrics(plane: ControlPlane, certificates: CertificateService) -> ControlPlaneMetrics:
    """The control plane's own metrics (istiod's names) over its ADS streams, config and CA."""
    ads = plane.ads
    assert ads is not None, "ADS is served before the monitoring port"
    state = plane.state
    return ControlPlaneMetrics(
        ads.service.status,
        lambda: [*state.resources(), *state.registry()],
        certificates.counts,
        plane.ca,
    )
