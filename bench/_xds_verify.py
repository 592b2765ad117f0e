"""Checks that what the simulated proxies received is the change that was applied."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

from _xds_config import (
    PORT,
    Change,
    host,
    new_service_name,
    outbound_cluster,
    service_name,
    virtual_host,
    weight_for,
)
from _xds_stream import CDS, EDS, RDS, VHDS


def find_virtual_host(
    route_config: route_pb2.RouteConfiguration, service: str
) -> route_components_pb2.VirtualHost | None:
    """`service`'s virtual host in a whole route configuration (by name or FQDN domain)."""
    for vhost in route_config.virtual_hosts:
        if vhost.name == virtual_host(service) or host(service) in vhost.domains:
            return vhost
    return None


def host_weights(vhost: route_components_pb2.VirtualHost | None) -> tuple[int, ...]:
    """The weighted-cluster weights of the virtual host's first weighted route."""
    for route in vhost.routes if vhost is not None else ():
        if route.route.HasField("weighted_clusters"):
            return tuple(c.weight.value for c in route.route.weighted_clusters.clusters)
    return ()


def _routes_problems(
    change: Change, round_no: int, vhost: route_components_pb2.VirtualHost | None, name: str
) -> list[str]:
    """What is wrong with the virtual host a change's routes watch received (None: absent)."""
    if change.kind == "vs-weight":
        expected = (weight_for(round_no), 100 - weight_for(round_no))
        got = host_weights(vhost)
        if got != expected:
            return [f"vs-weight: route {name!r} has weights {got}, expected {expected}"]
        return []
    service = new_service_name(round_no)
    if vhost is None:
        return [f"new-service: {name!r} has no virtual host for {service}"]
    problems = []
    missing = {host(service), f"{host(service)}:{PORT}"} - set(vhost.domains)
    if missing:
        problems.append(f"new-service: virtual host {vhost.name!r} lacks domains {sorted(missing)}")
    clusters = {route.route.cluster for route in vhost.routes}
    if clusters != {outbound_cluster(service)}:
        problems.append(f"new-service: virtual host {vhost.name!r} routes to {sorted(clusters)}")
    return problems


def check_content(change: Change, round_no: int, samples: Mapping[str, bytes]) -> list[str]:
    """Problems with the received resources (`samples`: "type|name" -> serialized resource)."""
    problems = []
    for type_url, name in change.watch:
        value = samples.get(f"{type_url}|{name}")
        if value is None:
            problems.append(f"{change.kind}: no client reported {name!r}")
            continue
        if type_url == RDS:
            config = route_pb2.RouteConfiguration.FromString(value)
            service = service_name(0) if change.kind == "vs-weight" else new_service_name(round_no)
            vhost = find_virtual_host(config, service)
            problems += _routes_problems(change, round_no, vhost, name)
        elif type_url == VHDS:
            vhost = route_components_pb2.VirtualHost.FromString(value)
            problems += _routes_problems(change, round_no, vhost, name)
            if vhost.name != name:
                problems.append(f"{change.kind}: virtual host {name!r} is named {vhost.name!r}")
        elif type_url == CDS:
            cluster = cluster_pb2.Cluster.FromString(value)
            if cluster.name != name:
                problems.append(f"new-service: cluster {cluster.name!r} reported as {name!r}")
        elif type_url == EDS:
            assignment = endpoint_pb2.ClusterLoadAssignment.FromString(value)
            count = sum(len(group.lb_endpoints) for group in assignment.endpoints)
            if count != 1:
                problems.append(f"new-service: endpoints of {name!r}: {count}, expected 1")
    return problems


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> tuple[dict[str, bytes], list[str]]:
    """One sample per watched resource from the client processes' `updated` reports.

    Every process must report one distinct content per resource, the same in all processes.
    """
    samples: dict[str, bytes] = {}
    problems: list[str] = []
    for report in reports:
        for key, encoded in report.get("sample", {}).items():
            if encoded is None:
                continue
            value = base64.b64decode(encoded)
            if key in samples and samples[key] != value:
                problems.append(f"client processes hold different contents of {key}")
            samples.setdefault(key, value)
        for key, distinct in report.get("distinct", {}).items():
            if distinct > 1:
                problems.append(
                    f"{distinct} different contents of {key} among one process's clients"
                )
    return samples, problems
