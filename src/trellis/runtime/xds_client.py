"""The proxy's ADS client: one gRPC stream to the control plane, updates applied live.

The stream speaks state of the world (`AdsClientState`) or, with `AdsConfig.delta`,
incremental xDS (`DeltaAdsClientState`); either hands over the complete view of a
type per response, and that view is compiled and applied here as a unit, the same
way for both. Anything that fails is NACKed with the reason and the previous
config stays. When the control plane goes away the proxy keeps serving what it
has and reconnects with jittered back-off; the new stream resubscribes (with
delta, naming the versions it holds) and the control plane resends what differs.

Over delta with LDS the proxy also speaks VHDS: its node lists `VHDS_CLIENT_FEATURE`,
route configurations may then arrive without their virtual hosts (with `vhds`),
and those come one by one as VirtualHost resources under the route configuration's
name. The routes applied are the two merged; a change to one virtual host
recompiles that host alone and merges again only its route configuration.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from trellis.core.config import AdsConfig, RouteConfig, VirtualHost
from trellis.errors import ConfigError
from trellis.runtime.grpc_stream import GrpcError, GrpcStream, GrpcTls
from trellis.runtime.manager import ConfigManager
from trellis.xds import compile_dynamic
from trellis.xds.ads_client import AdsClientState, AdsProtocol, Request, Response, Update
from trellis.xds.ads_delta_client import DeltaAdsClientState
from trellis.xds.compile_dynamic import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)
from trellis.xds.vhds import VHDS_CLIENT_FEATURE, VIRTUAL_HOST_TYPE, covered, route_config_of

log = logging.getLogger("trellis.xds")
T = TypeVar("T")

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
        vhds = ads.delta and ads.lds  # Envoy: VHDS over incremental xDS only
        if vhds:
            types.append(VIRTUAL_HOST_TYPE)
            node = _with_feature(node, VHDS_CLIENT_FEATURE)
        self.state: AdsProtocol = (
            DeltaAdsClientState(node, types) if ads.delta else AdsClientState(node, types)
        )
        self.status: dict[str, TypeStatus] = {t: TypeStatus() for t in types}
        # Per type, each resource message last compiled and its result: a resource
        # that did not change keeps its message object (delta xDS, and the RDS/EDS
        # resources SotW keeps), so a response costs compiling only what it carries.
        self._compiled: dict[str, dict[str, tuple[Message, Any]]] = {t: {} for t in types}
        self._route_resource = functools.partial(compile_dynamic.route_resource, vhds=vhds)
        # Routes as applied: compiled from RDS, the VHDS virtual hosts of each route
        # configuration that takes them (by resource name), and the two merged.
        self._routes: dict[str, RouteConfig] = {}
        self._hosts: dict[str, dict[str, VirtualHost]] = {}
        self._merged: dict[str, RouteConfig] = {}
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
        state = self.state
        stream = await GrpcStream.open(address, state.method, _CONNECT_TIMEOUT, tls=self.tls)
        self._stream = stream
        self.connected = True
        log.info("ADS stream to %s open (%s)", address, "delta" if self.ads.delta else "sotw")
        for request in state.start():
            await stream.send(request.SerializeToString())
        while True:
            response = state.response_type()
            response.ParseFromString(await stream.recv())
            for request in await self._handle(response):
                await stream.send(request.SerializeToString())

    async def _handle(self, response: Response) -> list[Request]:
        """Apply one response (SotW or delta); the ACK or NACK and subscriptions to send."""
        try:
            update = self.state.decode(response)
            follow_up = await self._apply(update)
        except ConfigError as exc:
            reason = str(exc)
            version = _version(response)
            log.warning("rejected %s version %r: %s", response.type_url, version, reason)
            status = self.status.get(response.type_url)
            if status is not None:
                status.rejected_version = version
                status.rejected_reason = reason
            return [self.state.nack(response.type_url, response.nonce, reason)]
        status = self.status[update.type_url]
        status.version = update.version
        status.resources = dict(update.resources)
        status.last_updated = time.time()
        status.rejected_version = status.rejected_reason = ""
        requests = [self.state.ack(update)]
        requests.extend(request for request in follow_up if request is not None)
        await self._maybe_initialized()
        return requests

    async def _apply(self, update: Update) -> tuple[Request | None, ...]:
        """Compile every resource first (all or nothing), then apply; returns the
        subscription changes it calls for (EDS/RDS names, SDS names)."""
        manager = self.manager
        kind = update.type_url
        resources = update.resources
        if kind == SECRET_TYPE:
            manager.apply_secrets(self._compile(kind, resources, compile_dynamic.secret_resource))
            return ()
        if kind == CLUSTER_TYPE:
            clusters = self._compile(kind, resources, compile_dynamic.cluster_resource)
            names = manager.apply_clusters(clusters)
            return (
                self._want(ENDPOINT_TYPE, names),
                self._want(SECRET_TYPE, manager.ads_secret_names()),
            )
        if kind == ENDPOINT_TYPE:
            manager.apply_endpoints(
                self._compile(kind, resources, compile_dynamic.endpoint_resource)
            )
            return ()
        if kind == LISTENER_TYPE:
            listeners = self._compile(kind, resources, compile_dynamic.listener_resource)
            try:
                names = await manager.apply_listeners(listeners)
            except OSError as exc:
                raise ConfigError(f"cannot listen: {exc}") from exc
            return (
                self._want(ROUTE_TYPE, names),
                self._want(SECRET_TYPE, manager.ads_secret_names()),
            )
        if kind == ROUTE_TYPE:
            routes = self._compile(kind, resources, self._route_resource)
            vhds = {name for name, message in resources.items() if _takes_vhds(message)}
            await self._apply_routes(routes, {n: self._hosts.get(n, {}) for n in vhds}, routes)
            return (self._want(VIRTUAL_HOST_TYPE, vhds),)
        hosts: dict[str, dict[str, VirtualHost]] = {name: {} for name in self._hosts}
        compiled = self._compile(kind, resources, compile_dynamic.virtual_host_resource)
        for name, host in compiled.items():
            hosts.setdefault(route_config_of(name), {})[name] = host
        touched = {n for n, held in hosts.items() if held != self._hosts.get(n)}
        await self._apply_routes(self._routes, hosts, touched)
        return ()

    async def _apply_routes(
        self,
        routes: dict[str, RouteConfig],
        hosts: dict[str, dict[str, VirtualHost]],
        touched: Collection[str],
    ) -> None:
        """Apply `routes`, each VHDS one with its `hosts`; only the `touched` ones are
        merged again (a domain clash raises before anything changes)."""
        merged = {
            name: _merge(config, hosts.get(name)) if name in touched else self._merged[name]
            for name, config in routes.items()
        }
        self.manager.apply_routes(merged)
        self._routes, self._hosts, self._merged = routes, hosts, merged
        try:
            await self.manager.start_warmed()
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc}") from exc

    def _compile(
        self, type_url: str, resources: Mapping[str, Message], compile_one: Callable[[Message], T]
    ) -> dict[str, T]:
        """Every resource compiled (all or nothing: ConfigError names the bad one),
        reusing the result for a message compiled before."""
        known = self._compiled[type_url]
        compiled: dict[str, T] = {}
        for name, message in resources.items():
            hit = known.get(name)
            compiled[name] = (
                hit[1] if hit is not None and hit[0] is message else compile_one(message)
            )
        self._compiled[type_url] = {n: (resources[n], c) for n, c in compiled.items()}
        return compiled

    def _want(self, type_url: str, names: set[str]) -> Request | None:
        """Subscribe to `names` of a named type; what is no longer named stops being
        shown as held at once (with delta the server sends nothing for it)."""
        request = self.state.want(type_url, names)
        status = self.status.get(type_url)
        if request is not None and status is not None:
            wanted = self.state.names(type_url)
            by_route_config = type_url == VIRTUAL_HOST_TYPE
            status.resources = {
                n: m
                for n, m in status.resources.items()
                if covered(n, wanted, by_route_config=by_route_config)
            }
        return request

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


def _with_feature(node: base_pb2.Node, feature: str) -> base_pb2.Node:
    """A copy of `node` that lists `feature` in its `client_features`."""
    copy = base_pb2.Node()
    copy.CopyFrom(node)
    if feature not in copy.client_features:
        copy.client_features.append(feature)
    return copy


def _merge(config: RouteConfig, hosts: dict[str, VirtualHost] | None) -> RouteConfig:
    """A route configuration with its VHDS virtual hosts (None: it takes none)."""
    return config if hosts is None else compile_dynamic.vhds_route_config(config, hosts.values())


def _takes_vhds(message: Message) -> bool:
    return isinstance(message, route_pb2.RouteConfiguration) and message.HasField("vhds")


def _version(response: Response) -> str:
    """The version a response states: `version_info` (SotW) or `system_version_info`."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return str(response.system_version_info)
    return str(response.version_info)
