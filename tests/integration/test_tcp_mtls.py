"""TCP over mTLS between sidecars. A half-close crosses the mTLS hop as it crosses plain
TCP: the client application finishes sending (SHUT_WR) and still reads the answer, which
the server application writes only after it saw the end of the request (as `wc` or an
HTTP/1.0 client with a shut-down socket expects). Over TLS the end travels as a
`close_notify` that leaves the other direction open. A STRICT TCP port refuses
certificates from another CA and clients without one, and counts each refusal."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from .harness import ProxyFactory
from .mesh_pair import CLIENT_ID
from .pki import Issued, TestCa
from .proxyproc import metric_sum
from .test_tcp_peer_exchange import _client, _server

REQUEST = b"count these bytes, then answer\n" * 1000


class _CountThenAnswer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        total = 0
        for _ in range(100_000):
            data = sock.recv(65536)
            if not data:
                break
            total += len(data)
        sock.sendall(f"{total} bytes\n".encode())
        self.server.answered += 1  # type: ignore[attr-defined]


class CountApp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CountThenAnswer)
        self.port = int(self.server_address[1])
        self.answered = 0


@pytest.fixture
def count_app() -> Iterator[CountApp]:
    app = CountApp()
    thread = threading.Thread(target=app.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()
        thread.join(10)


def _ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(REQUEST)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        for _ in range(1000):
            data = sock.recv(65536)
            if not data:
                return answer
            answer += data
    raise AssertionError(f"no end after {answer!r}")


def test_a_half_close_crosses_the_mtls_hop(start_proxy: ProxyFactory, count_app: CountApp) -> None:
    ca = TestCa()
    _, server_port = _server(start_proxy, ca, count_app.port)
    _, client_port = _client(start_proxy, ca, server_port)
    for _ in range(3):
        assert _ask(client_port) == f"{len(REQUEST)} bytes\n".encode()


def _tls_attempt(port: int, context: ssl.SSLContext) -> bytes | None:
    """Connect with `context`, send a line, end the stream with a close_notify and read
    the answer until the server ends too (an SSLSocket cannot half-close, so TLS runs
    over memory buffers here). None: the handshake or the connection failed."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:

        def pump(step: Callable[[], object]) -> object:
            for _ in range(100):
                try:
                    result = step()
                    sock.sendall(outgoing.read())
                    return result
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionResetError("closed") from None
                    incoming.write(data)
            raise TimeoutError("no progress")

        try:
            pump(tls.do_handshake)
            tls.write(b"hello\n")
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()  # close_notify: our half-close
            sock.sendall(outgoing.read())
            for _ in range(100):
                data = cast(bytes, pump(lambda: tls.read(65536)))
                if not data:
                    return answer
                answer += data
        except ssl.SSLZeroReturnError:  # the server's close_notify: its end
            return answer
        except (OSError, ssl.SSLError):
            return None
    return None


def _client_context(ca: TestCa, issued: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.root_pem)
    context.check_hostname = False
    context.set_alpn_protocols(["istio"])
    if issued is not None:
        with tempfile.TemporaryDirectory() as directory:
            chain, key = Path(directory, "chain.pem"), Path(directory, "key.pem")
            chain.write_text(issued.chain_pem)
            key.write_text(issued.key_pem)
            context.load_cert_chain(chain, key)
    return context


def test_strict_tcp_refuses_other_cas_and_missing_certificates_and_counts_them(
    start_proxy: ProxyFactory, count_app: CountApp
) -> None:
    ca, other = TestCa(), TestCa("another root")
    server, port = _server(start_proxy, ca, count_app.port)
    good = _client_context(ca, ca.issue(CLIENT_ID))
    assert _tls_attempt(port, good) == b"6 bytes\n"
    # A certificate from another CA, and none at all: the handshake fails every time.
    for issued in (other.issue(CLIENT_ID), None):
        for _ in range(3):
            assert _tls_attempt(port, _client_context(ca, issued)) in (None, b"")
    failures = metric_sum(server.samples(), "envoy_listener_downstream_tls_error_total")
    assert failures >= 6, failures
    assert count_app.answered == 1
