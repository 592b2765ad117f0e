"""One ADS stream's protocol state (state of the world), without I/O.

Feed each `DiscoveryRequest` to `receive`, then ask `responses(snapshot)` what
to send; call `responses` again whenever the node's snapshot changes. Per type
URL the session tracks the subscription (wildcard and/or names), the last
response (version, nonce) and its fate (ACK, or NACK with the reason).

Rules (envoy api/xds_protocol.rst):
- A request whose `response_nonce` is not the latest nonce sent for its type is
  stale and ignored. A request without a nonce starts (or restarts) the type,
  e.g. on a reconnected stream, and gets a full response.
- LDS and CDS subscribe to everything when their first request names nothing
  (legacy wildcard) or names "*"; other types subscribe by name ("*" too).
- An LDS/CDS response carries every resource the client must keep. An RDS/EDS
  response carries only what the client lacks: the subscribed resources added
  or changed since the last response (the client keeps the others; envoy
  api/xds_protocol.rst, "Grouping Resources into Responses"), or every
  subscribed one that exists when the type (re)starts. A response is sent only
  when that content changed or names were added; nothing is sent for a named
  type none of whose subscribed resources exist.
- At most one response per type awaits its ACK/NACK; a newer version is sent
  when it arrives (flow control that coalesces bursts for slow clients).
- A NACK keeps the last acknowledged version; the rejected content is not sent
  again, only a newer one.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from trellis.controlplane.ads_status import Nack, ProxyNode, SyncState, TypeStatus
from trellis.controlplane.snapshot import (
    FULL_STATE_TYPES,
    PUSH_ORDER,
    SHORT_NAMES,
    ResourceSet,
    Snapshot,
)
from trellis.errors import TrellisError

WILDCARD = "*"


class AdsProtocolError(TrellisError):
    """The client broke the xDS protocol (the stream is ended with INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A serialized `DiscoveryResponse` to write to the stream."""

    type_url: str
    version: str
    nonce: str
    count: int
    data: bytes


@dataclass(slots=True)
class _TypeState:
    type_url: str
    requested: bool = False
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    force: bool = False  # respond even if the content did not change
    resend_all: bool = True  # the next response carries every wanted resource
    outstanding: bool = False  # a response awaits its ACK/NACK
    sent_nonce: str = ""
    sent_version: str = ""
    sent_set: ResourceSet | None = None  # the set the last response was cut from
    sent_names: frozenset[str] = frozenset()  # the wanted resources the client holds
    synced_set: ResourceSet | None = None  # the set last found to need nothing more
    acked_version: str = ""
    nacked: bool = False  # the latest response was rejected
    last_nack: Nack | None = None
    responses: int = 0
    acks: int = 0
    nacks: int = 0


class SubscriptionState(Protocol):
    """What a stream subscribed to of one type (SotW and delta sessions alike)."""

    wildcard: bool
    names: frozenset[str]


def wanted_names(state: SubscriptionState, resources: ResourceSet) -> frozenset[str]:
    """The names of `resources` the subscription covers (VHDS: by route configuration)."""
    if state.wildcard or state.names >= resources.names:
        return resources.names
    return resources.covered_by(state.names)


class TypeProgress(SubscriptionState, Protocol):
    """What both sessions record per type: the last response and its fate."""

    type_url: str
    force: bool
    outstanding: bool
    synced_set: ResourceSet | None
    sent_nonce: str
    sent_version: str
    acked_version: str
    nacked: bool
    last_nack: Nack | None
    responses: int
    acks: int
    nacks: int


S = TypeVar("S", bound=TypeProgress)


class SessionBase(abc.ABC, Generic[S]):
    """What the SotW and delta sessions share: the node, the types in push order,
    nonces, the fate of each response and the status built from it."""

    response_type: ClassVar[type[Message]]
    """The stream's response message (its `control_plane` field is encoded once)."""

    def __init__(
        self,
        node: ProxyNode,
        *,
        clock: Callable[[], float],
        control_plane_id: str = "trellis",
    ) -> None:
        self.node = node
        self._clock = clock
        self._types: dict[str, S] = {}
        self._nonce = 0
        identifier = base_pb2.ControlPlane(identifier=control_plane_id)
        self._control_plane = self.response_type(control_plane=identifier).SerializeToString()
        self.stale_requests = 0

    def _next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def _acked(self, state: S) -> None:
        state.nacked = False
        state.acks += 1

    def _nacked(self, state: S, message: str) -> Nack:
        """Record that the latest response of `state`'s type was rejected."""
        state.nacked = True
        state.nacks += 1
        state.last_nack = Nack(
            type_url=state.type_url,
            version=state.sent_version,
            nonce=state.sent_nonce,
            message=message,
            at=self._clock(),
        )
        return state.last_nack

    def _order(self) -> list[str]:
        known = [t for t in PUSH_ORDER if t in self._types]
        return known + sorted(t for t in self._types if t not in PUSH_ORDER)

    def view(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot as this stream's client is served it (the whole of it here)."""
        return snapshot

    def status(self, snapshot: Snapshot | None) -> tuple[TypeStatus, ...]:
        """Per subscribed type: SYNCED, STALE or NOT SENT against `snapshot`."""
        if snapshot is not None:
            snapshot = self.view(snapshot)
        return tuple(
            TypeStatus(
                type_url=type_url,
                short_name=SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1]),
                state=self._state(state, snapshot),
                sent_version=state.sent_version,
                sent_nonce=state.sent_nonce,
                acked_version=state.acked_version,
                last_nack=state.last_nack,
                wildcard=state.wildcard,
                resource_names=tuple(sorted(state.names)),
                responses=state.responses,
                acks=state.acks,
                nacks=state.nacks,
            )
            for type_url, state in ((t, self._types[t]) for t in self._order())
        )

    def _state(self, state: S, snapshot: Snapshot | None) -> SyncState:
        """Whether the client holds what `snapshot` has for `state`'s type."""
        if state.responses == 0:
            return SyncState.NOT_SENT
        if state.outstanding or state.nacked or state.force:
            return SyncState.STALE
        if snapshot is None:
            return SyncState.SYNCED
        resources = snapshot.get(state.type_url)
        if state.synced_set is resources:
            return SyncState.SYNCED
        lacks = self._lacks(state, resources, wanted_names(state, resources))
        return SyncState.STALE if lacks else SyncState.SYNCED

    @abc.abstractmethod
    def _lacks(self, state: S, resources: ResourceSet, wanted: frozenset[str]) -> bool:
        """Whether the client lacks something of `resources` it wants (the protocol's rule)."""


def _changed(state: _TypeState, resources: ResourceSet, wanted: frozenset[str]) -> bool:
    """Whether the client lacks something of `wanted` (LDS/CDS: or has something extra)."""
    sent = state.sent_set
    if sent is None:
        return True
    if state.type_url in FULL_STATE_TYPES:
        if wanted != state.sent_names:
            return True
    elif not wanted <= state.sent_names:
        return True  # RDS/EDS cannot delete: only additions and changes matter
    if resources is sent or resources.version == sent.version:
        return False
    return not wanted.isdisjoint(resources.changed_since(sent))


def _carried(state: _TypeState, resources: ResourceSet, wanted: frozenset[str]) -> frozenset[str]:
    """The names the next response carries: all of `wanted` for LDS/CDS and on a
    (re)start, else (RDS/EDS) those the client lacks or holds in an older content."""
    sent = state.sent_set
    if state.type_url in FULL_STATE_TYPES or state.resend_all or sent is None:
        return wanted
    missing = wanted - state.sent_names
    if resources is sent or resources.version == sent.version:
        return missing
    changed = resources.changed_since(sent)
    if changed.isdisjoint(wanted):
        return missing
    return missing | (changed & wanted)


def _entries(resources: ResourceSet, names: frozenset[str]) -> tuple[bytes, ...]:
    if names is resources.names or names == resources.names:
        return resources.encoded_parts()
    by_name = resources.by_name
    return tuple(by_name[name].encoded for name in sorted(names))


class AdsSession(SessionBase[_TypeState]):
    """The server side of one SotW ADS stream for one node."""

    response_type = discovery_pb2.DiscoveryResponse

    def receive(self, request: discovery_pb2.DiscoveryRequest) -> Nack | None:
        """Take a request: ACK, NACK, (re)subscription, or a stale one to ignore.

        Returns the NACK when the request rejected the latest response.
        """
        type_url = request.type_url
        if not type_url:
            raise AdsProtocolError("a DiscoveryRequest on an ADS stream must set type_url")
        state = self._types.get(type_url)
        if state is None:
            state = self._types[type_url] = _TypeState(type_url)
        nonce = request.response_nonce
        if state.sent_nonce and nonce and nonce != state.sent_nonce:
            self.stale_requests += 1
            return None
        nack = None
        if state.sent_nonce and nonce:
            if state.outstanding:
                nack = self._settle(state, request)
        else:
            state.force = state.resend_all = True  # the type (re)starts on this stream
        self._subscribe(state, request.resource_names)
        return nack

    def _settle(self, state: _TypeState, request: discovery_pb2.DiscoveryRequest) -> Nack | None:
        state.outstanding = False
        state.acked_version = request.version_info
        if request.HasField("error_detail"):
            return self._nacked(state, request.error_detail.message)
        self._acked(state)
        return None

    def _subscribe(self, state: _TypeState, resource_names: Iterable[str]) -> None:
        names = frozenset(resource_names)
        explicit = names - {WILDCARD}
        if WILDCARD in names:
            wildcard = True
        elif not names:
            first = not state.requested
            wildcard = state.type_url in FULL_STATE_TYPES if first else state.wildcard
        else:
            wildcard = False
        if explicit - state.names or (wildcard and not state.wildcard):
            state.force = True
        if not wildcard and explicit != state.names:
            state.sent_names &= explicit  # the client forgets what it unsubscribed
        state.wildcard = wildcard
        state.names = explicit
        state.requested = True

    def responses(self, snapshot: Snapshot | None) -> list[Outgoing]:
        """The responses due now, in make-before-break order (CDS, EDS, LDS, RDS)."""
        if snapshot is None:
            return []
        due = []
        for type_url in self._order():
            state = self._types[type_url]
            if not state.requested or state.outstanding:
                continue
            resources = snapshot.get(type_url)
            if not state.force and state.synced_set is resources:
                continue
            wanted = wanted_names(state, resources)
            state.synced_set = resources
            if not state.force and not _changed(state, resources, wanted):
                continue
            state.force = False
            if not wanted and type_url not in FULL_STATE_TYPES:
                continue
            carried = _carried(state, resources, wanted)
            if not carried and type_url not in FULL_STATE_TYPES:
                state.sent_set, state.sent_names = resources, wanted  # nothing it lacks
                continue
            due.append(self._send(state, resources, wanted, carried))
        return due

    def _send(
        self,
        state: _TypeState,
        resources: ResourceSet,
        wanted: frozenset[str],
        carried: frozenset[str],
    ) -> Outgoing:
        nonce = self._next_nonce()
        version = resources.version
        head = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=state.type_url, nonce=nonce
        ).SerializeToString()
        state.sent_nonce = nonce
        state.sent_version = version
        state.sent_set = resources
        state.sent_names = wanted
        state.resend_all = False
        state.outstanding = True
        state.responses += 1
        data = b"".join((head, self._control_plane, *_entries(resources, carried)))
        return Outgoing(state.type_url, version, nonce, len(carried), data)

    def _lacks(self, state: _TypeState, resources: ResourceSet, wanted: frozenset[str]) -> bool:
        return _changed(state, resources, wanted)
