"""Run the shop's services as plain subprocesses on 127.0.0.1, without the mesh.

The services call their peers by name through `HTTP_PROXY`, exactly as they do
under `trellis run` in explicit capture. Here `HTTP_PROXY` points at
`NameProxy`, a forward proxy in the test process that maps a service name to
local ports (round robin when there are several) and adds nothing else: no
retries, no TLS, no header changes beyond hop-by-hop ones. It records every
request it forwards, so tests can see what each service sent to its peers.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SHOP_DIR = Path(__file__).resolve().parents[2] / "examples" / "shop"
START_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
_HOP_BY_HOP = frozenset(
    {"connection", "proxy-connection", "keep-alive", "te", "trailer", "upgrade", "host"}
    | {"proxy-authorization", "transfer-encoding"}
)
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass(frozen=True, slots=True)
class Forwarded:
    """One request a service sent to a peer, as the proxy received it."""

    service: str
    method: str
    path: str
    headers: Mapping[str, str]


class NameProxy(ThreadingHTTPServer):
    """A forward proxy for absolute-form requests: `http://NAME/...` -> 127.0.0.1:port."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self._lock = threading.Lock()
        self._routes: dict[str, itertools.cycle[int]] = {}
        self.forwarded: list[Forwarded] = []
        self._thread = threading.Thread(target=self.serve_forever, name="name-proxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> NameProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()

    def route(self, service: str, *ports: int) -> None:
        with self._lock:
            self._routes[service] = itertools.cycle(ports)

    def pick(self, service: str) -> int | None:
        with self._lock:
            ports = self._routes.get(service)
            return None if ports is None else next(ports)

    def record(self, forwarded: Forwarded) -> None:
        with self._lock:
            self.forwarded.append(forwarded)

    def take(self) -> list[Forwarded]:
        """The requests forwarded since the last call."""
        with self._lock:
            taken, self.forwarded = self.forwarded, []
            return taken


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: NameProxy

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the services log their own requests."""

    def _forward(self) -> None:
        target = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        port = self.server.pick(target.hostname or "") if target.scheme == "http" else None
        if port is None:
            self._answer(502, b"no such service\n", "text/plain")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = target.path + (f"?{target.query}" if target.query else "")
        self.server.record(Forwarded(target.hostname or "", self.command, path, headers))
        upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
        try:
            sent = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
            upstream.request(self.command, path, body or None, {**sent, "host": target.netloc})
            answer = upstream.getresponse()
            payload = answer.read()
            self._answer(answer.status, payload, answer.getheader("content-type", "text/plain"))
        except OSError as exc:
            self._answer(502, f"upstream failed: {exc}\n".encode(), "text/plain")
        finally:
            upstream.close()

    def _answer(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def service_env(proxy_url: str) -> dict[str, str]:
    """This process's environment with `HTTP_PROXY` set as the launcher sets it."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.update(HTTP_PROXY=proxy_url, http_proxy=proxy_url)
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


class ShopProcess:
    """One service subprocess on a free port; its stderr goes to `<workdir>/<name>.log`."""

    def __init__(self, name: str, script: str, args: list[str], env: dict[str, str], workdir: Path):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        command = [sys.executable, str(SHOP_DIR / script), "--port", "0", *args]
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.port = 0

    def wait_listening(self) -> ShopProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = _LISTENING.findall(self.log_path.read_bytes()[self._log_start :].decode())
            if found:
                self.port = int(found[-1])
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"{self.name} did not start:\n{self.log()}")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    port: int,
    method: str,
    path: str,
    document: object = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One request straight to 127.0.0.1:port (no proxy involved)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    try:
        body = None if document is None else json.dumps(document).encode()
        sent = dict(headers or {})
        if body is not None:
            sent["content-type"] = "application/json"
        connection.request(method, path, body, sent)
        answer = connection.getresponse()
        payload = answer.read()
        return Answer(answer.status, {k.lower(): v for k, v in answer.getheaders()}, payload)
    finally:
        connection.close()
