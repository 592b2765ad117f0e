"""Runs `trellis proxy` with its outbound port already taken, the first time only.

clashing_proxy.py MARKER PROXY_ARGS...: if MARKER does not exist, create it and
listen on the port of `--metadata TRELLIS_OUTBOUND_PORT=N` first (the socket is
inherited across exec and held by the proxy process), so the proxy cannot bind
its outbound listener: the clash a program outside Trellis can cause between
the launcher's port check and the proxy's bind.
"""

from __future__ import annotations

import os
import socket
import sys

PROXY_MAIN = "import sys; from trellis.proxy.cli import main; sys.exit(main(sys.argv[1:]))"


def main() -> None:
    marker, args = sys.argv[1], sys.argv[2:]
    if not os.path.exists(marker):
        open(marker, "w").close()
        port = next(int(a.split("=")[1]) for a in args if a.startswith("TRELLIS_OUTBOUND_PORT="))
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        squatter.set_inheritable(True)
    os.execv(sys.executable, [sys.executable, "-c", PROXY_MAIN, *args])


if __name__ == "__main__":
    main()
