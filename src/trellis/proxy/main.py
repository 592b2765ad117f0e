"""`trellis proxy`: load a bootstrap, serve until told to stop, drain, exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import uvloop

from trellis.core.config import HttpConnectionManager
from trellis.errors import ConfigError
from trellis.runtime.server import ProxyServer
from trellis.xds.compile import compile_file
from trellis.xds.config_dump import config_dump

log = logging.getLogger("trellis.proxy")


def run(bootstrap: Path, *, drain_time: float | None = None) -> int:
    """Run the proxy in this process; returns the exit status.

    `drain_time` bounds the drain on SIGTERM; by default it is the longest
    `drain_timeout` of the bootstrap's HTTP connection managers (Envoy's 5 s).
    """
    try:
        message, config = compile_file(bootstrap)
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
    server = ProxyServer(config, lambda: config_dump(message, loaded_at), drain_time=drain_time)
    return uvloop.run(_serve(server))


async def _serve(server: ProxyServer) -> int:
    loop = asyncio.get_running_loop()
    try:
        await server.start()
    except OSError as exc:
        print(f"trellis proxy: cannot start: {exc}", file=sys.stderr)
        await server.shutdown(drain=False)
        return 1
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
    log.info("proxy ready")
    await server.wait_stopped()
    await server.shutdown(drain=draining)
    log.info("proxy stopped")
    return 0
