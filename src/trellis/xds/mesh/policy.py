"""A DestinationRule's traffic policy for one cluster, merged as Istio merges it.

Order, each later level replacing `loadBalancer`, `connectionPool`,
`outlierDetection` and `tls` as a whole where it sets them: the rule's
policy, its `portLevelSettings` for the port, the subset's policy, the
subset's `portLevelSettings` for the port (Istio's `MergeTrafficPolicy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from trellis.api.networking import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    LoadBalancerSettings,
    OutlierDetection,
    PortTrafficPolicy,
    TrafficPolicy,
)


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The parts of a traffic policy that apply to one cluster (None: Istio's default)."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    path: str = ""
    """Where the connection pool came from, e.g. `spec.subsets[0].trafficPolicy`."""


NO_POLICY = EffectivePolicy()
T = TypeVar("T")


def _apply(
    current: EffectivePolicy, layer: TrafficPolicy | PortTrafficPolicy | None, path: str
) -> EffectivePolicy:
    if layer is None:
        return current
    pool = layer.connection_pool
    return EffectivePolicy(
        load_balancer=_first(layer.load_balancer, current.load_balancer),
        connection_pool=_first(pool, current.connection_pool),
        outlier_detection=_first(layer.outlier_detection, current.outlier_detection),
        tls=_first(layer.tls, current.tls),
        path=path if pool is not None else current.path,
    )


def _first(value: T | None, fallback: T | None) -> T | None:
    return value if value is not None else fallback


def effective_policy(
    rule_policy: TrafficPolicy | None,
    subset_policy: TrafficPolicy | None,
    port: int,
    subset_path: str = "",
) -> EffectivePolicy:
    """Merge a rule's and (optionally) a subset's policy for `port`."""
    merged = NO_POLICY
    for policy, path in ((rule_policy, "spec.trafficPolicy"), (subset_policy, subset_path)):
        if policy is None:
            continue
        merged = _apply(merged, policy, path)
        for i, item in enumerate(policy.port_level_settings):
            if item.port.number == port:
                merged = _apply(merged, item, f"{path}.portLevelSettings[{i}]")
    return merged
