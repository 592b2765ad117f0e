"""The metrics collector against real sockets: a proxy that answers, one that never does,
one that is gone, and one that sends too much. The round ends within the timeout
and the ring stays bounded."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx

from trellis.controlplane.stats_collector import MetricsCollector, ScrapeTarget

METRICS = (
    'istio_requests_total{reporter="destination",source_workload="web",'
    'source_workload_namespace="shop",destination_workload="cart",'
    'destination_workload_namespace="shop",destination_service_name="cart",'
    'destination_service_namespace="shop",response_code="200",'
    'connection_security_policy="mutual_tls"} 7\n'
)


async def _serve(body: bytes) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def _round() -> None:
    good = await _serve(METRICS.encode())
    huge = await _serve(b"#" * 5000)
    silent = socket.create_server(("127.0.0.1", 0))  # listens, never answers
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    targets = [
        ScrapeTarget("good", f"127.0.0.1:{_port(good)}"),
        ScrapeTarget("silent", f"127.0.0.1:{silent.getsockname()[1]}"),
        ScrapeTarget("gone", f"127.0.0.1:{closed_port}"),
        ScrapeTarget("huge", f"127.0.0.1:{_port(huge)}"),
    ]
    collector = MetricsCollector(
        lambda: targets, interval=1.0, timeout=0.5, retention=3.0, max_bytes=1000
    )
    try:
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            sample = await collector.collect(client)
            assert time.monotonic() - started < 1.5  # the silent proxy costs its timeout only
            for _ in range(6):
                await collector.collect(client)
    finally:
        silent.close()
        good.close()
        huge.close()
    assert set(sample.proxies) == {"good"}
    (value,) = sample.proxies["good"].values()
    assert value == 7
    outcomes = collector.outcomes
    assert outcomes["good"].error == "" and outcomes["good"].series == 1
    assert "no answer within 0.5s" in outcomes["silent"].error
    assert outcomes["gone"].error
    assert "more than 1000 bytes" in outcomes["huge"].error
    assert len(collector.samples) == 5  # retention / interval + 2


def test_a_dead_or_slow_proxy_costs_only_its_timeout() -> None:
    asyncio.run(_round())
