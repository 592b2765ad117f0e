"""One simulated Envoy on an ADS stream: what it asks for, ACKs and remembers (no I/O).

Like Envoy, a `SimulatedProxy` subscribes to CDS and LDS as wildcards, then to
the ClusterLoadAssignments its EDS clusters name and the RouteConfigurations
its listeners name, and ACKs every response with the response's version and
nonce. It keeps, per type, the resources it holds (decoded once per distinct
content by a shared `Decoder`), so it can tell when it is *synced* (holds CDS,
LDS and every EDS/RDS resource it subscribed to) and when an *armed watch* is
satisfied (every watched resource differs from what it held when armed).

`SimulatedDeltaProxy` (`_xds_delta.py`) does the same over incremental xDS.

The runner (`_xds_clients.py`) writes the requests `initial` and `receive`
return, then calls `settle(now)` so that the times recorded are taken after
the ACK was written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, struct_pb2

from trellis.xds.vhds import VIRTUAL_HOST_TYPE

_PREFIX = "type.googleapis.com/"
CDS = _PREFIX + cluster_pb2.Cluster.DESCRIPTOR.full_name
EDS = _PREFIX + endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR.full_name
LDS = _PREFIX + listener_pb2.Listener.DESCRIPTOR.full_name
RDS = _PREFIX + route_pb2.RouteConfiguration.DESCRIPTOR.full_name
HCM = _PREFIX + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
VHDS = VIRTUAL_HOST_TYPE
TYPES = (CDS, EDS, LDS, RDS)
CHILD = {CDS: EDS, LDS: RDS}  # a wildcard type and the named type its resources reference
_NAME_TAG = 0x0A  # field 1, length-delimited: `name` / `cluster_name` of all five types


@dataclass(frozen=True, slots=True, eq=False)
class Info:
    """One distinct resource content: its name and the names it references.

    A cluster references its EDS assignment, a listener its RDS route
    configurations, and a route configuration that carries `vhds` its own name:
    the VHDS namespace its virtual hosts come under.
    """

    name: str
    references: frozenset[str]
    value: bytes


def leading_name(value: bytes) -> str | None:
    """Field 1 as text when the serialized message starts with it (it does when deterministic)."""
    if not value or value[0] != _NAME_TAG:
        return None
    length, shift, pos = 0, 0, 1
    while pos < len(value) and shift < 35:
        byte = value[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            end = pos + length
            return value[pos:end].decode("utf-8") if end <= len(value) else None
    return None


def _route_names(listener: listener_pb2.Listener) -> frozenset[str]:
    configs = [f.typed_config for chain in listener.filter_chains for f in chain.filters]
    if listener.HasField("default_filter_chain"):
        configs += [f.typed_config for f in listener.default_filter_chain.filters]
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    names = set()
    for config in configs:
        if config.type_url == HCM:
            hcm = hcm_pb2.HttpConnectionManager.FromString(config.value)
            if hcm.HasField("rds"):
                names.add(hcm.rds.route_config_name)
    return frozenset(names)


def decode(type_url: str, value: bytes) -> Info:
    """Name and references of one resource; raises ValueError for an unknown type."""
    if type_url == CDS:
        cluster = cluster_pb2.Cluster.FromString(value)
        refs: frozenset[str] = frozenset()
        if cluster.type == cluster_pb2.Cluster.EDS:
            refs = frozenset({cluster.eds_cluster_config.service_name or cluster.name})
        return Info(cluster.name, refs, value)
    if type_url == LDS:
        listener = listener_pb2.Listener.FromString(value)
        return Info(listener.name, _route_names(listener), value)
    if type_url == RDS:  # parsing is lazy: ~0.5 ms for 1000 virtual hosts
        config = route_pb2.RouteConfiguration.FromString(value)
        refs = frozenset({config.name}) if config.HasField("vhds") else frozenset()
        return Info(config.name, refs, value)
    if type_url not in (EDS, VHDS):
        raise ValueError(f"unexpected resource type {type_url!r}")
    name = leading_name(value)
    if name is None:
        if type_url == EDS:
            name = endpoint_pb2.ClusterLoadAssignment.FromString(value).cluster_name
        else:
            name = route_components_pb2.VirtualHost.FromString(value).name
    return Info(name, frozenset(), value)


@dataclass(frozen=True, slots=True, eq=False)
class Contents:
    """What one response carries: its resources by name and the names they reference."""

    by_name: dict[str, Info]  # shared between streams: never mutate
    references: frozenset[str]


_REMEMBERED_RESPONSES = 64


class Decoder:
    """Decodes each distinct resource content once; the streams of a process share it.

    Hundreds of simulated proxies in one process receive the same resources, so
    whole responses are remembered too, by their content without version and
    nonce: each distinct response is taken apart once per process, as each real
    Envoy (on its own CPU) would do once for itself.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, bytes], Info] = {}
        self._responses: dict[bytes, Contents] = {}
        self._requests: dict[tuple[str, frozenset[str]], discovery_pb2.DiscoveryRequest] = {}
        self.decoded = 0

    def contents(self, response: discovery_pb2.DiscoveryResponse) -> Contents:
        """The response's resources; `response` loses its version, nonce and control plane."""
        type_url = response.type_url
        for name in ("version_info", "nonce", "control_plane"):
            response.ClearField(name)
        key = response.SerializeToString()
        found = self._responses.get(key)
        if found is None:
            infos = [self.info(type_url, r.value) for r in response.resources]
            found = Contents(
                {info.name: info for info in infos},
                frozenset().union(*(info.references for info in infos)),
            )
            self._responses[key] = found
            if len(self._responses) > _REMEMBERED_RESPONSES:
                del self._responses[next(iter(self._responses))]
        return found

    def delta_contents(self, response: discovery_pb2.DeltaDiscoveryResponse) -> Contents:
        """A delta response's resources (`references`: those of the resources only);
        `response` loses its version, nonce and control plane, as in `contents`.

        Raises ValueError when a resource's name is not the name inside it (for
        a VirtualHost: its VHDS name, `<route configuration>/<virtual host>`)."""
        type_url = response.type_url
        for name in ("system_version_info", "nonce", "control_plane"):
            response.ClearField(name)
        key = b"delta" + response.SerializeToString()
        found = self._responses.get(key)
        if found is None:
            infos = []
            for resource in response.resources:
                info = self.info(type_url, resource.resource.value)
                if resource.name and resource.name != info.name:
                    raise ValueError(
                        f"resource {resource.name!r} of {type_url} is named {info.name!r} inside"
                    )
                infos.append(info)
            found = Contents({info.name: info for info in infos}, frozenset())
            self._responses[key] = found
            if len(self._responses) > _REMEMBERED_RESPONSES:
                del self._responses[next(iter(self._responses))]
        return found

    def request(
        self, type_url: str, names: frozenset[str], version: str, nonce: str
    ) -> discovery_pb2.DiscoveryRequest:
        """A request (ACK or subscription) for `names` (empty for the wildcard types)."""
        template = self._requests.get((type_url, names))
        if template is None:
            template = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=sorted(names)
            )
            self._requests[(type_url, names)] = template
            if len(self._requests) > _REMEMBERED_RESPONSES:
                del self._requests[next(iter(self._requests))]
        request = discovery_pb2.DiscoveryRequest()
        request.CopyFrom(template)
        request.version_info, request.response_nonce = version, nonce
        return request

    def info(self, type_url: str, value: bytes) -> Info:
        key = (type_url, value)
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = decode(type_url, value)
            self.decoded += 1
        return found


def make_node(
    node_id: str, metadata: dict[str, object], client_features: Iterable[str] = ()
) -> base_pb2.Node:
    node = base_pb2.Node(
        id=node_id,
        cluster="bench",
        user_agent_name="trellis-xds-bench",
        client_features=list(client_features),
    )
    struct = struct_pb2.Struct()
    json_format.ParseDict(metadata, struct)
    node.metadata.CopyFrom(struct)
    return node


@dataclass(slots=True)
class TypeState:
    names: frozenset[str] = frozenset()  # EDS/RDS subscription
    version: str = ""
    nonce: str = ""
    held: dict[str, Info] = field(default_factory=dict)
    received: bool = False  # delta: since the subscription last grew


class SimulatedProxy:
    """The client side of one SotW ADS stream, Envoy-style."""

    def __init__(self, node: base_pb2.Node, decoder: Decoder) -> None:
        self.node = node
        self._decoder = decoder
        self._types = {t: TypeState() for t in TYPES}
        self.responses = 0
        self.synced_at: float | None = None
        self._baseline: dict[tuple[str, str], Info | None] = {}
        self._pending: set[tuple[str, str]] = set()
        self.updated_at: float | None = None

    def initial(self) -> list[discovery_pb2.DiscoveryRequest]:
        """The first requests: CDS (carrying the node) and LDS, both wildcard."""
        return [
            discovery_pb2.DiscoveryRequest(node=self.node, type_url=CDS),
            discovery_pb2.DiscoveryRequest(type_url=LDS),
        ]

    def receive(
        self, response: discovery_pb2.DiscoveryResponse
    ) -> list[discovery_pb2.DiscoveryRequest]:
        """Take a response; returns its ACK, then any EDS/RDS subscription change."""
        type_url = response.type_url
        state = self._types.get(type_url)
        if state is None:
            raise ValueError(f"the server sent {type_url!r}, which was not requested")
        self.responses += 1
        state.version, state.nonce, state.received = response.version_info, response.nonce, True
        contents = self._decoder.contents(response)
        if type_url in CHILD:
            state.held = contents.by_name  # replaced, never changed in place
        else:  # RDS/EDS state of the world: what is not sent again is kept
            state.held = {**state.held, **contents.by_name}
        requests = [self._request(type_url, state)]
        child = CHILD.get(type_url)
        if child is not None:
            wanted = contents.references
            child_state = self._types[child]
            if wanted != child_state.names:
                child_state.names = wanted
                child_state.held = {n: i for n, i in child_state.held.items() if n in wanted}
                requests.append(self._request(child, child_state))
        return requests

    def _request(self, type_url: str, state: TypeState) -> discovery_pb2.DiscoveryRequest:
        names = state.names if type_url not in CHILD else frozenset()
        return self._decoder.request(type_url, names, state.version, state.nonce)

    def held(self, type_url: str, name: str) -> Info | None:
        return self._types[type_url].held.get(name)

    def subscribed(self, type_url: str) -> frozenset[str]:
        return self._types[type_url].names

    @property
    def synced(self) -> bool:
        """CDS and LDS received and every subscribed EDS/RDS resource held."""
        types = self._types
        if not (types[CDS].received and types[LDS].received):
            return False
        return all(types[t].names <= types[t].held.keys() for t in (EDS, RDS))

    def arm(self, watch: Iterable[tuple[str, str]]) -> None:
        """Start waiting for every (type URL, name) in `watch` to change from what is held now."""
        self._baseline = {item: self.held(*item) for item in watch}
        self._pending = set(self._baseline)
        self.updated_at = None

    def settle(self, now: float) -> tuple[bool, bool]:
        """Record `now` as the sync/update time if reached; returns (just synced, just updated)."""
        just_synced = just_updated = False
        if self.synced_at is None and self.synced:
            self.synced_at, just_synced = now, True
        if self._pending:
            for item in list(self._pending):
                current, before = self.held(*item), self._baseline[item]
                if current is not None and (
                    before is None or (current is not before and current.value != before.value)
                ):
                    self._pending.discard(item)
            if not self._pending:
                self.updated_at, just_updated = now, True
        return just_synced, just_updated

    @property
    def armed(self) -> bool:
        return bool(self._pending)

    @property
    def uses_vhds(self) -> bool:
        """Whether the server sent route configurations that carry `vhds` (never over SotW)."""
        return False
