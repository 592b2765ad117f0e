"""The client side of an incremental (delta) ADS stream, without I/O.

`DeltaAggregatedResources` (Envoy's `DELTA_GRPC`): responses carry only the
resources that are new or changed (`resources`, each with its own version) and
name the ones that are gone (`removed_resources`); `system_version_info` is the
version of the whole set. Rules followed (Envoy's xDS protocol, "Incremental
xDS"):

- Subscriptions change by difference: `resource_names_subscribe` and
  `_unsubscribe` carry only the names added or dropped. CDS and LDS are
  wildcard: their first request on a stream subscribes to no name (legacy
  wildcard, understood by every server). EDS, RDS and SDS names follow what
  the clusters and listeners reference (`want`).
- A reconnected stream's first request per type lists every resource held with
  its version (`initial_resource_versions`) and, for a named type, every name
  of interest, so the server sends only what differs and removes what is gone.
- Each response is answered by its nonce: an ACK, or a NACK with `error_detail`.
- VHDS virtual hosts (`VIRTUAL_HOST_TYPE`) are subscribed by namespace: the
  names are route configurations, and every virtual host whose resource name
  falls under one of them (`vhds.route_config_of`) belongs to it; dropping a
  route configuration's name forgets all of its virtual hosts.

The runtime applies a whole type at once, as with state of the world: `decode`
returns the complete view (what is held, plus the response). A NACKed response
is not applied, but the server counts it as delivered and will only send what
changes after it, so its content stays *assumed* under what is applied: the
next response is decoded on top of it, and is accepted or rejected together
with it. Only applied resources are listed in `initial_resource_versions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from trellis.errors import ConfigError
from trellis.xds.ads_client import (
    REQUEST_ORDER,
    SERVICE,
    WILDCARD_TYPES,
    Update,
    error_status,
    message_type,
    resource_name,
    unpack,
)
from trellis.xds.vhds import VIRTUAL_HOST_TYPE, covered


@dataclass(frozen=True, slots=True)
class _Held:
    version: str
    message: Message


@dataclass(slots=True)
class _DeltaType:
    wildcard: bool
    namespaced: bool = False  # names are namespaces: VHDS route configurations
    names: frozenset[str] = frozenset()  # subscribed names (named types)
    subscribed: bool = False  # on the current stream
    accepted_version: str = ""
    held: dict[str, _Held] = field(default_factory=dict)  # as applied
    # What the server counts as delivered: `held` plus the NACKed responses since.
    assumed: dict[str, _Held] = field(default_factory=dict)
    decoded: tuple[str, dict[str, _Held]] | None = None  # (nonce, view) awaiting ACK/NACK

    def covers(self, name: str, names: frozenset[str]) -> bool:
        """Whether the resource `name` falls under one of `names`."""
        return covered(name, names, by_route_config=self.namespaced)

    def forget(self, dropped: frozenset[str]) -> None:
        views = [self.held, self.assumed] + ([self.decoded[1]] if self.decoded else [])
        for view in views:
            gone = (
                [n for n in view if self.covers(n, dropped)]
                if self.namespaced  # else: the quick way for plain names
                else dropped & view.keys()
            )
            for name in gone:
                del view[name]


class DeltaAdsClientState:
    """Subscriptions, held resource versions and nonces of one proxy's delta ADS stream."""

    method = SERVICE + "DeltaAggregatedResources"
    response_type = discovery_pb2.DeltaDiscoveryResponse

    def __init__(self, node: base_pb2.Node, types: Iterable[str]) -> None:
        self._node = node
        self._types = {
            t: _DeltaType(wildcard=t in WILDCARD_TYPES, namespaced=t == VIRTUAL_HOST_TYPE)
            for t in types
        }

    def start(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """The first requests of a (re)connected stream: what is wanted, what is held."""
        requests = []
        for type_url in REQUEST_ORDER:
            state = self._types.get(type_url)
            if state is None:
                continue
            state.assumed = dict(state.held)
            state.decoded = None
            state.subscribed = state.wildcard or bool(state.names)
            if state.subscribed:
                request = self._request(type_url, subscribe=state.names)
                for name, held in state.held.items():
                    request.initial_resource_versions[name] = held.version
                requests.append(request)
        return requests

    def decode(self, response: discovery_pb2.DeltaDiscoveryResponse) -> Update:
        """Every resource of the type once `response` is applied on top of what the
        server counts as delivered; ConfigError for undecodable ones."""
        type_url = response.type_url
        message_class = message_type(type_url, self._types)
        state = self._types[type_url]
        view = dict(state.assumed)
        for name in response.removed_resources:
            view.pop(name, None)
        seen: set[str] = set()
        for i, entry in enumerate(response.resources):
            at = f"resources[{i}]"
            if not entry.name or entry.name in seen:
                raise ConfigError(f"{at}: missing or duplicate name {entry.name!r}")
            seen.add(entry.name)
            if not entry.HasField("resource"):
                raise ConfigError(f"{at}: {entry.name!r} carries no resource")
            message = unpack(entry.resource, message_class, type_url, at)
            if resource_name(type_url, message) != entry.name:
                raise ConfigError(
                    f"{at}: named {entry.name!r} but holds {resource_name(type_url, message)!r}"
                )
            # Late ones of dropped names are not kept.
            if state.wildcard or state.covers(entry.name, state.names):
                view[entry.name] = _Held(entry.version, message)
        state.decoded = (response.nonce, view)
        return Update(
            type_url,
            response.system_version_info,
            response.nonce,
            {name: held.message for name, held in view.items()},
            {name: held.version for name, held in view.items()},
        )

    def ack(self, update: Update) -> discovery_pb2.DeltaDiscoveryRequest:
        state = self._types[update.type_url]
        if state.decoded is not None and state.decoded[0] == update.nonce:
            state.held = dict(state.decoded[1])
            state.assumed = dict(state.held)
        state.decoded = None
        state.accepted_version = update.version
        return self._request(update.type_url, nonce=update.nonce)

    def nack(self, type_url: str, nonce: str, reason: str) -> discovery_pb2.DeltaDiscoveryRequest:
        state = self._types[type_url]
        if state.decoded is not None and state.decoded[0] == nonce:
            state.assumed = state.decoded[1]  # delivered, though not applied
        state.decoded = None
        request = self._request(type_url, nonce=nonce)
        request.error_detail.CopyFrom(error_status(reason))
        return request

    def want(
        self, type_url: str, names: Iterable[str]
    ) -> discovery_pb2.DeltaDiscoveryRequest | None:
        """Subscribe to exactly `names` of a named type, by difference; None when
        nothing changed. Dropped names are forgotten at once (the server sends
        nothing for them)."""
        state = self._types.get(type_url)
        wanted = frozenset(names)
        if state is None or (wanted == state.names and (state.subscribed or not wanted)):
            return None
        added, dropped = wanted - state.names, state.names - wanted
        first = not state.subscribed
        state.names = wanted
        state.subscribed = True
        state.forget(dropped)
        request = self._request(type_url, subscribe=wanted if first else added)
        request.resource_names_unsubscribe.extend(sorted(dropped))
        if first:
            for name, held in state.held.items():
                request.initial_resource_versions[name] = held.version
        return request

    def names(self, type_url: str) -> frozenset[str]:
        """The subscribed names of a named type (RDS, EDS, SDS; VHDS: route configurations)."""
        state = self._types.get(type_url)
        return state.names if state is not None else frozenset()

    def wants_any(self, type_url: str) -> bool:
        """Whether some resource of a named type is subscribed."""
        state = self._types.get(type_url)
        return state is not None and bool(state.names)

    def held_versions(self, type_url: str) -> Mapping[str, str]:
        """The applied resources of a type and their versions."""
        state = self._types.get(type_url)
        held = state.held if state is not None else {}
        return {name: entry.version for name, entry in held.items()}

    def _request(
        self, type_url: str, *, subscribe: Iterable[str] = (), nonce: str = ""
    ) -> discovery_pb2.DeltaDiscoveryRequest:
        # The node goes with every request, as Envoy does by default.
        return discovery_pb2.DeltaDiscoveryRequest(
            node=self._node,
            type_url=type_url,
            resource_names_subscribe=sorted(subscribe),
            response_nonce=nonce,
        )
