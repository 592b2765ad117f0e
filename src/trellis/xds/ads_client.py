"""The client side of an ADS stream, without I/O: what both protocols share, and
state of the world (`StreamAggregatedResources`).

The runtime feeds each response in and sends the requests this returns: an ACK
(the response's version and nonce) when the update was applied, a NACK (the
last accepted version, the nonce and an error) when it was not, and a new
subscription when the set of wanted routes or endpoints changes. Order of
requests follows Envoy: clusters before endpoints, listeners before routes.

`decode` always hands the runtime the complete view of the type once the
response is applied, so applying config is the same for both protocols;
`ads_delta_client.DeltaAdsClientState` is the incremental counterpart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
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
from trellis.xds.vhds import VIRTUAL_HOST_TYPE

_MESSAGES: Mapping[str, type[Message]] = {
    LISTENER_TYPE: listener_pb2.Listener,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
    SECRET_TYPE: secret_pb2.Secret,
    VIRTUAL_HOST_TYPE: route_components_pb2.VirtualHost,  # VHDS, delta only
}
_NAME_FIELD = {ENDPOINT_TYPE: "cluster_name"}
WILDCARD_TYPES = (CLUSTER_TYPE, LISTENER_TYPE)  # asked for all; the others by name
# Envoy's make-before-break order: secrets and clusters before the endpoints,
# listeners and routes that use them; a route configuration before its virtual hosts.
REQUEST_ORDER = (
    SECRET_TYPE,
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    VIRTUAL_HOST_TYPE,
)
_INVALID_ARGUMENT = 3
SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
Request: TypeAlias = discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest
Response: TypeAlias = discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse


@dataclass(frozen=True, slots=True)
class Update:
    """One decoded response: every resource of its type the proxy holds once it is
    applied (whatever the protocol sent), and with delta xDS their versions."""

    type_url: str
    version: str
    nonce: str
    resources: Mapping[str, Message]
    versions: Mapping[str, str] = field(default_factory=dict)


class AdsProtocol(Protocol):
    """One proxy's side of an ADS stream, as the runtime drives it."""

    method: str  # the gRPC method's path
    response_type: type[Response]

    def start(self) -> list[Request]:
        """The first requests of a (re)connected stream."""
        ...

    def decode(self, response: Response) -> Update:
        """The complete view a response leads to; ConfigError when it cannot be read."""
        ...

    def ack(self, update: Update) -> Request: ...

    def nack(self, type_url: str, nonce: str, reason: str) -> Request: ...

    def want(self, type_url: str, names: Iterable[str]) -> Request | None:
        """Subscribe to exactly `names` of a named type; None when nothing changed."""
        ...

    def names(self, type_url: str) -> frozenset[str]: ...

    def wants_any(self, type_url: str) -> bool: ...


def message_type(type_url: str, known: Iterable[str]) -> type[Message]:
    """The message class of a subscribed type; ConfigError for any other."""
    message_class = _MESSAGES.get(type_url)
    if message_class is None or type_url not in known:
        raise ConfigError(f"unexpected resource type {type_url}")
    return message_class


def unpack(packed: any_pb2.Any, message_class: type[Message], type_url: str, at: str) -> Message:
    """The resource in `packed`; a ConfigError naming `at` when it holds another type."""
    message = message_class()
    if not packed.Unpack(message):
        raise ConfigError(f"{at}: is a {packed.TypeName()}, not {type_url}")
    return message


def resource_name(type_url: str, message: Message) -> str:
    name: str = getattr(message, _NAME_FIELD.get(type_url, "name"))
    return name


def error_status(reason: str) -> status_pb2.Status:
    """The `error_detail` of a NACK."""
    return status_pb2.Status(code=_INVALID_ARGUMENT, message=reason)


@dataclass(slots=True)
class _TypeState:
    accepted_version: str = ""
    nonce: str = ""
    names: frozenset[str] = frozenset()
    subscribed: bool = False
    held: Mapping[str, Message] = field(default_factory=dict)  # as last accepted


class AdsClientState:
    """Versions, nonces and subscriptions of one proxy's state-of-the-world ADS stream."""

    method = SERVICE + "StreamAggregatedResources"
    response_type = discovery_pb2.DiscoveryResponse

    def __init__(self, node: base_pb2.Node, types: Iterable[str]) -> None:
        self._node = node
        self._types = {type_url: _TypeState() for type_url in types}

    def start(self) -> list[discovery_pb2.DiscoveryRequest]:
        """The first requests of a (re)connected stream: wildcard types, then named ones."""
        requests = []
        for type_url in REQUEST_ORDER:
            state = self._types.get(type_url)
            if state is None:
                continue
            state.nonce = ""
            if type_url in WILDCARD_TYPES or state.names:
                state.subscribed = True
                requests.append(self._request(type_url, state, state.accepted_version))
        return requests

    def decode(self, response: discovery_pb2.DiscoveryResponse) -> Update:
        """The resources of the type once `response` is applied; ConfigError for
        undecodable ones.

        LDS and CDS responses carry every resource. RDS and EDS responses may carry
        only some (xDS state of the world): the others stay while subscribed.
        """
        type_url = response.type_url
        message_class = message_type(type_url, self._types)
        resources: dict[str, Message] = {}
        for i, packed in enumerate(response.resources):
            message = unpack(packed, message_class, type_url, f"resources[{i}]")
            name = resource_name(type_url, message)
            if not name or name in resources:
                raise ConfigError(f"resources[{i}]: missing or duplicate name {name!r}")
            resources[name] = message
        if type_url not in WILDCARD_TYPES:
            wanted = self._types[type_url].names
            held = {**self._types[type_url].held, **resources}
            resources = {name: message for name, message in held.items() if name in wanted}
        return Update(type_url, response.version_info, response.nonce, resources)

    def ack(self, update: Update) -> discovery_pb2.DiscoveryRequest:
        state = self._types[update.type_url]
        state.accepted_version = update.version
        state.nonce = update.nonce
        state.held = update.resources
        return self._request(update.type_url, state, update.version)

    def nack(self, type_url: str, nonce: str, reason: str) -> discovery_pb2.DiscoveryRequest:
        state = self._types[type_url]
        state.nonce = nonce
        request = self._request(type_url, state, state.accepted_version)
        request.error_detail.CopyFrom(error_status(reason))
        return request

    def want(self, type_url: str, names: Iterable[str]) -> discovery_pb2.DiscoveryRequest | None:
        """Subscribe to exactly `names` of a named type; None when nothing changed."""
        state = self._types.get(type_url)
        wanted = frozenset(names)
        if state is None or (wanted == state.names and (state.subscribed or not wanted)):
            return None
        state.names = wanted
        state.subscribed = True
        state.held = {n: m for n, m in state.held.items() if n in wanted}
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
