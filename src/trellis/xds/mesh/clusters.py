"""Clusters (CDS): one per service port and DestinationRule subset, one per inbound port.

Outbound clusters are EDS clusters fed over ADS and named like Istio's. Istio's
defaults where the DestinationRule is silent: connect timeout 10s, LEAST_REQUEST,
every circuit-breaker limit 2^32-1 (`getDefaultCircuitBreakerThresholds`).

`outlierDetection` is carried the way Istio writes it (success-rate ejection
off, 100% enforcement of the consecutive-error rules, `minHealthPercent` as
the panic threshold). `tls` and Istio's auto mTLS are applied by
`trellis.xds.mesh.mtls` when the mesh has a CA (`MeshConfig.tls`); without
one, clusters are plaintext and ISTIO_MUTUAL is refused (`carried`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import outlier_detection_pb2
from envoy.type.v3 import percent_pb2

from trellis.api.networking import DestinationRule, OutlierDetection, ServicePort, SimpleLB, Subset
from trellis.core.labels import split_service
from trellis.core.peer_metadata import UNKNOWN
from trellis.xds.mesh.build import MAX_UINT32, ads_source, duration, pack, socket_address, u32
from trellis.xds.mesh.endpoints import load_assignment
from trellis.xds.mesh.errors import unsupported
from trellis.xds.mesh.mtls import AutoMtls, sni
from trellis.xds.mesh.names import inbound_cluster, outbound_cluster
from trellis.xds.mesh.policy import EffectivePolicy, effective_policy
from trellis.xds.mesh.registry import Instance, Registry, Service, subset_instances
from trellis.xds.protos import cluster_pb2, http_protocol_options_pb2

DEFAULT_CONNECT_TIMEOUT = 10.0  # Istio's MeshConfig.connectTimeout
_LB_POLICIES = {
    SimpleLB.UNSPECIFIED: cluster_pb2.Cluster.LEAST_REQUEST,
    SimpleLB.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    SimpleLB.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    SimpleLB.RANDOM: cluster_pb2.Cluster.RANDOM,
}


@dataclass(frozen=True, slots=True)
class OutboundTarget:
    """One outbound cluster: a service port, or one DestinationRule subset of it."""

    name: str
    policy: EffectivePolicy
    rule: DestinationRule | None
    service: Service
    port: ServicePort
    subset: Subset | None = None


def outbound_targets(registry: Registry) -> Iterator[OutboundTarget]:
    """`outbound|PORT||HOST` of every service port, plus one per subset."""
    for service in registry.services:
        rule = registry.destination_rule(service)
        rule_policy = rule.spec.traffic_policy if rule is not None else None
        for port in service.ports:
            policy = effective_policy(rule_policy, None, port.number)
            name = outbound_cluster(service.host, port.number)
            yield OutboundTarget(name, policy, rule, service, port)
            if rule is None:
                continue
            for i, subset in enumerate(rule.spec.subsets):
                path = f"spec.subsets[{i}].trafficPolicy"
                policy = effective_policy(rule_policy, subset.traffic_policy, port.number, path)
                name = outbound_cluster(service.host, port.number, subset.name)
                yield OutboundTarget(name, policy, rule, service, port, subset)


def outbound_policies(
    registry: Registry,
) -> Iterator[tuple[str, EffectivePolicy, DestinationRule | None]]:
    """(cluster name, its policy, its DestinationRule) of every `outbound_targets` cluster."""
    for target in outbound_targets(registry):
        yield target.name, target.policy, target.rule


def outbound_clusters(
    registry: Registry, mtls: AutoMtls | None = None
) -> Iterator[cluster_pb2.Cluster]:
    """The sidecar's outbound clusters (see `outbound_targets`); with `mtls`, secured
    as the DestinationRule's `tls` or auto mTLS says."""
    by_port: dict[int, tuple[Instance, ...]] = {}
    service_endpoints: list[Instance] = []
    current: Service | None = None
    for target in outbound_targets(registry):
        cluster = _eds_cluster(target.name, target.policy, target.rule)
        if mtls is not None:
            service = target.service
            if service is not current:
                current = service
                by_port = {port.number: registry.instances(service, port) for port in service.ports}
                service_endpoints = [item for items in by_port.values() for item in items]
            endpoints = by_port[target.port.number]
            subset_name = ""
            if target.subset is not None:
                subset_name = target.subset.name
                endpoints = subset_instances(endpoints, target.subset.labels)
            mtls.secure_cluster(
                cluster,
                target.policy.tls,
                sni(service.host, target.port.number, subset_name),
                endpoints,
                service_endpoints,
            )
        yield cluster


def eds_cluster(
    name: str, policy: EffectivePolicy, lb_policies: Mapping[SimpleLB, int]
) -> cluster_pb2.Cluster:
    """An EDS cluster over ADS named `name`, balancing as the policy's `loadBalancer` says."""
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ads_source(), service_name=name
        ),
    )
    simple = policy.load_balancer.simple if policy.load_balancer else SimpleLB.UNSPECIFIED
    cluster.lb_policy = lb_policies[simple]
    return cluster


def _eds_cluster(
    name: str, policy: EffectivePolicy, rule: DestinationRule | None
) -> cluster_pb2.Cluster:
    cluster = eds_cluster(name, policy, _LB_POLICIES)
    _apply_connection_pool(cluster, policy, rule)
    if policy.outlier_detection is not None:
        _apply_outlier_detection(cluster, policy.outlier_detection)
    return cluster


def _apply_connection_pool(
    cluster: cluster_pb2.Cluster, policy: EffectivePolicy, rule: DestinationRule | None
) -> None:
    pool = policy.connection_pool
    tcp = pool.tcp if pool is not None else None
    http = pool.http if pool is not None else None
    cluster.connect_timeout.CopyFrom(
        duration(tcp.connect_timeout if tcp is not None else DEFAULT_CONNECT_TIMEOUT)
    )
    thresholds = cluster.circuit_breakers.thresholds.add()
    thresholds.max_connections.value = tcp.max_connections if tcp is not None else MAX_UINT32
    thresholds.max_pending_requests.value = (
        http.http1_max_pending_requests if http is not None else MAX_UINT32
    )
    thresholds.max_requests.value = http.http2_max_requests if http is not None else MAX_UINT32
    thresholds.max_retries.value = http.max_retries if http is not None else MAX_UINT32
    if http is None:
        return
    if http.max_requests_per_connection and rule is not None:
        raise unsupported(
            rule,
            f"{policy.path}.connectionPool.http.maxRequestsPerConnection",
            "not supported by the Trellis proxy yet",
        )
    if "idle_timeout" in http.model_fields_set:
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.common_http_protocol_options.idle_timeout.CopyFrom(duration(http.idle_timeout))
        key = options.DESCRIPTOR.full_name
        cluster.typed_extension_protocol_options[key].CopyFrom(pack(options))


def _apply_outlier_detection(cluster: cluster_pb2.Cluster, outlier: OutlierDetection) -> None:
    five = outlier.consecutive_5xx_errors
    gateway = outlier.consecutive_gateway_errors
    cluster.outlier_detection.CopyFrom(
        outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=u32(five),
            enforcing_consecutive_5xx=u32(100 if five else 0),
            consecutive_gateway_failure=u32(gateway),
            enforcing_consecutive_gateway_failure=u32(100 if gateway else 0),
            enforcing_success_rate=u32(0),
            interval=duration(outlier.interval),
            base_ejection_time=duration(outlier.base_ejection_time),
            max_ejection_percent=u32(outlier.max_ejection_percent),
        )
    )
    cluster.common_lb_config.healthy_panic_threshold.CopyFrom(
        percent_pb2.Percent(value=float(outlier.min_health_percent))
    )


def _service_metadata(host: str) -> dict[str, str]:
    """{host, name, namespace} of a service host, as Istio writes it."""
    name, namespace = split_service(host)
    return (
        {"host": host}
        if namespace == UNKNOWN
        else {"host": host, "name": name, "namespace": namespace}
    )


def inbound_cluster_for(
    port: int, app_address: str, app_port: int, services: Sequence[str] = ()
) -> cluster_pb2.Cluster:
    """`inbound|PORT||`: STATIC, to the application on `app_address:app_port`.

    `services`, the hosts reaching the workload on `port`, go into Istio's
    `istio.services` metadata, where the proxy finds the destination service of an
    inbound TCP connection (an HTTP request names it in its authority).
    """
    name = inbound_cluster(port)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(DEFAULT_CONNECT_TIMEOUT),
        load_assignment=load_assignment(name, [(socket_address(app_address, app_port), 1)]),
    )
    if services:
        cluster.metadata.filter_metadata["istio"].update(
            {"services": [_service_metadata(host) for host in services]}
        )
    thresholds = cluster.circuit_breakers.thresholds.add()
    for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        getattr(thresholds, field).value = MAX_UINT32
    return cluster
