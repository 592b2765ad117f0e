"""One simulated Envoy on an incremental ADS stream (Envoy's `DELTA_GRPC`), no I/O.

`SimulatedDeltaProxy` makes the subscriptions of `SimulatedProxy` as
differences; it applies each response's resources and `removed_resources` to
what it holds, and its ACKs carry no names. When its node lists
`VHDS_CLIENT_FEATURE` it also speaks VHDS as Envoy does: it subscribes the
VirtualHost type with the names of the RouteConfigurations that carry `vhds`
(a namespace each), holds the virtual hosts whose `route_config_of(name)` is
one of them, and drops them when a route configuration goes away or loses
`vhds` (`trellis.xds.vhds` has the contract).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from _xds_stream import CDS, CHILD, LDS, RDS, VHDS, Decoder, SimulatedProxy, TypeState
from trellis.xds.vhds import VHDS_CLIENT_FEATURE, route_config_of


class SimulatedDeltaProxy(SimulatedProxy):
    """The client side of one incremental ADS stream, Envoy-style (`DELTA_GRPC`).

    With `VHDS_CLIENT_FEATURE` in its node's `client_features`, it subscribes
    VirtualHosts by route configuration (see the module docstring).
    """

    def __init__(self, node: base_pb2.Node, decoder: Decoder) -> None:
        super().__init__(node, decoder)
        self.vhds = VHDS_CLIENT_FEATURE in node.client_features
        self._children = {**CHILD, RDS: VHDS} if self.vhds else CHILD
        if self.vhds:
            self._types[VHDS] = TypeState()

    def initial(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """CDS (carrying the node) and LDS, both wildcard: they subscribe to nothing."""
        return [
            discovery_pb2.DeltaDiscoveryRequest(node=self.node, type_url=CDS),
            discovery_pb2.DeltaDiscoveryRequest(type_url=LDS),
        ]

    def receive(
        self, response: discovery_pb2.DeltaDiscoveryResponse
    ) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """Apply a response (changed and removed resources); returns its ACK, then any
        EDS/RDS/VirtualHost subscription changes it leads to, parents first."""
        type_url = response.type_url
        state = self._types.get(type_url)
        if state is None:
            raise ValueError(f"the server sent {type_url!r}, which was not requested")
        self.responses += 1
        state.version, state.nonce, state.received = (
            response.system_version_info,
            response.nonce,
            True,
        )
        removed = list(response.removed_resources)
        held = {**state.held, **self._decoder.delta_contents(response).by_name}
        for name in removed:
            held.pop(name, None)
        state.held = held
        requests = [
            discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=state.nonce)
        ]
        parent = type_url
        while (child := self._children.get(parent)) is not None:  # at most LDS -> RDS -> VHDS
            wanted = frozenset().union(*(i.references for i in self._types[parent].held.values()))
            change = self._resubscribe(child, wanted)
            if change is None:
                break
            requests.append(change)
            parent = child
        return requests

    def _resubscribe(
        self, type_url: str, wanted: frozenset[str]
    ) -> discovery_pb2.DeltaDiscoveryRequest | None:
        """Subscribe `type_url` to `wanted` and drop what falls outside it; None when
        nothing changes. A VirtualHost falls under its route configuration's name."""
        state = self._types[type_url]
        if wanted == state.names:
            return None
        added, dropped = wanted - state.names, state.names - wanted
        owner = route_config_of if type_url == VHDS else _same
        state.names = wanted
        state.held = {n: i for n, i in state.held.items() if owner(n) in wanted}
        if added:
            state.received = False
        return discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=sorted(added),
            resource_names_unsubscribe=sorted(dropped),
        )

    @property
    def synced(self) -> bool:
        """As for SotW, and with VHDS a VirtualHost response since the last subscription:
        the server sends all virtual hosts of a route configuration at once."""
        vhds = self._types.get(VHDS)
        fresh = vhds is None or not vhds.names or vhds.received
        return fresh and super().synced

    @property
    def uses_vhds(self) -> bool:
        """Whether the server sent route configurations that carry `vhds`."""
        vhds = self._types.get(VHDS)
        return vhds is not None and bool(vhds.names)


def _same(name: str) -> str:
    return name
