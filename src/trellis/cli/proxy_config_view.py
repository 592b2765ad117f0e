"""Summaries of an Envoy `/config_dump` (`envoy.admin.v3.ConfigDump` JSON) as table rows.

Like `istioctl proxy-config`: listeners, routes, clusters, endpoints and
secrets, static and dynamic, each as (headers, rows); the raw resources for `-o json`; and the
updates the proxy rejected. Pure functions over the parsed JSON.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

SECTIONS = ("listeners", "routes", "clusters", "endpoints", "secrets")

_DUMP_TYPES = {
    "listeners": "ListenersConfigDump",
    "routes": "RoutesConfigDump",
    "clusters": "ClustersConfigDump",
    "endpoints": "EndpointsConfigDump",
    "secrets": "SecretsConfigDump",
}
# (list field, path to the resource inside an entry) per section, static first.
_ENTRIES = {
    "listeners": (
        ("static_listeners", ("listener",)),
        ("dynamic_listeners", ("active_state", "listener")),
        ("dynamic_listeners", ("warming_state", "listener")),
    ),
    "routes": (
        ("static_route_configs", ("route_config",)),
        ("dynamic_route_configs", ("route_config",)),
    ),
    "clusters": (
        ("static_clusters", ("cluster",)),
        ("dynamic_active_clusters", ("cluster",)),
        ("dynamic_warming_clusters", ("cluster",)),
    ),
    "endpoints": (
        ("static_endpoint_configs", ("endpoint_config",)),
        ("dynamic_endpoint_configs", ("endpoint_config",)),
    ),
    "secrets": (
        ("static_secrets", ("secret",)),
        ("dynamic_active_secrets", ("secret",)),
    ),
}
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


@dataclass(frozen=True, slots=True)
class View:
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]


def _dump(config_dump: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    for config in config_dump.get("configs") or []:
        if str(config.get("@type", "")).endswith("." + _DUMP_TYPES[section]):
            return dict(config)
    return {}


def _dig(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def resources(config_dump: Mapping[str, Any], section: str) -> list[dict[str, Any]]:
    """The resources of one section (static, then dynamic), as in the dump."""
    dump = _dump(config_dump, section)
    found: list[dict[str, Any]] = []
    for field, path in _ENTRIES[section]:
        for entry in dump.get(field) or []:
            resource = _dig(entry, path)
            if isinstance(resource, Mapping):
                found.append(dict(resource))
    return found


def rejected(config_dump: Mapping[str, Any], section: str) -> list[str]:
    """One line per resource whose last update the proxy rejected (NACKed), with the reason."""
    dump = _dump(config_dump, section)
    lines: list[str] = []
    for field, path in _ENTRIES[section]:
        for entry in dump.get(field) or []:
            error = entry.get("error_state") if isinstance(entry, Mapping) else None
            if isinstance(error, Mapping) and (error.get("details") or error.get("version_info")):
                name = entry.get("name") or _dig(entry, (*path, "name")) or ""
                version = error.get("version_info", "")
                line = f"{name}: version {version} rejected: {error.get('details', '')}"
                if line not in lines:
                    lines.append(line)
    return lines


def _socket(address: Any) -> tuple[str, str]:
    socket = _dig(address, ("socket_address",)) or {}
    return str(socket.get("address", "")), str(socket.get("port_value", ""))


def _filters(listener: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for chain in listener.get("filter_chains") or []:
        yield from chain.get("filters") or []
    default = listener.get("default_filter_chain")
    if isinstance(default, Mapping):
        yield from default.get("filters") or []


def _filter_summary(network_filter: Mapping[str, Any]) -> tuple[str, str]:
    config = network_filter.get("typed_config") or {}
    type_name = str(config.get("@type", "")).rsplit("/", 1)[-1]
    name = str(network_filter.get("name", ""))
    if type_name == _HCM or name == "envoy.filters.network.http_connection_manager":
        if "rds" in config:
            return "HTTP", f"Route: {config['rds'].get('route_config_name', '')}"
        inline = config.get("route_config") or {}
        return "HTTP", f"Route: {inline.get('name') or '(inline)'}"
    if type_name == _TCP_PROXY or name == "envoy.filters.network.tcp_proxy":
        if "cluster" in config:
            return "TCP", f"Cluster: {config['cluster']}"
        weighted = _dig(config, ("weighted_clusters", "clusters")) or []
        return "TCP", "Clusters: " + ",".join(str(item.get("name")) for item in weighted)
    return name or type_name, ""


def listeners(config_dump: Mapping[str, Any]) -> View:
    rows: list[tuple[str, ...]] = []
    for listener in resources(config_dump, "listeners"):
        address, port = _socket(listener.get("address"))
        summaries = [
            _filter_summary(item)
            for item in _filters(listener)
            if item.get("name") != "envoy.filters.network.rbac"  # guards the TCP proxy after it
        ]
        kinds = ",".join(dict.fromkeys(kind for kind, _ in summaries if kind))
        destinations = ",".join(dict.fromkeys(dest for _, dest in summaries if dest))
        rows.append((str(listener.get("name", "")), address, port, kinds, destinations))
    return View(("NAME", "ADDRESS", "PORT", "TYPE", "DESTINATION"), rows)


def _match(match: Mapping[str, Any]) -> str:
    if "prefix" in match:
        text = f"{match['prefix']}*"
    elif "path" in match:
        text = str(match["path"])
    elif "safe_regex" in match:
        text = f"~{_dig(match, ('safe_regex', 'regex'))}"
    elif "path_separated_prefix" in match:
        text = f"{match['path_separated_prefix']}/*"
    else:
        text = "/*"
    headers = match.get("headers") or []
    if headers:
        text += " " + ",".join(f"[{item.get('name')}]" for item in headers)
    return text


def _action(route: Mapping[str, Any]) -> str:
    action = route.get("route")
    if isinstance(action, Mapping):
        if "cluster" in action:
            return str(action["cluster"])
        weighted = _dig(action, ("weighted_clusters", "clusters")) or []
        if weighted:
            total = sum(int(item.get("weight", 0)) for item in weighted) or 1
            return ",".join(
                f"{item.get('name')} {round(100 * int(item.get('weight', 0)) / total)}%"
                for item in weighted
            )
        if "cluster_header" in action:
            return f"header:{action['cluster_header']}"
    if "redirect" in route:
        return "redirect"
    if "direct_response" in route:
        return f"direct response {_dig(route, ('direct_response', 'status'))}"
    return ""


def _virtual_service(route: Mapping[str, Any]) -> str:
    """`name.namespace` of the VirtualService, from Istio's route metadata if present."""
    config = _dig(route, ("metadata", "filter_metadata", "istio", "config"))
    if not isinstance(config, str):
        return ""
    parts = config.strip("/").split("/")
    if len(parts) >= 4 and parts[-4] == "namespaces":
        return f"{parts[-1]}.{parts[-3]}"
    return config


def _domains(domains: list[Any]) -> str:
    if len(domains) <= 2:
        return ",".join(str(item) for item in domains)
    return f"{domains[0]},{domains[1]} +{len(domains) - 2} more"


def routes(config_dump: Mapping[str, Any]) -> View:
    rows: list[tuple[str, ...]] = []
    for config in resources(config_dump, "routes"):
        name = str(config.get("name") or "(inline)")
        for host in config.get("virtual_hosts") or []:
            domains = _domains(list(host.get("domains") or []))
            for route in host.get("routes") or []:
                match = _match(route.get("match") or {})
                rows.append((name, domains, match, _virtual_service(route), _action(route)))
    return View(("NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE", "CLUSTER"), rows)


def clusters(config_dump: Mapping[str, Any]) -> View:
    rows: list[tuple[str, ...]] = []
    for cluster in resources(config_dump, "clusters"):
        kind = cluster.get("type") or _dig(cluster, ("cluster_type", "name")) or "STATIC"
        lb = cluster.get("lb_policy") or "ROUND_ROBIN"
        rows.append((str(cluster.get("name", "")), str(kind), str(lb)))
    return View(("NAME", "TYPE", "LB"), rows)


def _endpoint_rows(assignment: Mapping[str, Any]) -> Iterator[tuple[str, ...]]:
    cluster = str(assignment.get("cluster_name", ""))
    for locality in assignment.get("endpoints") or []:
        for lb_endpoint in locality.get("lb_endpoints") or []:
            where = _dig(lb_endpoint, ("endpoint", "address"))
            pipe = _dig(where, ("pipe", "path"))  # a Unix socket: Envoy shows its path
            address, port = _socket(where)
            status = str(lb_endpoint.get("health_status") or "HEALTHY")
            if status == "UNKNOWN":
                status = "HEALTHY"
            yield (str(pipe) if pipe else f"{address}:{port}", status, cluster)


def endpoints(config_dump: Mapping[str, Any]) -> View:
    """EDS assignments, plus the inline `load_assignment` of clusters that have no EDS entry."""
    rows: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for assignment in resources(config_dump, "endpoints"):
        seen.add(str(assignment.get("cluster_name", "")))
        rows.extend(_endpoint_rows(assignment))
    for cluster in resources(config_dump, "clusters"):
        inline = cluster.get("load_assignment")
        if isinstance(inline, Mapping) and str(cluster.get("name", "")) not in seen:
            rows.extend(_endpoint_rows({**inline, "cluster_name": cluster.get("name", "")}))
    return View(("ENDPOINT", "STATUS", "CLUSTER"), rows)


def _pem(source: Any) -> bytes:
    if not isinstance(source, Mapping):
        return b""
    if "inline_bytes" in source:
        return base64.b64decode(str(source["inline_bytes"]))
    return str(source.get("inline_string", "")).encode()


def _first_certificate(pem: bytes) -> tuple[str, str]:
    """(serial in hex, not-after in UTC) of the first certificate in `pem`, or blanks."""
    from cryptography import x509  # noqa: PLC0415 - only this view needs it

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return "", ""
    return f"{cert.serial_number:x}", cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def secrets(config_dump: Mapping[str, Any]) -> View:
    """Certificates and trusted CAs, like `istioctl proxy-config secret` (never a key)."""
    rows: list[tuple[str, ...]] = []
    for secret in resources(config_dump, "secrets"):
        name = str(secret.get("name", ""))
        if "tls_certificate" in secret:
            pem = _pem(_dig(secret, ("tls_certificate", "certificate_chain")))
            kind = "Cert Chain"
        else:
            pem = _pem(_dig(secret, ("validation_context", "trusted_ca")))
            kind = "CA"
        serial, not_after = _first_certificate(pem)
        rows.append((name, kind, serial, not_after))
    return View(("RESOURCE NAME", "TYPE", "SERIAL NUMBER", "NOT AFTER"), rows)


VIEWS = {
    "listeners": listeners,
    "routes": routes,
    "clusters": clusters,
    "endpoints": endpoints,
    "secrets": secrets,
}
