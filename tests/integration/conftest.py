"""Fixtures: real upstream servers and `trellis proxy` subprocesses on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import LIVE_PROXIES, ProxyFactory, UpstreamFactory, proxy_manager, upstream_manager
from .tcp_upstream import TcpUpstream
from .upstream import HttpUpstream


def pytest_configure(config: pytest.Config) -> None:
    config.stash[LIVE_PROXIES] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for proxy in item.config.stash[LIVE_PROXIES]:
            report.sections.append((f"proxy {proxy.bootstrap_path.name}", proxy.describe()))
    return report


@pytest.fixture
def start_proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxyFactory]:
    """Factory: start_proxy(bootstrap_dict, wait_ready=True, expect_exit=False) -> ProxyProcess."""
    with proxy_manager(request.config, tmp_path) as start:
        yield start


@pytest.fixture
def make_upstream() -> Iterator[UpstreamFactory]:
    """Factory: make_upstream(name, hold_all=False) -> a started HttpUpstream."""
    with upstream_manager() as make:
        yield make


@pytest.fixture
def upstream(make_upstream: UpstreamFactory) -> HttpUpstream:
    return make_upstream("upstream")


@pytest.fixture
def tcp_upstream_factory() -> Generator[Callable[[str], TcpUpstream], None, None]:
    servers: list[TcpUpstream] = []

    def make(mode: str = "reply") -> TcpUpstream:
        server = TcpUpstream(mode).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
