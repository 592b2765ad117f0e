"""Compile an Envoy v3 `Bootstrap` into the proxy's `ProxyConfig`.

Steps: reject fields Trellis does not implement (`check_supported`), convert
each part with Envoy's defaults, then check what spans parts: cluster
references, duplicate listener names, listener and admin ports that overlap.

Choices where Envoy leaves room:
- `allow_absolute_url` defaults to true, as in Envoy since 1.12 (the explicit
  HTTP_PROXY mode depends on it).
- `admin.access_log*` is rejected, not ignored; `Listener.stat_prefix` is
  accepted but has no compiled counterpart.
- An unnamed listener is named `<host>_<port>`.
- Addresses must be IP literals (Envoy's rule for listeners and STATIC
  clusters) and every port must be 1-65535.
- Domains are lower-cased; JSON access-log keys are sorted.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from trellis.core.addresses import SocketAddress
from trellis.core.config import AdminConfig, Cluster, HttpConnectionManager, Listener, ProxyConfig
from trellis.core.tls import NamedSecret
from trellis.xds.bootstrap import load_bootstrap
from trellis.xds.compile_cluster import clusters as compile_clusters
from trellis.xds.compile_dynamic import ads_config
from trellis.xds.compile_listener import listener as compile_listener
from trellis.xds.compile_tls import secret
from trellis.xds.convert import socket_address
from trellis.xds.node import node_identity
from trellis.xds.supported import DOWNSTREAM_CONNECTIONS_NAME, check_supported
from trellis.xds.where import Where

__all__ = ["addresses_overlap", "compile_bootstrap", "compile_file", "node_identity"]


def compile_bootstrap(bootstrap: bootstrap_pb2.Bootstrap, source: str) -> ProxyConfig:
    """Validate and convert a bootstrap; raises `ConfigError` naming file and field."""
    check_supported(bootstrap, source)
    where = Where(source)
    static = where.at("static_resources")
    clusters = compile_clusters(bootstrap.static_resources.clusters, static.at("clusters"))
    ads = ads_config(bootstrap, clusters, where)
    # With CDS, listeners may name clusters that arrive later.
    cluster_names = None if ads is not None and ads.cds else frozenset(c.name for c in clusters)
    listeners = _listeners(
        bootstrap.static_resources.listeners, cluster_names, static.at("listeners")
    )
    if ads is None:
        _check_static_only(listeners, clusters, static)
    admin = None
    if bootstrap.HasField("admin"):
        admin = _admin(bootstrap.admin, where.at("admin"), listeners)
    return ProxyConfig(
        node=node_identity(bootstrap.node, where.at("node")),
        listeners=listeners,
        clusters=clusters,
        admin=admin,
        max_downstream_connections=_max_connections(
            bootstrap.overload_manager, where.at("overload_manager")
        ),
        ads=ads,
        secrets=_static_secrets(bootstrap.static_resources.secrets, static.at("secrets")),
    )


def _static_secrets(secrets: Sequence[secret_pb2.Secret], where: Where) -> tuple[NamedSecret, ...]:
    result: dict[str, NamedSecret] = {}
    for i, item in enumerate(secrets):
        named = secret(item, where.item(i))
        if named[0] in result:
            raise where.item(i).at("name").error(f"secret {named[0]!r} is defined twice")
        result[named[0]] = named
    return tuple(result.values())


def _check_static_only(
    listeners: Sequence[Listener], clusters: Sequence[Cluster], where: Where
) -> None:
    """Without `dynamic_resources` nothing would ever deliver RDS routes or EDS endpoints."""
    for i, listener in enumerate(listeners):
        if any(
            isinstance(chain.filter, HttpConnectionManager) and chain.filter.rds_name
            for chain in listener.chains
        ):
            raise (
                where.at("listeners")
                .item(i)
                .error(
                    f"listener {listener.name!r} takes routes from RDS, but the bootstrap has no "
                    "dynamic_resources.ads_config"
                )
            )
    for i, cluster in enumerate(clusters):
        if cluster.eds_name is not None:
            raise (
                where.at("clusters")
                .item(i)
                .error(
                    f"cluster {cluster.name!r} is of type EDS, but the bootstrap has no "
                    "dynamic_resources.ads_config"
                )
            )


def _max_connections(manager: overload_pb2.OverloadManager, where: Where) -> int | None:
    """The proxy-wide connection limit of Envoy's downstream-connections resource monitor."""
    limit: int | None = None
    for i, monitor in enumerate(manager.resource_monitors):
        at = where.at("resource_monitors").item(i)
        if monitor.name != DOWNSTREAM_CONNECTIONS_NAME:
            raise at.at("name").error(
                f"unsupported resource monitor {monitor.name!r}; "
                f"only {DOWNSTREAM_CONNECTIONS_NAME} is implemented"
            )
        # Imported here: only a bootstrap with this monitor needs its message.
        from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: PLC0415
            downstream_connections_pb2,
        )

        config = downstream_connections_pb2.DownstreamConnectionsConfig()
        monitor.typed_config.Unpack(config)
        if config.max_active_downstream_connections <= 0:
            raise at.at("typed_config.max_active_downstream_connections").error("must be > 0")
        limit = config.max_active_downstream_connections
    return limit


def compile_file(path: str | os.PathLike[str]) -> tuple[bootstrap_pb2.Bootstrap, ProxyConfig]:
    """Load a bootstrap file and compile it."""
    bootstrap = load_bootstrap(path)
    return bootstrap, compile_bootstrap(bootstrap, os.fspath(path))


def _listeners(
    configs: Sequence[listener_pb2.Listener], clusters: frozenset[str] | None, where: Where
) -> tuple[Listener, ...]:
    names: dict[str, str] = {}
    result: list[tuple[Listener, str]] = []
    for i, config in enumerate(configs):
        here = where.item(i)
        compiled = compile_listener(config, clusters, here)
        if compiled.name in names:
            raise here.at("name").error(
                f"listener {compiled.name!r} is already defined at {names[compiled.name]}"
            )
        names[compiled.name] = here.path
        for other, other_path in result:
            if addresses_overlap(compiled.address, other.address):
                raise here.at("address").error(
                    f"{compiled.address} overlaps the address of {other_path}"
                )
        result.append((compiled, here.path))
    return tuple(compiled for compiled, _ in result)


def _admin(admin: bootstrap_pb2.Admin, where: Where, listeners: Sequence[Listener]) -> AdminConfig:
    if not admin.HasField("address"):
        raise where.at("address").error("address is required")
    address = socket_address(admin.address, where.at("address"))
    for listener in listeners:
        if addresses_overlap(address, listener.address):
            raise where.at("address").error(
                f"{address} overlaps the address of listener {listener.name!r}"
            )
    return AdminConfig(address)


def addresses_overlap(a: SocketAddress, b: SocketAddress) -> bool:
    """True if binding both addresses would conflict (same port, same or wildcard host)."""
    if a.port != b.port:
        return False
    ip_a, ip_b = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    if ip_a == ip_b:
        return True
    if not (ip_a.is_unspecified or ip_b.is_unspecified):
        return False
    # "::" may also accept IPv4 (dual stack); "0.0.0.0" covers IPv4 only.
    return (
        ip_a.version == ip_b.version
        or (ip_a.is_unspecified and ip_a.version == 6)
        or (ip_b.is_unspecified and ip_b.version == 6)
    )
