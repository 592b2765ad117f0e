"""A plain TCP echo service for `trellis run` tests: no mesh logic, only $PORT.

Each connection gets back every byte it sends, until it closes. SIGTERM -> exit 0.
"""

from __future__ import annotations

import os
import signal
import socketserver
import sys
import threading


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        for _ in range(10_000):
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


def main() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", int(os.environ["PORT"])), Echo)
    server.daemon_threads = True
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
