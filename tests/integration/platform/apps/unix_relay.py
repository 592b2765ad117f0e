"""A test's hands inside a workload's network namespace: an HTTP forward proxy on a Unix socket.

    python unix_relay.py SOCKET_PATH

A Unix socket path reaches across network namespaces, so a test in the host's
namespace sends `GET http://web/products HTTP/1.1` (absolute form) to
SOCKET_PATH, and this program, running as the application of a transparently
captured workload, makes that request itself: its connection to the service's
virtual IP is what iptables hands to the workload's sidecar. It answers with
the upstream's status and body. Standard library only, like the shop.
"""

from __future__ import annotations

import http.client
import os
import signal
import socketserver
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler

TIMEOUT = 15.0


class Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _relay(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            key: value
            for key, value in self.headers.items()
            if key.lower() not in ("connection", "proxy-connection", "keep-alive", "host")
        }
        path = target.path + (f"?{target.query}" if target.query else "")
        try:
            upstream = http.client.HTTPConnection(target.netloc, timeout=TIMEOUT)
            upstream.request(self.command, path or "/", body, headers)
            answer = upstream.getresponse()
            status, data = answer.status, answer.read()
            upstream.close()
        except OSError as exc:
            status, data = 599, f"relay: {exc}".encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._relay()

    def do_POST(self) -> None:
        self._relay()

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 64  # the test sends from several threads at once


def main() -> int:
    path = sys.argv[1]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Server(path, Relay) as server:
        os.chmod(path, 0o600)
        print(f"relay listening on {path}", flush=True)
        try:
            server.serve_forever()
        finally:
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
