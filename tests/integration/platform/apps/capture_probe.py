"""Where did a TCP connection land? A listener and a client for the capture tests.

serve NAME PORT...    listen on 0.0.0.0 on each PORT, print `ready`, and answer
                      every connection with one line: NAME, the port it was
                      accepted on, its original destination (SO_ORIGINAL_DST,
                      or the local address when no NAT rewrote it) and the
                      peer's address; exit when stdin closes.
connect HOST PORT [TIMEOUT]
                      connect, print the line the server sends; exit 1 with
                      the error on stderr when that fails.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80


def original_destination(conn: socket.socket) -> tuple[str, int]:
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:  # not NATed
        host, port = conn.getsockname()[:2]
        return str(host), int(port)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


def answer(listener: socket.socket, name: str, port: int) -> None:
    while True:
        conn, peer = listener.accept()
        with conn:
            host, original_port = original_destination(conn)
            conn.sendall(f"{name} {port} {host}:{original_port} {peer[0]}\n".encode())


def serve(name: str, ports: list[int]) -> None:
    for port in ports:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(16)
        threading.Thread(target=answer, args=(listener, name, port), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def connect(host: str, port: int, timeout: float) -> int:
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            reply = conn.makefile("r").readline()
    except OSError as error:
        print(f"connect {host}:{port}: {error}", file=sys.stderr)
        return 1
    print(reply.strip())
    return 0


def main(args: list[str]) -> int:
    if args[:1] == ["serve"] and len(args) >= 3:
        serve(args[1], [int(port) for port in args[2:]])
        return 0
    if args[:1] == ["connect"] and len(args) in (3, 4):
        return connect(args[1], int(args[2]), float(args[3]) if len(args) == 4 else 5.0)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
