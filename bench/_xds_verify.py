"""Checks that what the simulated proxies received is the change that was applied."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2

from _xds_config import PORT, Change, host, service_name, weight_for
from _xds_stream import CDS, EDS, RDS


def route_weights(route_config: route_pb2.RouteConfiguration, service: str) -> tuple[int, ...]:
    """The weighted-cluster weights of the first route of `service`'s virtual host."""
    wanted = f"{host(service)}:{PORT}"
    for vhost in route_config.virtual_hosts:
        if vhost.name == wanted or host(service) in vhost.domains:
            for route in vhost.routes:
                if route.route.HasField("weighted_clusters"):
                    return tuple(c.weight.value for c in route.route.weighted_clusters.clusters)
            return ()
    return ()


def check_content(change: Change, round_no: int, samples: Mapping[str, bytes]) -> list[str]:
    """Problems with the received resources (`samples`: "type|name" -> serialized resource)."""
    problems = []
    for type_url, name in change.watch:
        value = samples.get(f"{type_url}|{name}")
        if value is None:
            problems.append(f"{change.kind}: no client reported {name!r}")
            continue
        if type_url == RDS and change.kind == "vs-weight":
            weight = weight_for(round_no)
            got = route_weights(route_pb2.RouteConfiguration.FromString(value), service_name(0))
            if got != (weight, 100 - weight):
                expected = (weight, 100 - weight)
                problems.append(f"vs-weight: route {name!r} has weights {got}, expected {expected}")
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
