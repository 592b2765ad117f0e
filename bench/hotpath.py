"""The proxy's Python cost per request, without sockets.

Drives the real downstream and upstream protocol objects of `trellis proxy`
with in-memory transports: a keep-alive GET goes in, a 1 KiB response from the
pooled upstream connection comes back, and the time per round trip is what the
proxy spends in Python (parsing callbacks, routing, headers, metrics, timers).
The kernel's share (the four socket calls per request) is not in it, which makes
this number steadier than wrk's on a shared machine: use it to compare changes
to the hot path, and `proxy_bench.py` for throughput against nginx.

    .venv/bin/python bench/hotpath.py [--requests N] [--repeats K]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import uvloop

from _servers import trellis_bootstrap
from trellis.core.config import ProxyConfig
from trellis.runtime.downstream import DownstreamHttp1
from trellis.runtime.http_context import HttpContext
from trellis.runtime.listener import ListenerRuntime
from trellis.runtime.server import ProxyServer
from trellis.runtime.upstream import UpstreamConnection
from trellis.xds.compile import compile_file

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18000\r\nUser-Agent: hotpath\r\n\r\n"
BODY = b"x" * 1024
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 21:51:50 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Wed, 25 Nov 2026 21:30:05 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6565e6bd-400"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY
)


class MemoryTransport:
    """Just enough of asyncio.Transport for the proxy's protocols."""

    def __init__(self) -> None:
        self.written = 0
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.written += sum(map(len, chunks))  # no generator: the harness's cost stays small

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        pass


def bench_config() -> ProxyConfig:
    """The same bootstrap `proxy_bench.py` gives `trellis proxy`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "bootstrap.json")
        path.write_text(json.dumps(trellis_bootstrap(18000, 18001, 18080)))
        return compile_file(path)[1]


async def measure(config: ProxyConfig, requests: int, repeats: int) -> list[float]:
    server = ProxyServer(config, dict)
    contexts = server.manager.contexts_for(config.listeners[0])
    assert contexts is not None
    listener = ListenerRuntime(config.listeners[0], contexts, server.budget, server.stats)
    assert isinstance(listener.chains[0].context, HttpContext)
    down = DownstreamHttp1(listener, listener.chains[0])
    down_transport = MemoryTransport()
    down.connection_made(down_transport)  # type: ignore[arg-type]
    cluster = next(iter(server.clusters.clusters.values()))
    host = cluster.hosts[0]
    up = UpstreamConnection(host)
    up.connection_made(MemoryTransport())  # type: ignore[arg-type]
    host.stats.active_connections += 1
    cluster.limits.try_acquire_connection()
    host.pool.idle.append(up)

    def round_trips(count: int) -> None:
        for _ in range(count):
            down.data_received(REQUEST)
            up.data_received(RESPONSE)

    round_trips(2000)  # warm caches; also checks the path works
    if down_transport.written < 2000 * len(BODY):
        raise SystemExit("hotpath: responses did not reach the client")
    results = []
    for _ in range(repeats):
        start = time.perf_counter()
        round_trips(requests)
        results.append((time.perf_counter() - start) / requests * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = uvloop.run(measure(bench_config(), args.requests, args.repeats))
    best, median = min(results), sorted(results)[len(results) // 2]
    print(f"python cost per proxied request: best {best:.2f} us, median {median:.2f} us")
    print(f"({args.repeats} x {args.requests} keep-alive GETs, 1 KiB responses, no sockets)")


if __name__ == "__main__":
    main()
