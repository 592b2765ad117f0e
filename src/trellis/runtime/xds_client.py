"""The proxy's ADS client: one gRPC stream to the control plane, updates applied live.

Each response is compiled and applied as a unit; anything that fails is NACKed
with the reason and the previous config stays. When the control plane goes away
the proxy keeps serving what it has and reconnects with jittered back-off; the
new stream resubscribes and the control plane resends the state of the world.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from trellis.core.config import AdsConfig
from trellis.errors import ConfigError
from trellis.runtime.grpc_stream import GrpcError, GrpcStream, GrpcTls
from trellis.runtime.manager import ConfigManager
from trellis.xds import compile_dynamic
from trellis.xds.ads_client import AdsClientState, Update
from trellis.xds.compile_dynamic import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)

log = logging.getLogger("trellis.xds")

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
_BACKOFF_BASE = 0.5
_BACKOFF_MAX = 30.0
_CONNECT_TIMEOUT = 5.0


@dataclass(slots=True)
class TypeStatus:
    """What the proxy holds of one resource type (for /config_dump and proxy-status)."""

    version: str = ""
    resources: dict[str, Message] = field(default_factory=dict)
    last_updated: float = 0.0
    rejected_version: str = ""
    rejected_reason: str = ""


class XdsClient:
    def __init__(
        self,
        ads: AdsConfig,
        node: base_pb2.Node,
        manager: ConfigManager,
        on_initialized: Callable[[], None],
        rng: random.Random | None = None,
        tls: GrpcTls | None = None,
    ) -> None:
        self.ads = ads
        self.tls = tls  # TLS to the control plane (its 15012 port); None: plaintext
        self.manager = manager
        self.on_initialized = on_initialized
        self.rng = rng or random.Random()
        types = [SECRET_TYPE]
        types += [CLUSTER_TYPE, ENDPOINT_TYPE] if ads.cds else []
        types += [LISTENER_TYPE, ROUTE_TYPE] if ads.lds else []
        self.state = AdsClientState(node, types)
        self.status: dict[str, TypeStatus] = {t: TypeStatus() for t in types}
        self.connected = False
        self._initialized = False
        self._stream: GrpcStream | None = None

    async def run(self) -> None:
        """Keep an ADS stream up until cancelled."""
        if self.ads.initial_fetch_timeout is not None:
            asyncio.get_running_loop().call_later(
                self.ads.initial_fetch_timeout, self._initialization_timeout
            )
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except (GrpcError, OSError, TimeoutError) as exc:
                log.warning("ADS stream to %s ended: %s", self.ads.address, exc)
            finally:
                self.connected = False
                if self._stream is not None:
                    await self._stream.close()
                    self._stream = None
            failures = 0 if time.monotonic() - started > _BACKOFF_MAX else failures + 1
            ceiling = min(_BACKOFF_MAX, _BACKOFF_BASE * 2 ** min(failures, 10))
            await asyncio.sleep(self.rng.uniform(ceiling / 2, ceiling))

    async def _session(self) -> None:
        address = self.ads.address
        stream = await GrpcStream.open(address, ADS_METHOD, _CONNECT_TIMEOUT, tls=self.tls)
        self._stream = stream
        self.connected = True
        log.info("ADS stream to %s open", address)
        for request in self.state.start():
            await stream.send(request.SerializeToString())
        while True:
            response = discovery_pb2.DiscoveryResponse()
            response.ParseFromString(await stream.recv())
            for request in await self._handle(response):
                await stream.send(request.SerializeToString())

    async def _handle(
        self, response: discovery_pb2.DiscoveryResponse
    ) -> list[discovery_pb2.DiscoveryRequest]:
        try:
            update = self.state.decode(response)
            follow_up = await self._apply(update)
        except ConfigError as exc:
            reason = str(exc)
            log.warning(
                "rejected %s version %r: %s", response.type_url, response.version_info, reason
            )
            status = self.status.get(response.type_url)
            if status is not None:
                status.rejected_version = response.version_info
                status.rejected_reason = reason
            return [self.state.nack(response.type_url, response.nonce, reason)]
        status = self.status[update.type_url]
        status.version = update.version
        status.resources = dict(self._held_after(update))
        status.last_updated = time.time()
        status.rejected_version = status.rejected_reason = ""
        requests = [self.state.ack(update)]
        requests.extend(request for request in follow_up if request is not None)
        await self._maybe_initialized()
        return requests

    async def _apply(self, update: Update) -> tuple[discovery_pb2.DiscoveryRequest | None, ...]:
        """Compile every resource first (all or nothing), then apply; returns the
        subscription changes it calls for (EDS/RDS names, SDS names)."""
        manager = self.manager
        kind = update.type_url
        resources = self._held_after(update)
        if kind == SECRET_TYPE:
            manager.apply_secrets(
                {n: compile_dynamic.secret_resource(m) for n, m in resources.items()}
            )
            return ()
        if kind == CLUSTER_TYPE:
            clusters = {n: compile_dynamic.cluster_resource(m) for n, m in resources.items()}
            names = manager.apply_clusters(clusters)
            return (
                self.state.want(ENDPOINT_TYPE, names),
                self.state.want(SECRET_TYPE, manager.ads_secret_names()),
            )
        if kind == ENDPOINT_TYPE:
            manager.apply_endpoints(
                {n: compile_dynamic.endpoint_resource(m) for n, m in resources.items()}
            )
            return ()
        if kind == LISTENER_TYPE:
            listeners = {n: compile_dynamic.listener_resource(m) for n, m in resources.items()}
            try:
                names = await manager.apply_listeners(listeners)
            except OSError as exc:
                raise ConfigError(f"cannot listen: {exc}") from exc
            return (
                self.state.want(ROUTE_TYPE, names),
                self.state.want(SECRET_TYPE, manager.ads_secret_names()),
            )
        routes = {n: compile_dynamic.route_resource(m) for n, m in resources.items()}
        manager.apply_routes(routes)
        try:
            await manager.start_warmed()
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc}") from exc
        return ()

    def _held_after(self, update: Update) -> dict[str, Message]:
        """The resources of the type once `update` is applied.

        LDS and CDS responses carry every resource. RDS and EDS responses may carry
        only some (xDS state of the world): the others stay while subscribed.
        """
        if update.type_url in (LISTENER_TYPE, CLUSTER_TYPE):
            return dict(update.resources)
        if update.type_url not in self.status:
            return {}
        wanted = self.state.names(update.type_url)
        held = {**self.status[update.type_url].resources, **update.resources}
        return {name: message for name, message in held.items() if name in wanted}

    async def _maybe_initialized(self) -> None:
        """Envoy's rule: initialized once every subscribed type has been received once."""
        if self._initialized:
            return
        for type_url, status in self.status.items():
            wanted = type_url in (LISTENER_TYPE, CLUSTER_TYPE) or self.state.wants_any(type_url)
            if wanted and not status.last_updated:
                return
        self._initialized = True
        self.on_initialized()

    def _initialization_timeout(self) -> None:
        if not self._initialized:
            log.warning("no complete config from the control plane yet; serving what there is")
            self._initialized = True
            self.on_initialized()
