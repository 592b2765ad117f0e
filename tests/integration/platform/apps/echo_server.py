"""A plain HTTP service for `trellis run` tests: no mesh logic, only $PORT.

GET any path -> 200 JSON {"version": VERSION, "workload": $TRELLIS_WORKLOAD, "path": path}.
SIGTERM -> stop serving and exit 0 (as a well-behaved service does).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = sys.argv[1] if len(sys.argv) > 1 else "v0"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps(
            {"version": VERSION, "workload": os.environ.get("TRELLIS_WORKLOAD"), "path": self.path}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"echo {VERSION} (pid {os.getpid()}) listening on {os.environ['PORT']}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    print(f"echo {VERSION} stopped", flush=True)


if __name__ == "__main__":
    main()
