"""A tiny HTTP upstream for the proxy demo: says which instance answered and echoes the request.

`/flaky...` answers 503 on every other request to the same instance, so retries show.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DemoUpstream(ThreadingHTTPServer):
    """One named instance on 127.0.0.1 with a free port, serving from a daemon thread."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.flaky_attempts = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, name=f"upstream-{name}")

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> DemoUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()

    def count(self, path: str) -> bool:
        """Record one request; True when this one should fail on purpose."""
        with self._lock:
            self.requests += 1
            if not path.startswith("/flaky"):
                return False
            self.flaky_attempts += 1
            return self.flaky_attempts % 2 == 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DemoUpstream

    def do_GET(self) -> None:
        fail = self.server.count(self.path)
        status = 503 if fail else 200
        body = json.dumps(
            {
                "instance": self.server.name,
                "path": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "failed_on_purpose": fail,
            }
        ).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-served-by", self.server.name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the demo's output readable: no per-request log lines."""
