"""Helpers for the translation tests: load a golden case, and inline RDS/EDS into a bootstrap."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.message import Message

from trellis.api.loader import load_documents
from trellis.api.networking import WorkloadEntry
from trellis.xds.mesh import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    CaptureMode,
    MeshConfig,
    MeshTls,
    ProxyIdentity,
    Resources,
    TranslateOptions,
)
from trellis.xds.protos import bootstrap_pb2, cluster_pb2, http_connection_manager_pb2
from trellis.xds.supported import HCM_TYPE

GOLDEN = Path(__file__).parent / "golden"


@dataclass(frozen=True)
class Case:
    name: str
    config: MeshConfig
    proxy: ProxyIdentity
    options: TranslateOptions


def case_names() -> list[str]:
    return sorted(path.name for path in GOLDEN.iterdir() if (path / "config.yaml").exists())


def load_config(text: str, source: str = "config.yaml") -> MeshConfig:
    return MeshConfig.of(load_documents(text, source))


def load_case(name: str) -> Case:
    directory = GOLDEN / name
    config = load_config((directory / "config.yaml").read_text(), f"{name}/config.yaml")
    node: dict[str, Any] = yaml.safe_load((directory / "node.yaml").read_text())
    tls = node.get("mesh_tls")  # {root_ca_pem, trust_domain?}: the mesh has a CA
    if tls is not None:
        config = replace(config, tls=MeshTls(tls["root_ca_pem"].encode(), **_trust_domain(tls)))
    vips = node.get("service_vips")  # {host: address}: the control plane's virtual IPs
    if vips:
        config = replace(config, service_vips=dict(vips))
    return Case(name, config, _proxy(node["proxy"], config), _options(node.get("options") or {}))


def _trust_domain(tls: dict[str, Any]) -> dict[str, str]:
    return {"trust_domain": tls["trust_domain"]} if "trust_domain" in tls else {}


def _proxy(data: dict[str, Any], config: MeshConfig) -> ProxyIdentity:
    data = dict(data)
    reference = data.pop("workload_entry", None)
    if reference is None:
        return ProxyIdentity(**data)
    namespace, name = reference.split("/")
    entry = next(
        item
        for item in config.workload_entries
        if (item.metadata.namespace, item.metadata.name) == (namespace, name)
    )
    assert isinstance(entry, WorkloadEntry)
    return ProxyIdentity.from_workload_entry(data["node_id"], entry)


def _options(data: dict[str, Any]) -> TranslateOptions:
    data = dict(data)
    if "capture_mode" in data:
        data["capture_mode"] = CaptureMode(data["capture_mode"])
    if "app_ports" in data:
        data["app_ports"] = {int(key): int(value) for key, value in data["app_ports"].items()}
    return TranslateOptions(**data)


def inline_bootstrap(resources: Resources) -> bootstrap_pb2.Bootstrap:
    """A static bootstrap equivalent to the dynamic resources, as the proxy runs them.

    RDS becomes each HCM's inline `route_config`, EDS clusters become STATIC
    clusters with the ClusterLoadAssignment inline. Nothing else changes.
    """
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = "test"
    routes = resources[ROUTE_TYPE]
    for listener in resources[LISTENER_TYPE].values():
        copied = copy.deepcopy(listener)
        for chain in copied.filter_chains:  # type: ignore[attr-defined]
            for network_filter in chain.filters:
                if network_filter.typed_config.TypeName() != HCM_TYPE:
                    continue
                hcm = http_connection_manager_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                if hcm.WhichOneof("route_specifier") == "rds":
                    hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
                    network_filter.typed_config.Pack(hcm)
        bootstrap.static_resources.listeners.append(copied)
    for cluster in resources[CLUSTER_TYPE].values():
        bootstrap.static_resources.clusters.append(_static(cluster, resources[ENDPOINT_TYPE]))
    return bootstrap


def _static(cluster: Message, endpoints: dict[str, Message]) -> Any:
    copied = copy.deepcopy(cluster)
    assert isinstance(copied, cluster_pb2.Cluster)
    if copied.type == cluster_pb2.Cluster.EDS:
        name = copied.eds_cluster_config.service_name
        copied.ClearField("eds_cluster_config")
        copied.type = cluster_pb2.Cluster.STATIC
        copied.load_assignment.CopyFrom(endpoints[name])
    return copied
