"""The client side of an ADS stream (state of the world), without I/O.

The runtime feeds each `DiscoveryResponse` in and sends the requests this
returns: an ACK (the response's version and nonce) when the update was applied,
a NACK (the last accepted version, the nonce and an error) when it was not, and
a new subscription when the set of wanted routes or endpoints changes. Order of
requests follows Envoy: clusters before endpoints, listeners before routes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from trellis.errors import ConfigError
from trellis.xds.compile_dynamic import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)

_MESSAGES: Mapping[str, type[Message]] = {
    LISTENER_TYPE: listener_pb2.Listener,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
    SECRET_TYPE: secret_pb2.Secret,
}
_NAME_FIELD = {ENDPOINT_TYPE: "cluster_name"}
WILDCARD_TYPES = (CLUSTER_TYPE, LISTENER_TYPE)  # asked for all; the others by name
_INVALID_ARGUMENT = 3


@dataclass(frozen=True, slots=True)
class Update:
    """One decoded response: every resource of its type (state of the world)."""

    type_url: str
    version: str
    nonce: str
    resources: Mapping[str, Message]


@dataclass(slots=True)
class _TypeState:
    accepted_version: str = ""
    nonce: str = ""
    names: frozenset[str] = frozenset()
    subscribed: bool = False


class AdsClientState:
    """Versions, nonces and subscriptions of one proxy's ADS stream."""

    def __init__(self, node: base_pb2.Node, types: Iterable[str]) -> None:
        self._node = node
        self._types = {type_url: _TypeState() for type_url in types}

    def start(self) -> list[discovery_pb2.DiscoveryRequest]:
        """The first requests of a (re)connected stream: wildcard types, then named ones."""
        requests = []
        for type_url in (SECRET_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE):
            state = self._types.get(type_url)
            if state is None:
                continue
            state.nonce = ""
            if type_url in WILDCARD_TYPES or state.names:
                state.subscribed = True
                requests.append(self._request(type_url, state, state.accepted_version))
        return requests

    def decode(self, response: discovery_pb2.DiscoveryResponse) -> Update:
        """The resources of a response, by name; raises ConfigError for undecodable ones."""
        message_type = _MESSAGES.get(response.type_url)
        if message_type is None or response.type_url not in self._types:
            raise ConfigError(f"unexpected resource type {response.type_url}")
        name_field = _NAME_FIELD.get(response.type_url, "name")
        resources: dict[str, Message] = {}
        for i, packed in enumerate(response.resources):
            message = message_type()
            if not packed.Unpack(message):
                raise ConfigError(
                    f"resources[{i}]: is a {packed.TypeName()}, not {response.type_url}"
                )
            name = getattr(message, name_field)
            if not name or name in resources:
                raise ConfigError(f"resources[{i}]: missing or duplicate name {name!r}")
            resources[name] = message
        return Update(response.type_url, response.version_info, response.nonce, resources)

    def ack(self, update: Update) -> discovery_pb2.DiscoveryRequest:
        state = self._types[update.type_url]
        state.accepted_version = update.version
        state.nonce = update.nonce
        return self._request(update.type_url, state, update.version)

    def nack(self, type_url: str, nonce: str, reason: str) -> discovery_pb2.DiscoveryRequest:
        state = self._types[type_url]
        state.nonce = nonce
        request = self._request(type_url, state, state.accepted_version)
        request.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=reason))
        return request

    def want(self, type_url: str, names: Iterable[str]) -> discovery_pb2.DiscoveryRequest | None:
        """Subscribe to exactly `names` of a named type; None when nothing changed."""
        state = self._types.get(type_url)
        wanted = frozenset(names)
        if state is None or (wanted == state.names and (state.subscribed or not wanted)):
            return None
        state.names = wanted
        state.subscribed = True
        return self._request(type_url, state, state.accepted_version)

    def names(self, type_url: str) -> frozenset[str]:
        """The subscribed names of a named type (RDS, EDS)."""
        state = self._types.get(type_url)
        return state.names if state is not None else frozenset()

    def wants_any(self, type_url: str) -> bool:
        """Whether some resource of a named type (RDS, EDS) is subscribed."""
        state = self._types.get(type_url)
        return state is not None and bool(state.names)

    def accepted_version(self, type_url: str) -> str:
        state = self._types.get(type_url)
        return state.accepted_version if state is not None else ""

    def _request(
        self, type_url: str, state: _TypeState, version: str
    ) -> discovery_pb2.DiscoveryRequest:
        # The node goes with every request, as Envoy does by default.
        return discovery_pb2.DiscoveryRequest(
            node=self._node,
            type_url=type_url,
            version_info=version,
            response_nonce=state.nonce,
            resource_names=sorted(state.names) if type_url not in WILDCARD_TYPES else [],
        )
