"""The processes a transparent-capture test runs inside its network namespace.

`python netns_peer.py serve HTTP_PORT TCP_PORT [HOST:PORT...]`: on 127.0.0.1, an
HTTP server answering `from-http-app` and a TCP server sending `from-tcp-app`
and closing (the same TCP server also on each HOST:PORT); prints `ready`, then
serves until its stdin closes (at most `SERVE_LIMIT` s).

`python netns_peer.py fetch ADMIN_PORT STEP...`: waits until the proxy's admin
port answers `/ready`, then runs each step in order and prints a JSON list of
results. Steps: `http:PORT` (a GET to 127.0.0.1:PORT), `tcp:PORT` (connect,
read until closed), `admin:PATH` (a GET to the admin port); `http:HOST:PORT` and
`tcp:HOST:PORT` dial HOST instead of 127.0.0.1.

Only the standard library: it runs under `ip netns exec`, separate from pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import sys
import threading
import time
from typing import Any

SERVE_LIMIT = 120.0
READY_LIMIT = 15.0
IO_TIMEOUT = 5.0
HTTP_BODY = b"from-http-app"
TCP_BANNER = b"from-tcp-app\n"


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        writer.write(head % len(HTTP_BODY) + HTTP_BODY)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        pass
    finally:
        writer.close()


async def _tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(TCP_BANNER)
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(http_port: int, tcp_port: int, more: list[str]) -> None:
    servers = [
        await asyncio.start_server(_http, "127.0.0.1", http_port),
        await asyncio.start_server(_tcp, "127.0.0.1", tcp_port),
    ]
    for target in more:
        host, port = _target(target)
        servers.append(await asyncio.start_server(_tcp, host, port))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()

    def watch_stdin() -> None:  # a daemon thread: never holds up the exit
        sys.stdin.read()
        loop.call_soon_threadsafe(stdin_closed.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin_closed.wait(), SERVE_LIMIT)
    for server in servers:
        server.close()


def _wait_ready(admin_port: int) -> None:
    deadline = time.monotonic() + READY_LIMIT
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, _ = _get(admin_port, "/ready")
            if status == 200:
                return
            last = f"status {status}"
        except OSError as error:
            last = repr(error)
        time.sleep(0.05)
    raise SystemExit(f"the proxy's admin port {admin_port} is not ready: {last}")


def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", errors="replace")
    finally:
        conn.close()


def _target(text: str) -> tuple[str, int]:
    """`PORT` (on 127.0.0.1) or `HOST:PORT`."""
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _http_step(host: str, port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Host": "app"})
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        body = response.read().decode("utf-8", errors="replace")
        return {"status": response.status, "headers": headers, "body": body}
    except OSError as error:
        return {"error": repr(error)}
    finally:
        conn.close()


def _tcp_step(host: str, port: int) -> dict[str, Any]:
    data = b""
    try:
        with socket.create_connection((host, port), timeout=IO_TIMEOUT) as sock:
            for _ in range(64):  # bounded: the servers send a few bytes and close
                chunk = sock.recv(65536)
                if not chunk:
                    return {"data": data.decode(errors="replace"), "closed": True}
                data += chunk
    except TimeoutError:
        return {"data": data.decode(errors="replace"), "closed": False}
    except OSError as error:  # reset: closed too
        return {"data": data.decode(errors="replace"), "closed": True, "error": repr(error)}
    return {"data": data.decode(errors="replace"), "closed": False}


def _fetch(admin_port: int, steps: list[str]) -> list[dict[str, Any]]:
    _wait_ready(admin_port)
    results: list[dict[str, Any]] = []
    for step in steps:
        kind, _, target = step.partition(":")
        if kind == "http":
            results.append(_http_step(*_target(target)))
        elif kind == "tcp":
            results.append(_tcp_step(*_target(target)))
        elif kind == "admin":
            status, body = _get(admin_port, target)
            results.append({"status": status, "body": body})
        else:
            raise SystemExit(f"unknown step {step!r}")
    return results


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"] and len(argv) >= 3:
        asyncio.run(_serve(int(argv[1]), int(argv[2]), argv[3:]))
    elif argv[:1] == ["fetch"] and len(argv) >= 2:
        print(json.dumps(_fetch(int(argv[1]), argv[2:])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
