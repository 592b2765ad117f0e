"""Virtual Host Discovery (VHDS): a route configuration's virtual hosts as resources.

With VHDS a `RouteConfiguration` arrives without its virtual hosts and with a
`vhds` config source instead; each virtual host is then a resource of its own
(type `envoy.config.route.v3.VirtualHost`), so a change to one service's routes
sends that one virtual host to every proxy rather than the whole table.

Facts followed (Envoy's VHDS documentation and its client):
- VHDS runs over incremental xDS only.
- A virtual host's resource name is `<route configuration name>/<virtual host
  name>`, read from the right (a route configuration's name may contain `/`,
  a host may not); the `VirtualHost.name` inside equals the resource name, so a
  removal names the virtual host to drop.
- The client subscribes with the route configuration's name and receives every
  virtual host whose resource name falls under it (namespace matching).

Trellis serves VHDS only to delta clients that list `VHDS_CLIENT_FEATURE` in
their node's `client_features`; everyone else keeps whole route configurations.
"""

from __future__ import annotations

from collections.abc import Collection

from envoy.config.core.v3 import config_source_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

VIRTUAL_HOST_TYPE = "type.googleapis.com/envoy.config.route.v3.VirtualHost"
VHDS_CLIENT_FEATURE = "io.trellis.vhds"


def resource_name(route_config: str, virtual_host: str) -> str:
    """The VHDS resource name of a route configuration's virtual host."""
    return f"{route_config}/{virtual_host}"


def route_config_of(name: str) -> str:
    """The route configuration a VHDS resource name belongs to ('' when it has no `/`)."""
    return name.rpartition("/")[0]


def covered(name: str, names: Collection[str], *, by_route_config: bool) -> bool:
    """Whether subscribing to `names` covers the resource `name`: VHDS subscribes by
    route configuration (`by_route_config`), other types by the resource's name."""
    return (route_config_of(name) if by_route_config else name) in names


def split(
    config: route_pb2.RouteConfiguration,
) -> tuple[route_pb2.RouteConfiguration, list[route_components_pb2.VirtualHost]]:
    """The route configuration without its virtual hosts and with a `vhds` source (ADS),
    and its virtual hosts named as VHDS resources."""
    hosts = []
    for host in config.virtual_hosts:
        named = route_components_pb2.VirtualHost()
        named.CopyFrom(host)
        named.name = resource_name(config.name, host.name)
        hosts.append(named)
    slim = route_pb2.RouteConfiguration()
    slim.CopyFrom(config)
    slim.ClearField("virtual_hosts")
    source = slim.vhds.config_source
    source.ads.SetInParent()
    source.resource_api_version = config_source_pb2.ApiVersion.V3
    return slim, hosts
