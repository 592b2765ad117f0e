"""Large bodies stream with bounded proxy memory; WebSocket upgrades pass through."""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from .bootstrap import free_port, simple_http
from .client import RssMonitor
from .harness import ProxyFactory
from .upstream import HttpUpstream
from .websocket_upstream import WebSocketEcho

SIZE = 100 * 1024 * 1024
BLOCK = 256 * 1024
MAX_GROWTH_MB = 50


def _blocks(total: int) -> Iterator[bytes]:
    block = b"u" * BLOCK
    sent = 0
    while sent < total:
        piece = block[: min(BLOCK, total - sent)]
        sent += len(piece)
        yield piece


@pytest.mark.slow
def test_100mb_upload_streams_with_bounded_memory(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    """The upstream waits 1 s before reading: without flow control the proxy would buffer it all."""
    port = free_port()
    proxy = start_proxy(simple_http(free_port(), port, [upstream.port]))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        with RssMonitor(proxy.pid) as rss:
            conn.request(
                "POST",
                "/sink?pause=1",
                body=_blocks(SIZE),
                headers={"Host": "svc", "Content-Length": str(SIZE)},
            )
            resp = conn.getresponse()
            body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body[:300]
    assert json.loads(body) == {"length": SIZE}
    (seen,) = upstream.requests
    assert seen.body_length == SIZE
    assert rss.growth_mb < MAX_GROWTH_MB, (
        f"proxy RSS grew {rss.growth_mb:.1f} MB (baseline {rss.baseline_kb // 1024} MB) "
        "for a 100 MB upload"
    )


@pytest.mark.slow
def test_100mb_download_streams_with_bounded_memory(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    """The client stops reading for 1 s, so a proxy without flow control would buffer it all."""
    port = free_port()
    proxy = start_proxy(simple_http(free_port(), port, [upstream.port]))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    received = 0
    try:
        with RssMonitor(proxy.pid) as rss:
            conn.request("GET", f"/bytes/{SIZE}?chunked=1", headers={"Host": "svc"})
            resp = conn.getresponse()
            assert resp.status == 200
            first = resp.read(BLOCK)
            received += len(first)
            time.sleep(1.0)
            while chunk := resp.read(BLOCK):
                received += len(chunk)
    finally:
        conn.close()
    assert received == SIZE
    assert rss.growth_mb < MAX_GROWTH_MB, (
        f"proxy RSS grew {rss.growth_mb:.1f} MB (baseline {rss.baseline_kb // 1024} MB) "
        "for a 100 MB download"
    )


def test_websocket_echo(start_proxy: ProxyFactory) -> None:
    echo = WebSocketEcho().start()
    try:
        port = free_port()
        hcm = {"upgrade_configs": [{"upgrade_type": "websocket"}]}
        proxy = start_proxy(simple_http(free_port(), port, [echo.port], hcm_extra=hcm))
        with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=5, close_timeout=5) as ws:
            ws.send("hello through the mesh")
            assert ws.recv(timeout=5) == "hello through the mesh"
            payload = bytes(range(256)) * 1024
            ws.send(payload)
            assert ws.recv(timeout=5) == payload
            for i in range(20):
                ws.send(f"message {i}")
            assert [ws.recv(timeout=5) for _ in range(20)] == [f"message {i}" for i in range(20)]
        (handshake,) = echo.handshakes
        assert handshake.get("upgrade", "").lower() == "websocket"
        assert "upgrade" in handshake.get("connection", "").lower()
        assert "sec-websocket-key" in handshake
        # the closed tunnel must not count as in flight: SIGTERM now exits at once
        proxy.expect_exit = True
        proxy.signal(signal.SIGTERM)
        sent = time.monotonic()
        assert proxy.wait_exit(8) == 0, proxy.describe()
        took = time.monotonic() - sent
        assert took < 2.0, f"SIGTERM after a finished WebSocket session took {took:.1f}s to exit"
    finally:
        echo.stop()
