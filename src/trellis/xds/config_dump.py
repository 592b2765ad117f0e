"""Envoy's admin `/config_dump`: the active config as `envoy.admin.v3.ConfigDump` JSON."""

from __future__ import annotations

from typing import Any

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import any_pb2, json_format, timestamp_pb2

_HCM = http_connection_manager_pb2.HttpConnectionManager


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def config_dump(bootstrap: Bootstrap, loaded_at: float) -> dict[str, Any]:
    """Bootstrap, listeners, clusters and inline route configs, as Envoy dumps them.

    Nothing secret is in a static bootstrap today; secrets (SDS) arrive with the
    security issue and must be redacted here.
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
    boot = config_dump_pb2.BootstrapConfigDump(bootstrap=bootstrap)
    boot.last_updated.CopyFrom(stamp)
    dump = config_dump_pb2.ConfigDump()
    for part in (boot, listeners, clusters, routes):
        dump.configs.append(_pack(part))
    result: dict[str, Any] = json_format.MessageToDict(dump, preserving_proto_field_name=True)
    return result
