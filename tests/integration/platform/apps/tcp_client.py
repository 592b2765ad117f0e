"""A plain TCP client for `trellis run` tests: connects to a service by name.

tcp_client.py HOST PORT COUNT: open COUNT connections to HOST:PORT one after another
(retrying refusals for up to 20 s, while the mesh learns the service), send a line on
each, half-close (SHUT_WR) and check the line comes back before the server closes;
print a JSON summary {"echoed": n, "failures": [...]} and exit 0 when every
connection echoed. Nothing here knows the mesh: the name resolves to the service's
virtual IP and iptables hands the connection to the sidecar.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def one(host: str, port: int, line: bytes) -> None:
    """Send `line`, half-close, read everything back until the server closes."""
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(line)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        for _ in range(1000):
            data = conn.recv(65536)
            if not data:
                break
            received += data
    if received != line:
        raise RuntimeError(f"sent {line!r}, got {received!r}")


def main() -> None:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    failures: list[str] = []
    echoed = 0
    deadline = time.monotonic() + 20
    for index in range(count):
        line = f"line {index} through the mesh\n".encode()
        for _ in range(200):
            try:
                one(host, port, line)
                echoed += 1
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    failures.append(repr(exc))
                    break
                time.sleep(0.1)
            except RuntimeError as exc:
                failures.append(str(exc))
                break
    print(json.dumps({"echoed": echoed, "failures": failures}), flush=True)
    sys.exit(0 if echoed == count else 1)


if __name__ == "__main__":
    main()
