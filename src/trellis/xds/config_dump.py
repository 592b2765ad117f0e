"""Envoy's admin `/config_dump`: the active config as `envoy.admin.v3.ConfigDump` JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import any_pb2, json_format, timestamp_pb2

from trellis.xds.compile_dynamic import ROUTE_TYPE
from trellis.xds.secret_dump import REDACTED, CertificateView, redacted, secrets_config_dump
from trellis.xds.vhds import VIRTUAL_HOST_TYPE, route_config_of

_HCM = http_connection_manager_pb2.HttpConnectionManager


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class DynamicState(Protocol):
    """What the proxy holds of one xDS resource type."""

    version: str
    resources: dict[str, Any]
    last_updated: float
    rejected_version: str
    rejected_reason: str


@dataclass(slots=True)
class _Shown:
    version: str
    resources: dict[str, Any]
    last_updated: float
    rejected_version: str
    rejected_reason: str


def _with_vhds(dynamic: Mapping[str, DynamicState]) -> Mapping[str, DynamicState]:
    """Route configurations that take virtual hosts over VHDS shown with them (as
    Envoy dumps them: the route configuration in use), not the hosts on their own.
    A rejected VHDS update shows on the route configurations when RDS has none."""
    hosts, routes = dynamic.get(VIRTUAL_HOST_TYPE), dynamic.get(ROUTE_TYPE)
    if hosts is None or routes is None:
        return dynamic
    under: dict[str, list[Any]] = {}
    for name in sorted(hosts.resources):
        under.setdefault(route_config_of(name), []).append(hosts.resources[name])
    shown: dict[str, Any] = {}
    for name, config in routes.resources.items():
        shown[name] = config
        if config.HasField("vhds") and name in under:
            shown[name] = _copy(config)
            shown[name].virtual_hosts.extend(under[name])
    failed = routes if routes.rejected_reason else hosts
    merged = _Shown(
        routes.version,
        shown,
        routes.last_updated,
        failed.rejected_version,
        failed.rejected_reason,
    )
    return {**dynamic, ROUTE_TYPE: merged}


def _copy(config: route_pb2.RouteConfiguration) -> route_pb2.RouteConfiguration:
    copy = route_pb2.RouteConfiguration()
    copy.CopyFrom(config)
    return copy


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def config_dump(
    bootstrap: Bootstrap,
    loaded_at: float,
    dynamic: Mapping[str, DynamicState] | None = None,
    *,
    secrets: Sequence[CertificateView] = (),
) -> dict[str, Any]:
    """Bootstrap, static and dynamic listeners, clusters, routes and endpoints, as Envoy
    dumps them (`envoy.admin.v3.ConfigDump`), with the version of each xDS resource,
    and the proxy's certificates (`secrets`) as a `SecretsConfigDump`, keys redacted.
    """
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(loaded_at * 1e9))
    listeners = config_dump_shared_pb2.ListenersConfigDump()
    clusters = config_dump_shared_pb2.ClustersConfigDump()
    routes = config_dump_shared_pb2.RoutesConfigDump()
    for listener in bootstrap.static_resources.listeners:
        entry = listeners.static_listeners.add(listener=_pack(listener))
        entry.last_updated.CopyFrom(stamp)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                hcm = _HCM()
                if network_filter.typed_config.Unpack(hcm) and hcm.HasField("route_config"):
                    route = routes.static_route_configs.add(route_config=_pack(hcm.route_config))
                    route.last_updated.CopyFrom(stamp)
    for cluster in bootstrap.static_resources.clusters:
        entry_c = clusters.static_clusters.add(cluster=_pack(cluster))
        entry_c.last_updated.CopyFrom(stamp)
    endpoints = config_dump_shared_pb2.EndpointsConfigDump()
    secrets_dump = secrets_config_dump(secrets)
    for secret in bootstrap.static_resources.secrets:
        static = secrets_dump.static_secrets.add(name=secret.name)
        static.secret.Pack(redacted(secret))
        static.last_updated.CopyFrom(stamp)
    for type_url, state in _with_vhds(dynamic or {}).items():
        _add_dynamic(type_url, state, listeners, clusters, routes, endpoints, secrets_dump)
    shown = Bootstrap()
    shown.CopyFrom(bootstrap)
    for secret in shown.static_resources.secrets:
        if secret.HasField("tls_certificate"):
            secret.tls_certificate.private_key.inline_bytes = REDACTED
    boot = config_dump_pb2.BootstrapConfigDump(bootstrap=shown)
    boot.last_updated.CopyFrom(stamp)
    dump = config_dump_pb2.ConfigDump()
    for part in (boot, listeners, clusters, routes, endpoints):
        dump.configs.append(_pack(part))
    if secrets_dump.ListFields():
        dump.configs.append(_pack(secrets_dump))
    result: dict[str, Any] = json_format.MessageToDict(dump, preserving_proto_field_name=True)
    return result


def _add_dynamic(
    type_url: str,
    state: DynamicState,
    listeners: config_dump_shared_pb2.ListenersConfigDump,
    clusters: config_dump_shared_pb2.ClustersConfigDump,
    routes: config_dump_shared_pb2.RoutesConfigDump,
    endpoints: config_dump_shared_pb2.EndpointsConfigDump,
    secrets: config_dump_pb2.SecretsConfigDump,
) -> None:
    stamp = _stamp(state.last_updated)
    kind = type_url.rsplit(".", 1)[-1]
    failure = None
    if state.rejected_reason:
        failure = config_dump_shared_pb2.UpdateFailureState(
            details=state.rejected_reason, version_info=state.rejected_version
        )
    version = state.version
    for name in sorted(state.resources):
        packed = _pack(state.resources[name])
        entry: Any
        if kind == "Listener":
            entry = listeners.dynamic_listeners.add(name=name)
            entry.active_state.version_info = version
            entry.active_state.listener.CopyFrom(packed)
            entry.active_state.last_updated.CopyFrom(stamp)
        elif kind == "Cluster":
            entry = clusters.dynamic_active_clusters.add(version_info=version, cluster=packed)
            entry.last_updated.CopyFrom(stamp)
        elif kind == "RouteConfiguration":
            entry = routes.dynamic_route_configs.add(version_info=version, route_config=packed)
            entry.last_updated.CopyFrom(stamp)
        elif kind == "ClusterLoadAssignment":
            entry = endpoints.dynamic_endpoint_configs.add(
                version_info=version, endpoint_config=packed
            )
            entry.last_updated.CopyFrom(stamp)
        elif kind == "Secret":
            entry = secrets.dynamic_active_secrets.add(name=name, version_info=version)
            entry.secret.Pack(redacted(state.resources[name]))
            entry.last_updated.CopyFrom(stamp)
        else:
            continue
        if failure is not None:  # the last update of this type was rejected (NACKed)
            entry.error_state.CopyFrom(failure)
    if kind == "Listener":
        listeners.version_info = version
    elif kind == "Cluster":
        clusters.version_info = version
