"""The service registry from Kubernetes objects: Services and endpoints as Istio sees them.

Pure functions over the JSON of Namespaces, Services, EndpointSlices and Pods
(as the API server sends them); the control plane's watches call
`build_registry` whenever one of them changes. The result is made of the same
config models a user's ServiceEntry and WorkloadEntry become, so translation
does not know where a service came from:

- each Service is a ServiceEntry: host `<name>.<namespace>.svc.<domain>`,
  location MESH_INTERNAL, resolution STATIC; each port's protocol from
  `appProtocol`, else from the port name's prefix as Istio reads it
  (`http-web`, `grpc`, `tcp-db`), else TCP. Its cluster IPs (the service's
  virtual IPs; none for a headless Service) are the ServiceEntry's
  `addresses`: transparent capture matches TCP services by them
  (`trellis.xds.mesh.virtual_outbound`), while HTTP is routed by Host;
- a Service with a selector selects its endpoints by labels
  (`workloadSelector`), so each ready endpoint of its EndpointSlices that is a
  Pod becomes a WorkloadEntry named after the Pod, with the Pod's labels,
  service account and the ports by name; a Pod with the Trellis sidecar is
  labelled `security.istio.io/tlsMode: istio` (peers then talk mTLS to it);
- a Service without a selector (endpoints managed by hand) lists its ready
  endpoints in the ServiceEntry itself.

Services of type ExternalName, UDP/SCTP ports and Services in namespaces that
are gone or terminating are left out; a Service that does not convert is
reported in `Registry.problems`, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trellis.api.hosts import is_ip
from trellis.api.loader import parse_resource
from trellis.api.meta import Resource
from trellis.api.networking import HTTP_PROTOCOLS, TCP_PROTOCOLS, ServiceEntry, WorkloadEntry
from trellis.errors import TrellisError
from trellis.kube.settings import PROXY_NAME, STATUS_ANNOTATION, TLS_MODE_LABEL

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label that ties an EndpointSlice to its Service."""
DEFAULT_DOMAIN = "cluster.local"
"""The Service's cluster IPs, comma-separated, on its ServiceEntry."""

_APP_PROTOCOLS = {
    "http": "HTTP",
    "http2": "HTTP2",
    "kubernetes.io/h2c": "HTTP2",
    "grpc": "GRPC",
    "grpc-web": "GRPC-WEB",
    "https": "HTTPS",
    "kubernetes.io/ws": "HTTP",
    "kubernetes.io/wss": "TLS",
    "tcp": "TCP",
    "tls": "TLS",
    "mongo": "MONGO",
    "mysql": "MYSQL",
    "redis": "REDIS",
}

Json = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Registry:
    """What the cluster's services and endpoints amount to, as config models."""

    entries: tuple[ServiceEntry, ...] = ()
    workloads: tuple[WorkloadEntry, ...] = ()
    problems: tuple[str, ...] = ()

    def resources(self) -> list[Resource]:
        return [*self.entries, *self.workloads]


def port_protocol(port: Json) -> str:
    """A Service port's mesh protocol: `appProtocol`, else the name's prefix, else TCP."""
    app = str(port.get("appProtocol") or "").lower()
    if app in _APP_PROTOCOLS:
        return _APP_PROTOCOLS[app]
    name = str(port.get("name") or "").lower()
    for prefix in ("grpc-web", *(p.lower() for p in HTTP_PROTOCOLS | TCP_PROTOCOLS)):
        if name == prefix or name.startswith(prefix + "-"):
            return prefix.upper()
    return "TCP"


def port_name(port: Json) -> str:
    """The port's name, or `port-<number>` for a Service's one unnamed port."""
    return str(port.get("name") or f"port-{port.get('port')}")


def has_sidecar(pod: Json) -> bool:
    """Whether the Pod was injected with the Trellis sidecar."""
    meta = pod.get("metadata") or {}
    if STATUS_ANNOTATION in (meta.get("annotations") or {}):
        return True
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return any(container.get("name") == PROXY_NAME for container in containers)


def _meta(obj: Json) -> Json:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _key(obj: Json) -> tuple[str, str]:
    meta = _meta(obj)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _tcp_ports(service: Json) -> list[Json]:
    ports = (service.get("spec") or {}).get("ports") or []
    return [p for p in ports if str(p.get("protocol") or "TCP").upper() == "TCP"]


def _ready_endpoints(slice_: Json) -> Iterable[tuple[str, Json]]:
    """(address, endpoint) of each ready endpoint of an IP EndpointSlice."""
    if slice_.get("addressType") not in ("IPv4", "IPv6"):
        return
    for endpoint in slice_.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False:
            continue
        addresses = [a for a in endpoint.get("addresses") or [] if is_ip(str(a))]
        if addresses:
            yield str(addresses[0]), endpoint


def _slice_ports(slice_: Json, by_name: Mapping[str, str]) -> dict[str, int]:
    """Service port name -> the endpoints' port, for the Service's TCP ports in the slice."""
    ports: dict[str, int] = {}
    for port in slice_.get("ports") or []:
        name = by_name.get(str(port.get("name") or ""))
        if name is not None and isinstance(port.get("port"), int):
            ports[name] = port["port"]
    return ports


def _pod_labels(pod: Json | None) -> dict[str, str]:
    if pod is None:
        return {}
    labels = {str(k): str(v) for k, v in (_meta(pod).get("labels") or {}).items()}
    if has_sidecar(pod):
        labels[TLS_MODE_LABEL] = "istio"
    return labels


def _service_account(pod: Json | None) -> str:
    if pod is None:
        return ""
    return str((pod.get("spec") or {}).get("serviceAccountName") or "default")


def service_entry_document(
    service: Json, slices: Iterable[Json], pods: Mapping[tuple[str, str], Json], domain: str
) -> dict[str, Any] | None:
    """The ServiceEntry document of one Service (None: not a mesh service)."""
    namespace, name = _key(service)
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return None
    ports = _tcp_ports(service)
    if not ports:
        return None
    by_name = {str(p.get("name") or ""): port_name(p) for p in ports}
    entry_ports = []
    for port in ports:
        entry_port: dict[str, Any] = {
            "number": port.get("port"),
            "name": port_name(port),
            "protocol": port_protocol(port),
        }
        if isinstance(port.get("targetPort"), int):
            entry_port["targetPort"] = port["targetPort"]
        entry_ports.append(entry_port)
    cluster_ips = [
        str(ip) for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and is_ip(str(ip))
    ]
    entry: dict[str, Any] = {
        "hosts": [f"{name}.{namespace}.svc.{domain}"],
        "ports": entry_ports,
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
    }
    if cluster_ips:  # a headless Service's clusterIP is "None": no address
        entry["addresses"] = cluster_ips
    selector = spec.get("selector") or {}
    if selector:
        entry["workloadSelector"] = {"labels": dict(selector)}
    else:
        endpoints = []
        for slice_ in slices:
            for address, endpoint in _ready_endpoints(slice_):
                pod = _endpoint_pod(endpoint, namespace, pods)
                item: dict[str, Any] = {"address": address, "ports": _slice_ports(slice_, by_name)}
                if labels := _pod_labels(pod):
                    item["labels"] = labels
                if account := _service_account(pod):
                    item["serviceAccount"] = account
                endpoints.append(item)
        entry["endpoints"] = sorted(endpoints, key=lambda e: str(e["address"]))
    labels = dict(_meta(service).get("labels") or {})
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": metadata,
        "spec": entry,
    }


def _endpoint_pod(
    endpoint: Json, namespace: str, pods: Mapping[tuple[str, str], Json]
) -> Json | None:
    ref = endpoint.get("targetRef") or {}
    if ref.get("kind") != "Pod" or not ref.get("name"):
        return None
    return pods.get((str(ref.get("namespace") or namespace), str(ref["name"])))


def workload_entry_documents(
    services: Iterable[Json], slices: Iterable[Json], pods: Mapping[tuple[str, str], Json]
) -> list[dict[str, Any]]:
    """A WorkloadEntry for each Pod that is a ready endpoint of a Service with a selector."""
    with_selector = {
        _key(s): s for s in services if (s.get("spec") or {}).get("selector") and _tcp_ports(s)
    }
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for slice_ in sorted(slices, key=_key):
        namespace = _key(slice_)[0]
        service = with_selector.get(
            (namespace, str((_meta(slice_).get("labels") or {}).get(SERVICE_NAME_LABEL) or ""))
        )
        if service is None:
            continue
        by_name = {str(p.get("name") or ""): port_name(p) for p in _tcp_ports(service)}
        for address, endpoint in _ready_endpoints(slice_):
            pod = _endpoint_pod(endpoint, namespace, pods)
            if pod is None:
                continue
            key = _key(pod)
            entry = found.get(key)
            if entry is None:
                spec: dict[str, Any] = {
                    "address": address,
                    "labels": _pod_labels(pod),
                    "serviceAccount": _service_account(pod),
                    "ports": {},
                }
                entry = found[key] = {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "WorkloadEntry",
                    "metadata": {"name": key[1], "namespace": key[0]},
                    "spec": spec,
                }
            ports = entry["spec"]["ports"]
            for name, number in _slice_ports(slice_, by_name).items():
                ports.setdefault(name, number)  # a name two Services use: the first one's
    return [found[key] for key in sorted(found)]


def build_registry(
    namespaces: Iterable[Json],
    services: Iterable[Json],
    slices: Iterable[Json],
    pods: Iterable[Json],
    domain: str = DEFAULT_DOMAIN,
) -> Registry:
    """The registry of the cluster's current Services, EndpointSlices and Pods."""
    live = {
        _key(ns)[1] for ns in namespaces if (ns.get("status") or {}).get("phase") != "Terminating"
    }
    services = [s for s in services if _key(s)[0] in live]
    slices = [s for s in slices if _key(s)[0] in live]
    pod_map = {_key(p): p for p in pods}
    by_service: dict[tuple[str, str], list[Json]] = {}
    for slice_ in slices:
        owner = str((_meta(slice_).get("labels") or {}).get(SERVICE_NAME_LABEL) or "")
        by_service.setdefault((_key(slice_)[0], owner), []).append(slice_)
    entries: list[ServiceEntry] = []
    workloads: list[WorkloadEntry] = []
    problems: list[str] = []
    for service in sorted(services, key=_key):
        document = service_entry_document(
            service, by_service.get(_key(service), []), pod_map, domain
        )
        if document is None:
            continue
        try:
            resource = parse_resource(document, source="kubernetes")
        except TrellisError as exc:
            problems.append(f"Service {'/'.join(_key(service))}: {exc}")
            continue
        if isinstance(resource, ServiceEntry):
            entries.append(resource)
    for document in workload_entry_documents(services, slices, pod_map):
        try:
            resource = parse_resource(document, source="kubernetes")
        except TrellisError as exc:
            problems.append(
                f"Pod {document['metadata']['namespace']}/{document['metadata']['name']}: {exc}"
            )
            continue
        if isinstance(resource, WorkloadEntry):
            workloads.append(resource)
    return Registry(tuple(entries), tuple(workloads), tuple(problems))
