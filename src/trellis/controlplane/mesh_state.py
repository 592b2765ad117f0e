"""The mesh config the control plane serves: stored resources, translated per proxy.

The store holds validated documents; this keeps them parsed, and turns them into
one xDS snapshot per connected proxy. A proxy's explicit-capture ports come from
its node metadata (the launcher sets them; Istio's own keys are used where they
exist):

| key | meaning | default |
|---|---|---|
| `WORKLOAD_NAME`, `NAMESPACE`, `SERVICE_ACCOUNT`, `LABELS` | Istio's node metadata | — |
| `TRELLIS_CAPTURE_MODE` | `explicit` or `transparent` | `explicit` |
| `TRELLIS_OUTBOUND_PORT` | the HTTP_PROXY listener port | 15001 |
| `TRELLIS_INBOUND_ADDRESS` | where inbound listeners bind | the workload address |
| `TRELLIS_APP_PORTS` | `8080:18080,...` workload port -> application port | same port |

Proxyless gRPC clients (metadata `GENERATOR: grpc`, else a gRPC user agent:
`trellis.xds.mesh.is_grpc_node`) get the resources of `GrpcTranslator` instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

from google.protobuf.message import Message

from trellis.api.loader import parse_resource
from trellis.api.meta import Resource
from trellis.api.networking import NetworkingResource, ServiceEntry, WorkloadEntry
from trellis.controlplane.ads_status import ProxyNode
from trellis.controlplane.snapshot import Resource as XdsResource
from trellis.controlplane.snapshot import ResourceSet, Snapshot
from trellis.controlplane.store import StoredResource
from trellis.errors import ConfigError, TrellisError
from trellis.xds.mesh import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    CaptureMode,
    GrpcTranslator,
    MeshAccessLog,
    MeshConfig,
    MeshTls,
    ProxyIdentity,
    Resources,
    SharedOutbound,
    TranslateOptions,
    Translator,
    is_grpc_node,
)
from trellis.xds.mesh.tracing import MeshTracing

log = logging.getLogger("trellis.controlplane")

Key = tuple[str, str, str]


def translate_options(node: ProxyNode) -> TranslateOptions:
    """Capture settings from node metadata; raises ConfigError naming the bad key."""
    meta = node.metadata

    def text(key: str, default: str) -> str:
        value = meta.get(key, default)
        return str(value) if value is not None else default

    def port(key: str, value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"node {node.id}: metadata {key}: {value!r} is not a port") from None

    app_ports: dict[int, int] = {}
    for pair in filter(None, text("TRELLIS_APP_PORTS", "").split(",")):
        workload_port, _, app_port = pair.partition(":")
        app_ports[port("TRELLIS_APP_PORTS", workload_port)] = port(
            "TRELLIS_APP_PORTS", app_port or workload_port
        )
    try:
        mode = CaptureMode(text("TRELLIS_CAPTURE_MODE", CaptureMode.EXPLICIT.value))
    except ValueError:
        raise ConfigError(f"node {node.id}: metadata TRELLIS_CAPTURE_MODE is unknown") from None
    return TranslateOptions(
        capture_mode=mode,
        outbound_port=port("TRELLIS_OUTBOUND_PORT", text("TRELLIS_OUTBOUND_PORT", "15001")),
        inbound_address=meta.get("TRELLIS_INBOUND_ADDRESS") or None,  # type: ignore[arg-type]
        app_ports=app_ports,
    )


class MeshState:
    """Parsed resources keyed by (kind, namespace, name), and per-proxy translation.

    With `tls` (the mesh CA's root, `set_tls`) sidecars get mTLS and the
    `ROOTCA` secret; without it their traffic is plaintext.
    """

    def __init__(self, tls: MeshTls | None = None, access_log: MeshAccessLog | None = None) -> None:
        self._tls = tls
        self._access_log = access_log
        self._tracing: MeshTracing | None = None
        self._service_vips: dict[str, str] = {}  # host -> virtual IP (`set_service_vips`)
        self._resources: dict[Key, Resource] = {}
        self._registry: tuple[Resource, ...] = ()  # from the platform (Kubernetes Services)
        self._pods: dict[tuple[str, str], WorkloadEntry] = {}  # the registry's, by (ns, pod)
        self._translator: Translator | None = None
        self._grpc: GrpcTranslator | None = None
        # Proxies share translated messages; each is serialized once per config.
        # The message is kept with its encoding so its id cannot be reused.
        self._encoded: dict[int, tuple[Message, XdsResource]] = {}
        self._sets: dict[tuple[str, tuple[int, ...]], ResourceSet] = {}
        self._groups: dict[int, tuple[SharedOutbound, dict[str, ResourceSet]]] = {}
        self.version = "0"

    def load(self, stored: Iterable[StoredResource], version: str) -> None:
        self._resources = {}
        for item in stored:
            self.put(item)
        self.version = version

    def put(self, item: StoredResource) -> None:
        """Take a stored resource; one that no longer validates is logged and left out."""
        try:
            resource = parse_resource(item.to_document(), source="store")
        except TrellisError as exc:
            log.error("ignoring stored %s: %s", item.describe(), exc)
            self.remove(item.key)
            return
        self._resources[resource.key] = resource
        self._changed()

    def remove(self, key: Key) -> None:
        self._resources.pop(key, None)
        self._changed()

    def registry(self) -> list[NetworkingResource]:
        """The platform's service registry (see `set_registry`)."""
        return [item for item in self._registry if isinstance(item, ServiceEntry | WorkloadEntry)]

    def set_registry(self, resources: Iterable[Resource]) -> None:
        """Take the platform's service registry (ServiceEntries and WorkloadEntries made
        from Kubernetes Services and endpoints); translated beside the stored config."""
        self._registry = tuple(resources)
        self._pods = {
            (item.metadata.namespace, item.metadata.name): item
            for item in self._registry
            if isinstance(item, WorkloadEntry)
        }
        self._changed()

    def set_tls(self, tls: MeshTls | None) -> None:
        """Take the mesh CA's root (None: no mesh mTLS); every proxy's config changes."""
        self._tls = tls
        self._changed()

    def set_access_log(self, access_log: MeshAccessLog | None) -> None:
        """Where every sidecar logs requests (None: no access log); every proxy changes."""
        self._access_log = access_log
        self._changed()

    def set_tracing(self, tracing: MeshTracing | None) -> None:
        """Where every sidecar sends spans (None: no tracing); every proxy changes."""
        self._tracing = tracing
        self._changed()

    def set_service_vips(self, vips: Mapping[str, str]) -> None:
        """Take the virtual IPs the control plane gave service hosts; proxies change
        only when they did (transparent capture matches TCP services by them)."""
        if vips != self._service_vips:
            self._service_vips = dict(vips)
            self._changed()

    def _changed(self) -> None:
        self._translator = None
        self._grpc = None
        self._encoded = {}
        self._sets = {}
        self._groups = {}

    @property
    def translator(self) -> Translator:
        if self._translator is None:
            config = MeshConfig.of(
                [*self._resources.values(), *self._registry], self._tls, self._access_log
            )
            if self._tracing is not None:
                config = dataclasses.replace(config, tracing=self._tracing)
            if self._service_vips:
                config = dataclasses.replace(config, service_vips=dict(self._service_vips))
            self._translator = Translator(config)
        return self._translator

    def resources(self) -> list[Resource]:
        return list(self._resources.values())

    def identity(self, node: ProxyNode) -> ProxyIdentity:
        entry = self._resources.get(
            ("WorkloadEntry", node.namespace or "default", node.workload_name)
        )
        if isinstance(entry, WorkloadEntry):
            return ProxyIdentity.from_workload_entry(node.id, entry)
        pod = self._pods.get((node.namespace or "default", str(node.metadata.get("NAME") or "")))
        if pod is not None:  # a Kubernetes sidecar: its pod's address and ports, by pod name
            identity = ProxyIdentity.from_workload_entry(node.id, pod)
            return dataclasses.replace(identity, workload_name=node.workload_name or node.id)
        return ProxyIdentity(
            node_id=node.id,
            workload_name=node.workload_name or node.id,
            namespace=node.namespace or "default",
            service_account=node.service_account or "default",
            labels=dict(node.labels),
        )

    def snapshot_for(self, node: ProxyNode) -> Snapshot:
        """The proxy's whole config; raises TrellisError when it cannot be translated."""
        if is_grpc_node(node.metadata, node.user_agent):
            if self._grpc is None:
                self._grpc = GrpcTranslator(self.translator.config)
            return self._snapshot(self._grpc.translate(self.identity(node)))
        parts = self.translator.translate_parts(self.identity(node), translate_options(node))
        shared = self._shared_sets(parts.shared)
        clusters = shared[CLUSTER_TYPE]
        if parts.inbound_clusters:
            clusters = clusters.extended(map(XdsResource.of, parts.inbound_clusters.values()))
        own_listeners = [XdsResource.of(m) for m in parts.listeners.values()]
        sets = {
            CLUSTER_TYPE: clusters,
            ENDPOINT_TYPE: shared[ENDPOINT_TYPE],
            LISTENER_TYPE: ResourceSet.of(LISTENER_TYPE, own_listeners),
            ROUTE_TYPE: shared[ROUTE_TYPE],
        }
        if parts.secrets:  # one set for every proxy: the same messages each time
            sets[SECRET_TYPE] = self._set(SECRET_TYPE, parts.secrets)
        return Snapshot(self.version, sets)

    def _shared_sets(self, shared: SharedOutbound) -> dict[str, ResourceSet]:
        """The sets of one translation group's shared resources, built once per config."""
        found = self._groups.get(id(shared))
        if found is None:
            sets = {
                CLUSTER_TYPE: self._set(CLUSTER_TYPE, shared.clusters),
                ENDPOINT_TYPE: self._set(ENDPOINT_TYPE, shared.assignments),
                ROUTE_TYPE: self._set(ROUTE_TYPE, shared.routes),
            }
            found = self._groups[id(shared)] = (shared, sets)
        return found[1]

    def _snapshot(self, resources: Resources) -> Snapshot:
        return Snapshot(
            self.version,
            {type_url: self._set(type_url, by_name) for type_url, by_name in resources.items()},
        )

    def _set(self, type_url: str, by_name: Mapping[str, Message]) -> ResourceSet:
        """A set of shared messages; equal message lists give the same (cached) set."""
        key = (type_url, tuple(map(id, by_name.values())))
        shared = self._sets.get(key)
        if shared is None:
            encoded = self._encoded
            items = []
            for message in by_name.values():
                known = encoded.get(id(message))
                if known is None:
                    known = encoded[id(message)] = (message, XdsResource.of(message))
                items.append(known[1])
            shared = self._sets[key] = ResourceSet.of(type_url, items)
        return shared
