"""One incremental (delta) ADS stream's protocol state, without I/O.

The counterpart of `AdsSession` for `DeltaAggregatedResources`: feed each
`DeltaDiscoveryRequest` to `receive`, then ask `responses(snapshot)` what to
send, again whenever the node's snapshot changes. A response carries only the
resources the client lacks or holds in an older content, and names the ones it
holds that are gone (`removed_resources`), so a new service costs each proxy
one cluster and one assignment rather than all of them, and ACKs carry no
names.

Rules (envoy api/xds_protocol.rst, "Incremental xDS"):
- Subscriptions change by difference (`resource_names_subscribe` /
  `_unsubscribe`), in any request, whatever its nonce. LDS and CDS are wildcard
  when their first request subscribes to nothing; `*` subscribes to (and
  unsubscribing `*` leaves) the wildcard for any type.
- The first request of a type may list what the client already holds
  (`initial_resource_versions`, after a reconnect): those are not sent again
  unless their content differs, and those that no longer exist are removed.
- A request whose `response_nonce` is the latest one sent for its type ACKs it,
  or NACKs it with `error_detail`; an older nonce only changes subscriptions.
- As in `AdsSession`: at most one response per type awaits its ACK/NACK, types
  go in make-before-break order, and rejected content is not sent again, only a
  newer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from trellis.controlplane.ads_session import (
    WILDCARD,
    AdsProtocolError,
    Outgoing,
    SessionBase,
    wanted_names,
)
from trellis.controlplane.ads_status import Nack
from trellis.controlplane.snapshot import (
    FULL_STATE_TYPES,
    ResourceSet,
    Snapshot,
)
from trellis.xds.vhds import VHDS_CLIENT_FEATURE, VIRTUAL_HOST_TYPE, covered

_NOTHING: frozenset[str] = frozenset()


@dataclass(slots=True)
class _DeltaType:
    type_url: str
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    force: bool = False  # look again even if the snapshot's set did not change
    # What the client said it holds on (re)connecting, until first compared.
    initial: Mapping[str, str] | None = None
    outstanding: bool = False
    sent_nonce: str = ""
    sent_version: str = ""
    sent_set: ResourceSet | None = None  # the set the client's resources were cut from
    # What the client holds. With `exact`: what the subscription covers in `sent_set`,
    # except what `fresh` (names subscribed since) covers; then the next response is
    # worked out from the set's cached differences to `sent_set`, without going over
    # every name. Otherwise (after a change of wildcard): the names in `held`.
    exact: bool = False
    fresh: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    synced_set: ResourceSet | None = None
    acked_version: str = ""
    nacked: bool = False
    last_nack: Nack | None = None
    responses: int = 0
    acks: int = 0
    nacks: int = 0


@dataclass(frozen=True, slots=True)
class _Due:
    """What one response must carry."""

    send: frozenset[str]
    removed: frozenset[str]


def _in(type_url: str, name: str, names: frozenset[str]) -> bool:
    return covered(name, names, by_route_config=type_url == VIRTUAL_HOST_TYPE)


def _covers(state: _DeltaType, name: str) -> bool:
    return state.wildcard or _in(state.type_url, name, state.names)


def _due(state: _DeltaType, resources: ResourceSet) -> _Due:
    """The resources the client lacks (or holds in another content) and those it holds
    that no longer exist."""
    sent = state.sent_set
    if state.initial is not None:
        wanted = wanted_names(state, resources)
        by_name = resources.by_name
        current = frozenset(
            name
            for name, version in state.initial.items()
            if name in wanted and by_name[name].version == version
        )
        gone = frozenset(
            name for name in state.initial if name not in resources.names and _covers(state, name)
        )
        return _Due(wanted - current, gone)
    if state.exact and sent is not None:
        send = resources.covered_by(state.fresh) if state.fresh else frozenset()
        if resources is sent or resources.version == sent.version:
            return _Due(send, frozenset())
        changed = [n for n in resources.changed_since(sent) if _covers(state, n)]
        gone = frozenset(
            name
            for name in resources.removed_since(sent)
            if _covers(state, name) and not _in(state.type_url, name, state.fresh)
        )
        return _Due(send.union(changed) if changed else send, gone)
    wanted = wanted_names(state, resources)
    held = state.held
    send = wanted - held
    if sent is not None and resources is not sent and resources.version != sent.version:
        changed_names = resources.changed_since(sent)
        if not changed_names.isdisjoint(held):
            send |= changed_names & held & wanted
    return _Due(send, held - resources.names)


def _synced(state: _DeltaType, resources: ResourceSet) -> None:
    """The client now holds what its subscription covers in `resources`."""
    state.sent_set, state.initial = resources, None
    state.exact, state.fresh, state.held = True, _NOTHING, _NOTHING


def _spell_out(state: _DeltaType) -> None:
    """Keep what the client holds as names (before the wildcard changes)."""
    if state.exact and state.sent_set is not None:
        sent = state.sent_set
        state.held = wanted_names(state, sent) - sent.covered_by(state.fresh)
    state.exact, state.fresh = False, _NOTHING


class DeltaSession(SessionBase[_DeltaType]):
    """The server side of one incremental ADS stream for one node."""

    response_type = discovery_pb2.DeltaDiscoveryResponse

    def view(self, snapshot: Snapshot) -> Snapshot:
        """VHDS for clients that say they speak it (xds/vhds.py)."""
        vhds = VHDS_CLIENT_FEATURE in self.node.client_features
        return snapshot.for_vhds() if vhds else snapshot

    def receive(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Nack | None:
        """Take a request: subscription changes, then an ACK or NACK of the latest
        response. Returns the NACK when it rejected the latest response."""
        type_url = request.type_url
        if not type_url:
            raise AdsProtocolError("a DeltaDiscoveryRequest must set type_url")
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._types[type_url] = _DeltaType(type_url)
        nonce = request.response_nonce
        self._subscribe(state, first, request)
        if not nonce:
            return None
        if nonce != state.sent_nonce or not state.outstanding:
            self.stale_requests += 1
            return None
        return self._settle(state, request)

    def _subscribe(
        self, state: _DeltaType, first: bool, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> None:
        added = frozenset(request.resource_names_subscribe)
        dropped = frozenset(request.resource_names_unsubscribe)
        if first:
            state.force = True
            state.wildcard = WILDCARD in added or (not added and state.type_url in FULL_STATE_TYPES)
            if request.initial_resource_versions:
                state.initial = dict(request.initial_resource_versions)
        elif WILDCARD in added and not state.wildcard:
            _spell_out(state)
            state.wildcard = state.force = True
        if WILDCARD in dropped and state.wildcard:
            _spell_out(state)
            state.wildcard = False
        gained = added - state.names - {WILDCARD}
        if gained:
            state.force = True
            if state.exact and not state.wildcard:
                state.fresh |= gained
            state.names |= gained
        if dropped:
            state.names -= dropped  # the client forgets what it unsubscribed
            state.fresh -= dropped
            if not state.exact:
                state.held = frozenset(n for n in state.held if _covers(state, n))
            if state.initial is not None:
                state.initial = {n: v for n, v in state.initial.items() if _covers(state, n)}

    def _settle(
        self, state: _DeltaType, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> Nack | None:
        state.outstanding = False
        if request.HasField("error_detail"):
            return self._nacked(state, request.error_detail.message)
        self._acked(state)
        state.acked_version = state.sent_version
        return None

    def responses(self, snapshot: Snapshot | None) -> list[Outgoing]:
        """The responses due now, in make-before-break order (CDS, EDS, LDS, RDS)."""
        if snapshot is None:
            return []
        snapshot = self.view(snapshot)
        due = []
        for type_url in self._order():
            state = self._types[type_url]
            if state.outstanding:
                continue
            resources = snapshot.get(type_url)
            if not state.force and state.synced_set is resources:
                continue
            state.force = False
            state.synced_set = resources
            todo = _due(state, resources)
            # A first response even when empty: to a wildcard, and to a VHDS subscription
            # (its client waits for one before it counts the routes as received).
            first = state.responses == 0 and (state.wildcard or type_url == VIRTUAL_HOST_TYPE)
            if todo.send or todo.removed or first:
                due.append(self._send(state, resources, todo))
            else:
                _synced(state, resources)
        return due

    def _send(
        self,
        state: _DeltaType,
        resources: ResourceSet,
        todo: _Due,
    ) -> Outgoing:
        nonce = self._next_nonce()
        version = resources.version
        head = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=state.type_url,
            nonce=nonce,
            removed_resources=sorted(todo.removed),
        ).SerializeToString()
        send = todo.send
        if send == resources.names:
            entries = resources.delta_parts()
        else:
            by_name = resources.by_name
            entries = tuple(by_name[name].delta_encoded() for name in sorted(send))
        state.sent_nonce, state.sent_version = nonce, version
        _synced(state, resources)
        state.outstanding = True
        state.responses += 1
        data = b"".join((head, self._control_plane, *entries))
        return Outgoing(state.type_url, version, nonce, len(send), data)

    def _lacks(self, state: _DeltaType, resources: ResourceSet, wanted: frozenset[str]) -> bool:
        todo = _due(state, resources)
        return bool(todo.send or todo.removed)
