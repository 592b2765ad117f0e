"""`trellis proxy`: load a bootstrap, serve until told to stop, drain, exit.

With a join token, the proxy first obtains its workload certificate from the
control plane's CA (`runtime.identity`), waiting a bounded time, and keeps it
renewed while it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import uvloop
from envoy.config.bootstrap.v3 import bootstrap_pb2

from trellis.core.addresses import EndpointAddress, SocketAddress
from trellis.core.app_probe import AppProbe
from trellis.core.config import HttpConnectionManager, ProxyConfig
from trellis.core.tls import WORKLOAD_CERTIFICATE, TlsCertificateSecret
from trellis.errors import ConfigError
from trellis.runtime.heap_trim import trim_heap_forever
from trellis.runtime.server import ProxyServer
from trellis.xds.bootstrap import load_bootstrap, parse_bootstrap, with_ads
from trellis.xds.compile import compile_bootstrap

if TYPE_CHECKING:  # imported when used: a static proxy needs neither h2 nor the CA client
    from trellis.runtime.identity import CertificateManager
    from trellis.runtime.xds_client import XdsClient

log = logging.getLogger("trellis.proxy")

FIRST_CERTIFICATE_TIMEOUT = 30.0


def load(
    bootstrap: str | os.PathLike[str] | None,
    *,
    xds: EndpointAddress | None = None,
    xds_delta: bool = True,
    node: Mapping[str, object] | None = None,
    admin_port: int | None = None,
    admin_address: str = "127.0.0.1",
) -> tuple[bootstrap_pb2.Bootstrap, ProxyConfig]:
    """The bootstrap (file, or built from flags) and its compiled config
    (`admin_port`: serve the admin interface on `admin_address`:`admin_port`;
    `xds_delta`: `xds` speaks incremental xDS, else state of the world)."""
    source = str(bootstrap) if bootstrap is not None else "--xds"
    message = load_bootstrap(bootstrap) if bootstrap is not None else bootstrap_pb2.Bootstrap()
    extra: dict[str, object] = {}
    if node:
        extra["node"] = dict(node)
    if admin_port is not None:
        extra["admin"] = {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}}
        }
    if extra:
        message.MergeFrom(parse_bootstrap(extra, source))
    if xds is not None:
        message = with_ads(message, xds, delta=xds_delta)
    config = compile_bootstrap(message, source)
    if config.ads is not None and config.admin is not None:
        # Lets the control plane find this proxy's /config_dump (trellis proxy-config).
        fields = message.node.metadata.fields
        if "TRELLIS_ADMIN_ADDRESS" not in fields:
            fields["TRELLIS_ADMIN_ADDRESS"].string_value = str(config.admin.address)
    return message, config


def run(
    bootstrap: str | os.PathLike[str] | None,
    *,
    drain_time: float | None = None,
    xds: EndpointAddress | None = None,
    xds_delta: bool = True,
    node: Mapping[str, object] | None = None,
    admin_port: int | None = None,
    admin_address: str = "127.0.0.1",
    ca: EndpointAddress | None = None,
    join_token_file: str | os.PathLike[str] | None = None,
    join_token: str | None = None,
    stats_port: int | None = None,
    health_port: int | None = None,
    public_address: str = "127.0.0.1",
    xds_tls: tuple[str, str] | None = None,
    app_probes: Mapping[str, AppProbe] | None = None,
    app_probe_host: str = "127.0.0.1",
) -> int:
    """Run the proxy in this process; returns the exit status.

    `drain_time` bounds the drain on SIGTERM; by default it is the longest
    `drain_timeout` of the bootstrap's HTTP connection managers (Envoy's 5 s).
    With `join_token_file` (read on every request) or `join_token`, the proxy
    gets its certificate from the CA at `ca` (default: the `xds` address).
    `stats_port` and `health_port` (on `public_address`) serve what Istio's
    agent serves beside Envoy: the merged `/stats/prometheus` and `/healthz/ready`.
    `xds_tls` (root PEM, server name): the ADS stream, and the CA when it is a
    HOST:PORT, go over TLS checked against them (the control plane's 15012).
    `xds_delta` (the default): `xds` speaks incremental xDS, else state of the world.
    `app_probes` (by `/app-health/...` path) are answered on the stats port, by
    probing the application at `app_probe_host`.
    """
    try:
        message, config = load(
            bootstrap,
            xds=xds,
            xds_delta=xds_delta,
            node=node,
            admin_port=admin_port,
            admin_address=admin_address,
        )
    except ConfigError as exc:
        print(f"trellis proxy: invalid bootstrap: {exc}", file=sys.stderr)
        return 1
    if drain_time is None:
        drain_time = max(
            (
                chain.filter.drain_timeout
                for lst in config.listeners
                for chain in lst.chains
                if isinstance(chain.filter, HttpConnectionManager)
            ),
            default=5.0,
        )
    loaded_at = time.time()
    client: list[XdsClient] = []
    identity = _identity(ca or xds, join_token_file, join_token, xds_tls)
    if isinstance(identity, str):
        print(f"trellis proxy: {identity}", file=sys.stderr)
        return 1

    def dump() -> dict[str, object]:
        # The admin API's messages (~0.3 MiB) are loaded when a dump is first asked for.
        from trellis.xds.config_dump import config_dump  # noqa: PLC0415

        status = identity.status() if identity is not None else None
        return config_dump(
            message,
            loaded_at,
            client[0].status if client else None,
            secrets=[status] if status is not None else [],
        )

    server = ProxyServer(
        config,
        dump,
        drain_time=drain_time,
        stats_address=_at(public_address, stats_port),
        health_address=_at(public_address, health_port),
        app_probes=app_probes,
        app_probe_host=app_probe_host,
    )
    if config.ads is not None:
        from trellis.runtime.grpc_stream import GrpcTls  # noqa: PLC0415
        from trellis.runtime.xds_client import XdsClient  # noqa: PLC0415 - h2 only with ADS

        tls = GrpcTls(*xds_tls) if xds_tls is not None else None
        client.append(XdsClient(config.ads, message.node, server.manager, server.set_live, tls=tls))
    return uvloop.run(_serve(server, client[0] if client else None, identity))


def _at(host: str, port: int | None) -> SocketAddress | None:
    return SocketAddress(host, port) if port is not None else None


def _identity(
    ca: EndpointAddress | None,
    token_file: str | os.PathLike[str] | None,
    token: str | None,
    xds_tls: tuple[str, str] | None = None,
) -> CertificateManager | str | None:
    """The certificate manager when a join token is given; a problem as text."""
    if token_file is None and not token:
        return None  # before the import: without a token the proxy needs no CA client (nor h2)
    from trellis.runtime.grpc_stream import GrpcTls  # noqa: PLC0415
    from trellis.runtime.identity import (  # noqa: PLC0415 - only with a join token
        CertificateManager,
        IdentitySettings,
        TokenSource,
        token_from_file,
        token_value,
    )

    source: TokenSource
    if token_file is not None:
        source = token_from_file(token_file)
    else:
        assert token is not None
        source = token_value(token.strip())
    if ca is None:
        return "a join token needs the CA's address: give --ca-address or --xds"
    # The CA on a HOST:PORT shares the control plane's TLS; a Unix socket is local.
    tls = GrpcTls(*xds_tls) if xds_tls is not None and isinstance(ca, SocketAddress) else None
    return CertificateManager(IdentitySettings(ca=ca, tls=tls), source)


async def _first_certificate(identity: CertificateManager) -> asyncio.Task[None] | None:
    """Start renewing; wait for the first certificate. None (after saying why) if none came."""
    from trellis.runtime.ca_client import IdentityError  # noqa: PLC0415

    task = asyncio.get_running_loop().create_task(identity.run(), name="certificate manager")
    try:
        cert = await identity.wait_first(FIRST_CERTIFICATE_TIMEOUT)
    except IdentityError as exc:
        print(f"trellis proxy: no workload certificate: {exc}", file=sys.stderr)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    log.info("workload identity %s (certificate %s)", cert.spiffe_id, cert.serial)
    return task


async def _serve(
    server: ProxyServer, client: XdsClient | None, identity: CertificateManager | None = None
) -> int:
    loop = asyncio.get_running_loop()
    identity_task = None
    if identity is not None:
        # Every certificate (the first, then each renewal) becomes the secret
        # `default` that TLS contexts name; new connections use the newest.
        identity.add_listener(
            lambda cert: server.secrets.set_local(
                WORKLOAD_CERTIFICATE,
                TlsCertificateSecret(cert.cert_chain_pem.encode(), cert.key_pem.encode()),
            )
        )
        identity_task = await _first_certificate(identity)
        if identity_task is None:
            return 1
    # Before the ports open: the first scrape already holds everything.
    app_metrics = server.config.node.app_metrics
    if app_metrics is not None:
        from trellis.runtime.app_metrics import AppMetricsScraper  # noqa: PLC0415

        server.prometheus_sources.add_async(AppMetricsScraper(app_metrics).render)
    if identity is not None:
        server.prometheus_sources.add(identity.prometheus)
    try:
        await server.start(live=client is None)
    except OSError as exc:
        print(f"trellis proxy: cannot start: {exc}", file=sys.stderr)
        await server.shutdown(drain=False)
        if identity_task is not None:
            identity_task.cancel()
        return 1
    if identity is not None and server.admin is not None:
        server.admin.add_json_route("/certs", lambda: _certs(identity))
    xds_task = loop.create_task(client.run(), name="ads client") if client is not None else None
    trim_task = loop.create_task(trim_heap_forever(), name="heap trim")
    draining = False

    def on_signal(signum: signal.Signals) -> None:
        nonlocal draining
        if draining:  # a second signal cuts the drain short
            server.stop_draining()
        log.info("received %s: draining", signum.name)
        draining = True
        server.quit()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info("proxy ready" if client is None else "proxy started; waiting for config over ADS")
    await server.wait_stopped()
    for task in (xds_task, identity_task, trim_task):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await server.shutdown(drain=draining)
    log.info("proxy stopped")
    return 0


def _certs(identity: CertificateManager) -> dict[str, object]:
    from trellis.xds.secret_dump import certs_json  # noqa: PLC0415 - see `dump`

    status = identity.status()
    return certs_json([status] if status is not None else [], time.time())
