"""The Aggregated Discovery Service: Envoy xDS v3 over one gRPC stream per proxy.

`AggregatedDiscoveryService` serves `StreamAggregatedResources` (state of the
world) and `DeltaAggregatedResources` (incremental) from a `SnapshotCache`.
Each stream runs an `AdsSession` or a `DeltaSession` (the protocol, without
I/O) and is woken by the cache after a debounced change of its node's snapshot. When
a node connects without a snapshot in the cache, the `SnapshotSource` callback
builds one. Responses are pre-serialized bytes: every resource was serialized
once when its `Resource` was built, so a push costs each stream a join of bytes.

`serve_ads` binds a grpc.aio server, on a TCP address and optionally also on a
Unix socket (`ads_socket`); `AdsServer.stop` ends every stream (the proxies
reconnect and resync) and stops the server.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from trellis.controlplane.ads_delta import DeltaSession
from trellis.controlplane.ads_session import AdsProtocolError, AdsSession, Outgoing
from trellis.controlplane.ads_socket import (
    BoundSocket,
    claim_socket_path,
    remove_socket,
    secure_socket,
)
from trellis.controlplane.ads_status import (
    Nack,
    ProxyNode,
    ProxyStatus,
    TypeStatus,
    node_from_proto,
)
from trellis.controlplane.snapshot import Snapshot
from trellis.controlplane.snapshot_cache import SnapshotCache
from trellis.errors import ConfigError

log = logging.getLogger("trellis.controlplane.ads")

SERVICE_NAME = "envoy.service.discovery.v3.AggregatedDiscoveryService"
SnapshotSource = Callable[[ProxyNode], "Snapshot | Awaitable[Snapshot | None] | None"]
Request: TypeAlias = discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest


class Session(Protocol):
    """The protocol state of one stream: `AdsSession` (SotW) or `DeltaSession`."""

    node: ProxyNode

    def receive(self, request: Any) -> Nack | None: ...

    def responses(self, snapshot: Snapshot | None) -> list[Outgoing]: ...

    def status(self, snapshot: Snapshot | None) -> tuple[TypeStatus, ...]: ...


def _identity(data: bytes) -> bytes:
    return data


@dataclass(slots=True)
class _Stream:
    connection_id: str
    session: Session
    peer: str
    connected_since: float
    wake: asyncio.Event


class AggregatedDiscoveryService:
    """SotW and delta ADS over grpc.aio; register with `rpc_handler()` or use `serve_ads`."""

    def __init__(
        self,
        cache: SnapshotCache,
        source: SnapshotSource | None = None,
        *,
        clock: Callable[[], float] = time.time,
        first_request_timeout: float = 30.0,
        forget_on_disconnect: bool = True,
        control_plane_id: str = "trellis",
    ) -> None:
        self.cache = cache
        self._source = source
        self._clock = clock
        self._first_request_timeout = first_request_timeout
        self._forget = forget_on_disconnect
        self._control_plane_id = control_plane_id
        self._streams: dict[str, _Stream] = {}
        self._per_node: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._closing = False

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """The handler to add to a grpc.aio server (responses are pre-serialized bytes)."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.stream_aggregated_resources,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=_identity,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.delta_aggregated_resources,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=_identity,
                ),
            },
        )

    async def delta_aggregated_resources(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        """Incremental xDS: each response carries only what the proxy lacks."""
        # grpc.aio streams responses only from an async generator function itself.
        async for response in self._serve(requests, context, DeltaSession):
            yield response

    async def stream_aggregated_resources(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        """State of the world: LDS/CDS responses carry every resource of their type."""
        async for response in self._serve(requests, context, AdsSession):
            yield response

    async def _serve(
        self,
        requests: AsyncIterator[Request],
        context: grpc.aio.ServicerContext[Any, Any],
        make_session: Callable[..., Session],
    ) -> AsyncIterator[bytes]:
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the control plane is stopping")
        wake = asyncio.Event()
        inbox: deque[Request] = deque()
        ended = asyncio.Event()
        reader = asyncio.create_task(_read(requests, inbox, wake, ended), name="ads-reader")
        stream: _Stream | None = None
        unwatch: Callable[[], None] | None = None
        try:
            try:
                first = await self._first_request(inbox, wake, ended)
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no DiscoveryRequest came")
            if first is None:
                return
            node = await self._node(first, context)
            await self._ensure_snapshot(node)
            stream = self._register(node, context.peer(), wake, make_session)
            unwatch = self.cache.watch(node.id, wake.set)
            while True:
                wake.clear()
                try:
                    while inbox:
                        nack = stream.session.receive(inbox.popleft())
                        if nack is not None:
                            log.warning(
                                "%s rejected %s version %s: %s",
                                stream.connection_id,
                                nack.type_url,
                                nack.version,
                                nack.message,
                            )
                except AdsProtocolError as error:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
                for response in stream.session.responses(self.cache.get(node.id)):
                    yield response.data
                if ended.is_set() or self._closing:
                    return
                await wake.wait()
        finally:
            reader.cancel()
            if unwatch is not None:
                unwatch()
            if stream is not None:
                self._unregister(stream)

    async def _first_request(
        self, inbox: deque[Request], wake: asyncio.Event, ended: asyncio.Event
    ) -> Request | None:
        async with asyncio.timeout(self._first_request_timeout):
            while not inbox and not ended.is_set():
                wake.clear()
                await wake.wait()
        return inbox[0] if inbox else None

    async def _node(self, first: Request, context: grpc.aio.ServicerContext[Any, Any]) -> ProxyNode:
        try:
            return node_from_proto(first.node)
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise  # abort raises; this keeps type checkers informed

    async def _ensure_snapshot(self, node: ProxyNode) -> None:
        if self._source is None or self.cache.get(node.id) is not None:
            return
        try:
            built = self._source(node)
            snapshot = await built if inspect.isawaitable(built) else built
            if snapshot is not None and self.cache.get(node.id) is None:
                self.cache.set(node.id, snapshot)
        except Exception:  # the source is another component: log, serve nothing yet
            log.exception("building the first snapshot of node %s failed", node.id)

    def _register(
        self,
        node: ProxyNode,
        peer: str,
        wake: asyncio.Event,
        make_session: Callable[..., Session],
    ) -> _Stream:
        connection_id = f"{node.id}-{next(self._ids)}"
        session = make_session(node, clock=self._clock, control_plane_id=self._control_plane_id)
        stream = _Stream(connection_id, session, peer, self._clock(), wake)
        self._streams[connection_id] = stream
        self._per_node[node.id] = self._per_node.get(node.id, 0) + 1
        log.info("ADS stream %s connected from %s", connection_id, peer)
        return stream

    def _unregister(self, stream: _Stream) -> None:
        node_id = stream.session.node.id
        self._streams.pop(stream.connection_id, None)
        remaining = self._per_node.get(node_id, 1) - 1
        if remaining > 0:
            self._per_node[node_id] = remaining
        else:
            self._per_node.pop(node_id, None)
            if self._forget:
                self.cache.clear(node_id)
        log.info("ADS stream %s closed", stream.connection_id)

    def status(self) -> list[ProxyStatus]:
        """A frozen view of every connected stream, for `trellis proxy-status`."""
        result = []
        for stream in self._streams.values():
            node = stream.session.node
            snapshot = self.cache.get(node.id)
            result.append(
                ProxyStatus(
                    connection_id=stream.connection_id,
                    node=node,
                    peer=stream.peer,
                    connected_since=stream.connected_since,
                    snapshot_version=snapshot.version if snapshot is not None else "",
                    types=stream.session.status(snapshot),
                )
            )
        return sorted(result, key=lambda s: (s.node.id, s.connection_id))

    def connected_nodes(self) -> list[ProxyNode]:
        """One entry per connected node id (the control plane rebuilds their snapshots)."""
        nodes: dict[str, ProxyNode] = {}
        for stream in self._streams.values():
            nodes.setdefault(stream.session.node.id, stream.session.node)
        return [nodes[k] for k in sorted(nodes)]

    def close(self) -> None:
        """End every stream after what it is sending; refuse new ones."""
        self._closing = True
        for stream in self._streams.values():
            stream.wake.set()


async def _read(
    requests: AsyncIterator[Request],
    inbox: deque[Request],
    wake: asyncio.Event,
    ended: asyncio.Event,
) -> None:
    try:
        async for request in requests:
            inbox.append(request)
            wake.set()
    except Exception as error:  # the peer's stream broke: the stream ends, nothing else
        log.debug("ADS request stream ended: %r", error)
    finally:
        ended.set()
        wake.set()


@dataclass(slots=True)
class AdsServer:
    """A started ADS server: its port, its Unix socket if any, the service (for
    `status()`), and `stop`."""

    server: grpc.aio.Server
    service: AggregatedDiscoveryService
    port: int
    unix_socket: BoundSocket | None = None
    tls_port: int | None = None  # the port of `tls_address`, when served

    @property
    def socket_path(self) -> Path | None:
        return self.unix_socket.path if self.unix_socket is not None else None

    async def stop(self, grace: float = 1.0) -> None:
        """End all streams (proxies reconnect elsewhere and resync), then stop serving."""
        self.service.close()
        try:
            await self.server.stop(grace)
        finally:
            if self.unix_socket is not None:
                remove_socket(self.unix_socket)


async def serve_ads(
    address: str,
    cache: SnapshotCache,
    source: SnapshotSource | None = None,
    *,
    credentials: grpc.ServerCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    service: AggregatedDiscoveryService | None = None,
    handlers: Sequence[grpc.GenericRpcHandler] = (),
    unix_socket: Path | None = None,
    tls_address: str | None = None,
    tls_credentials: grpc.ServerCredentials | None = None,
) -> AdsServer:
    """Start serving ADS on `address` ("127.0.0.1:15010"; port 0 picks a free one).

    Pass `service` to configure it beyond the defaults; it must use `cache`.
    `handlers` are more services on the same server (the CA's certificate service).
    `unix_socket`: an absolute path where the same services are also served,
    plaintext, to its owner only (mode 0600); `AdsServer.stop` removes it.
    `tls_address` with `tls_credentials`: the same services over TLS there too.
    """
    if (tls_address is None) != (tls_credentials is None):
        raise ValueError("tls_address and tls_credentials go together")
    if unix_socket is not None:
        claim_socket_path(unix_socket)
    if service is None:
        service = AggregatedDiscoveryService(cache, source)
    elif service.cache is not cache or source is not None:
        raise ValueError("pass either a service or the cache and source to build one")
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *options])
    server.add_generic_rpc_handlers((service.rpc_handler(), *handlers))
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind the ADS server to {address}")
    tls_port: int | None = None
    if tls_address is not None and tls_credentials is not None:
        tls_port = server.add_secure_port(tls_address, tls_credentials)
        if tls_port == 0:
            raise OSError(f"cannot bind the ADS server to {tls_address} (TLS)")
    bound = _add_unix_port(server, unix_socket) if unix_socket is not None else None
    try:
        await server.start()
    except BaseException:
        if bound is not None:
            remove_socket(bound)
        raise
    log.info("ADS server listening on %s (port %d)", address, port)
    if bound is not None:
        log.info("ADS server listening on unix:%s", bound.path)
    if tls_port is not None:
        log.info("ADS server listening on %s over TLS (port %d)", tls_address, tls_port)
    return AdsServer(server, service, port, bound, tls_port)


def _add_unix_port(server: grpc.aio.Server, path: Path) -> BoundSocket:
    """Bind the server to the Unix socket `path` (plaintext) and restrict it to its owner."""
    try:
        bound = server.add_insecure_port(f"unix:{path}")
    except RuntimeError as exc:  # grpcio reports a failed bind this way
        raise OSError(f"cannot bind the ADS server to unix:{path}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot bind the ADS server to unix:{path}")
    return secure_socket(path)
