"""Process and server managers shared by the fixtures and module-scoped environments."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .bootstrap import Json
from .proxyproc import ProxyProcess
from .upstream import HttpUpstream

LIVE_PROXIES = pytest.StashKey[list[ProxyProcess]]()

ProxyFactory = Callable[..., ProxyProcess]
UpstreamFactory = Callable[..., HttpUpstream]


@contextmanager
def proxy_manager(config: pytest.Config, workdir: Path) -> Iterator[ProxyFactory]:
    """Start proxies on demand; at the end stop them and fail if one crashed."""
    started: list[ProxyProcess] = []
    live = config.stash[LIVE_PROXIES]

    def start(
        bootstrap: Json,
        *,
        wait_ready: bool = True,
        name: str | None = None,
        expect_exit: bool = False,
    ) -> ProxyProcess:
        proxy = ProxyProcess(bootstrap, workdir, name or f"proxy{len(started)}")
        proxy.expect_exit = expect_exit
        started.append(proxy)
        live.append(proxy)
        try:
            return proxy.start(wait_ready=wait_ready)
        except AssertionError:
            proxy.expect_exit = True  # the test already fails with the proxy's stderr
            raise

    try:
        yield start
    finally:
        problems = []
        for proxy in started:
            live.remove(proxy)
            if not proxy.started:
                continue
            died = not proxy.alive() and not proxy.expect_exit
            rc = proxy.proc.poll()
            proxy.stop()
            if died:
                problems.append(f"proxy exited during the test (rc={rc})\n{proxy.describe()}")
            crash = proxy.crash_report()
            if crash:
                problems.append(crash)
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@contextmanager
def upstream_manager() -> Iterator[UpstreamFactory]:
    servers: list[HttpUpstream] = []

    def make(name: str = "upstream", **kwargs: Any) -> HttpUpstream:
        server = HttpUpstream(name, **kwargs).start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.release_held()
            server.stop()
