"""`trellis proxy`: load a bootstrap, serve until told to stop, drain, exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import uvloop
from envoy.config.bootstrap.v3 import bootstrap_pb2

from trellis.core.config import HttpConnectionManager, ProxyConfig
from trellis.errors import ConfigError
from trellis.runtime.server import ProxyServer
from trellis.runtime.xds_client import XdsClient
from trellis.xds.bootstrap import load_bootstrap, parse_bootstrap, with_ads
from trellis.xds.compile import compile_bootstrap
from trellis.xds.config_dump import config_dump

log = logging.getLogger("trellis.proxy")


def load(
    bootstrap: Path | None,
    *,
    xds: tuple[str, int] | None = None,
    node: Mapping[str, object] | None = None,
    admin_port: int | None = None,
) -> tuple[bootstrap_pb2.Bootstrap, ProxyConfig]:
    """The bootstrap (file, or built from flags) and its compiled config."""
    source = str(bootstrap) if bootstrap is not None else "--xds"
    message = load_bootstrap(bootstrap) if bootstrap is not None else bootstrap_pb2.Bootstrap()
    extra: dict[str, object] = {}
    if node:
        extra["node"] = dict(node)
    if admin_port is not None:
        extra["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        }
    if extra:
        message.MergeFrom(parse_bootstrap(extra, source))
    if xds is not None:
        message = with_ads(message, *xds)
    config = compile_bootstrap(message, source)
    if config.ads is not None and config.admin is not None:
        # Lets the control plane find this proxy's /config_dump (trellis proxy-config).
        fields = message.node.metadata.fields
        if "TRELLIS_ADMIN_ADDRESS" not in fields:
            fields["TRELLIS_ADMIN_ADDRESS"].string_value = str(config.admin.address)
    return message, config


def run(
    bootstrap: Path | None,
    *,
    drain_time: float | None = None,
    xds: tuple[str, int] | None = None,
    node: Mapping[str, object] | None = None,
    admin_port: int | None = None,
) -> int:
    """Run the proxy in this process; returns the exit status.

    `drain_time` bounds the drain on SIGTERM; by default it is the longest
    `drain_timeout` of the bootstrap's HTTP connection managers (Envoy's 5 s).
    """
    try:
        message, config = load(bootstrap, xds=xds, node=node, admin_port=admin_port)
    except ConfigError as exc:
        print(f"trellis proxy: invalid bootstrap: {exc}", file=sys.stderr)
        return 1
    if drain_time is None:
        drain_time = max(
            (
                lst.filter.drain_timeout
                for lst in config.listeners
                if isinstance(lst.filter, HttpConnectionManager)
            ),
            default=5.0,
        )
    loaded_at = time.time()
    client: list[XdsClient] = []

    def dump() -> dict[str, object]:
        return config_dump(message, loaded_at, client[0].status if client else None)

    server = ProxyServer(config, dump, drain_time=drain_time)
    if config.ads is not None:
        client.append(XdsClient(config.ads, message.node, server.manager, server.set_live))
    return uvloop.run(_serve(server, client[0] if client else None))


async def _serve(server: ProxyServer, client: XdsClient | None) -> int:
    loop = asyncio.get_running_loop()
    try:
        await server.start(live=client is None)
    except OSError as exc:
        print(f"trellis proxy: cannot start: {exc}", file=sys.stderr)
        await server.shutdown(drain=False)
        return 1
    xds_task = loop.create_task(client.run(), name="ads client") if client is not None else None
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
    if xds_task is not None:
        xds_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await xds_task
    await server.shutdown(drain=draining)
    log.info("proxy stopped")
    return 0
