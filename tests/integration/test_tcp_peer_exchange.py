"""Istio's TCP metadata exchange (ALPN `istio-peer-exchange`) between two real sidecars
over mTLS: the applications' bytes cross unchanged, and both sidecars' TCP metrics
name the other side's workload. A peer without the exchange still works, unnamed."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis.core.peer_metadata import WorkloadMetadata
from trellis.core.tcp_exchange import HeaderReader, ReadOutcome, decode_payload, encode_header

from .bootstrap import Json, bootstrap, cluster, free_port, tcp_listener
from .harness import ProxyFactory
from .mesh_pair import CLIENT_ID, CLIENT_NODE, MESH_CLUSTER, SERVER_ID, SERVER_NODE, SERVICE
from .pki import Issued, TestCa
from .proxyproc import ProxyProcess, Sample, metric_sum

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
UPSTREAM_ALPN = ["istio-peer-exchange", "istio"]  # what the control plane sends (xds.mesh.mtls)
DOWNSTREAM_ALPN = ["istio-peer-exchange", "istio", "http/1.1"]
GREETING = b"ready\n"  # the application speaks first, as MySQL does
MAGIC = b"\x3d\x23\x04\x67"
OPENED = "istio_tcp_connections_opened_total"
CLOSED = "istio_tcp_connections_closed_total"
SENT = "istio_tcp_sent_bytes_total"
RECEIVED = "istio_tcp_received_bytes_total"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        sock.sendall(GREETING)
        for _ in range(10_000):
            data = sock.recv(65536)
            if not data:
                return
            self.server.received.append(data)  # type: ignore[attr-defined]
            sock.sendall(data)


class EchoApp(socketserver.ThreadingTCPServer):
    """The server's application: greets, then echoes; records what it received."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received: list[bytes] = []
        self.context = context
        self.port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        if self.context is not None:
            sock.settimeout(10)
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, address


@pytest.fixture
def ca() -> TestCa:
    return TestCa()


def _serve(app: EchoApp) -> Iterator[EchoApp]:
    thread = threading.Thread(target=app.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()
        thread.join(10)


@pytest.fixture
def echo_app() -> Iterator[EchoApp]:
    yield from _serve(EchoApp())


def _secrets(ca: TestCa, name: str, issued: Issued) -> list[Json]:
    return [
        {
            "name": name,
            "tls_certificate": {
                "certificate_chain": {"inline_string": issued.chain_pem},
                "private_key": {"inline_string": issued.key_pem},
            },
        },
        {"name": "root", "validation_context": {"trusted_ca": {"inline_string": ca.root_pem}}},
    ]


def _validation(matcher: Json) -> Json:
    return {
        "default_validation_context": {
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": matcher}]
        },
        "validation_context_sds_secret_config": {"name": "root"},
    }


def _server(start_proxy: ProxyFactory, ca: TestCa, app_port: int) -> tuple[ProxyProcess, int]:
    """The server's sidecar: STRICT mTLS on a TCP port, to the application."""
    port = free_port()
    listener = tcp_listener("virtualInbound", port, "inbound|9000||")
    listener["traffic_direction"] = "INBOUND"
    chain = listener["filter_chains"][0]
    chain["filter_chain_match"] = {"transport_protocol": "tls"}
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS + "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "server-cert"}],
                "combined_validation_context": _validation({"prefix": "spiffe://cluster.local/"}),
                "alpn_protocols": DOWNSTREAM_ALPN,
            },
        },
    }
    listener["listener_filters"] = [
        {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}
    ]
    config = bootstrap(
        free_port(), [listener], [cluster("inbound|9000||", [app_port])], node=SERVER_NODE
    )
    config["static_resources"]["secrets"] = _secrets(ca, "server-cert", ca.issue(SERVER_ID))
    return start_proxy(config, name="echo-sidecar"), port


def _client(start_proxy: ProxyFactory, ca: TestCa, server_port: int) -> tuple[ProxyProcess, int]:
    """The client's sidecar: a TCP port to `server_port` over mTLS offering the exchange."""
    port = free_port()
    listener = tcp_listener("outbound_9000", port, MESH_CLUSTER)
    listener["traffic_direction"] = "OUTBOUND"
    upstream_tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS + "UpstreamTlsContext",
            "sni": f"outbound_.9000_._.{SERVICE}",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "client-cert"}],
                "combined_validation_context": _validation({"exact": SERVER_ID}),
                "alpn_protocols": UPSTREAM_ALPN,
            },
        },
    }
    clusters = [cluster(MESH_CLUSTER, [server_port], transport_socket=upstream_tls)]
    config = bootstrap(free_port(), [listener], clusters, node=CLIENT_NODE)
    config["static_resources"]["secrets"] = _secrets(ca, "client-cert", ca.issue(CLIENT_ID))
    return start_proxy(config, name="web-sidecar"), port


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def _converse(port: int, messages: list[bytes]) -> int:
    """Connect as the client application: read the greeting, have each message echoed.
    The number of bytes the application sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert _recv_exactly(sock, len(GREETING)) == GREETING
        for message in messages:
            sock.sendall(message)
            assert _recv_exactly(sock, len(message)) == message
    return sum(map(len, messages))


def _settled(proxy: ProxyProcess, connections: int) -> list[Sample]:
    """The proxy's samples once it has counted `connections` closed (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        samples = proxy.samples()
        if metric_sum(samples, CLOSED) >= connections or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def _tcp_series(samples: list[Sample], name: str) -> list[dict[str, str]]:
    return [s.labels for s in samples if s.name == name]


def test_exchange_names_both_peers_and_bytes_cross_unchanged(
    start_proxy: ProxyFactory, ca: TestCa, echo_app: EchoApp
) -> None:
    server, server_port = _server(start_proxy, ca, echo_app.port)
    client, client_port = _client(start_proxy, ca, server_port)
    conversations = [
        [b"hello"],
        [MAGIC + b"\x00\x00\x00\x04abcd", b"x" * 200_000],  # looks like a header: still data
        [b"\x00", b"tail"],
    ]
    sent = sum(_converse(client_port, messages) for messages in conversations)
    assert b"".join(echo_app.received) == b"".join(m for c in conversations for m in c)
    replies = sent + len(GREETING) * len(conversations)

    inbound = _settled(server, len(conversations))
    assert metric_sum(inbound, OPENED, reporter="destination") == len(conversations)
    assert metric_sum(inbound, RECEIVED, reporter="destination") == sent
    assert metric_sum(inbound, SENT, reporter="destination") == replies
    for name in (OPENED, CLOSED, SENT, RECEIVED):
        series = _tcp_series(inbound, name)
        assert series, name
        for labels in series:
            assert labels["reporter"] == "destination", labels
            assert labels["source_workload"] == "web", labels  # from the exchange
            assert labels["source_app"] == "web", labels
            assert labels["source_version"] == "v1", labels
            assert labels["source_cluster"] == "local", labels
            assert labels["source_workload_namespace"] == "default", labels
            assert labels["source_principal"] == CLIENT_ID, labels  # from mTLS
            assert labels["destination_workload"] == "echo-v2", labels
            assert labels["destination_app"] == "echo", labels
            assert labels["request_protocol"] == "tcp", labels
            assert labels["connection_security_policy"] == "mutual_tls", labels
            assert labels["response_flags"] == "-", labels

    outbound = _settled(client, len(conversations))
    assert metric_sum(outbound, OPENED, reporter="source") == len(conversations)
    assert metric_sum(outbound, RECEIVED, reporter="source") == sent
    assert metric_sum(outbound, SENT, reporter="source") == replies
    for name in (OPENED, CLOSED, SENT, RECEIVED):
        series = _tcp_series(outbound, name)
        assert series, name
        for labels in series:
            assert labels["reporter"] == "source", labels
            assert labels["source_workload"] == "web", labels
            assert labels["destination_workload"] == "echo-v2", labels  # from the exchange
            assert labels["destination_app"] == "echo", labels
            assert labels["destination_version"] == "v2", labels
            assert labels["destination_canonical_service"] == "echo-svc", labels
            assert labels["destination_cluster"] == "local", labels
            assert labels["destination_workload_namespace"] == "demo", labels
            assert labels["destination_principal"] == SERVER_ID, labels
            assert labels["destination_service"] == SERVICE, labels
            assert labels["response_flags"] == "-", labels


def _pem_files(tmp_path: Path, name: str, issued: Issued) -> tuple[str, str]:
    chain, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    chain.write_text(issued.chain_pem)
    key.write_text(issued.key_pem)
    return str(chain), str(key)


def test_server_without_the_exchange_alpn_still_works_unnamed(
    start_proxy: ProxyFactory, ca: TestCa, tmp_path: Path
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_pem_files(tmp_path, "server", ca.issue(SERVER_ID)))
    context.load_verify_locations(cadata=ca.root_pem)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["istio"])  # a TLS server that does not take part
    for app in _serve(EchoApp(context)):
        client, client_port = _client(start_proxy, ca, app.port)
        sent = _converse(client_port, [MAGIC + b"\x00\x00\x00\x01z", b"plain bytes"])
        assert b"".join(app.received) == MAGIC + b"\x00\x00\x00\x01z" + b"plain bytes"
        outbound = _settled(client, 1)
    assert metric_sum(outbound, OPENED, reporter="source") == 1
    assert metric_sum(outbound, RECEIVED, reporter="source") == sent
    for labels in _tcp_series(outbound, OPENED):
        assert labels["source_workload"] == "web", labels
        assert labels["destination_workload"] == "unknown", labels
        assert labels["destination_app"] == "unknown", labels
        # Without the exchange the namespace still comes from the server's principal.
        assert labels["destination_workload_namespace"] == "demo", labels
        assert labels["destination_principal"] == SERVER_ID, labels


def _raw_client(tmp_path: Path, ca: TestCa, port: int, alpn: list[str]) -> ssl.SSLSocket:
    """A TLS client of the server's sidecar with the client's certificate, no sidecar."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=ca.root_pem)
    context.load_cert_chain(*_pem_files(tmp_path, "client", ca.issue(CLIENT_ID)))
    context.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw)


def test_server_sidecar_answers_a_header_with_its_own(
    start_proxy: ProxyFactory, ca: TestCa, echo_app: EchoApp, tmp_path: Path
) -> None:
    server, server_port = _server(start_proxy, ca, echo_app.port)
    peer = WorkloadMetadata(workload_name="batch", namespace="default", app="batch")
    with _raw_client(tmp_path, ca, server_port, UPSTREAM_ALPN) as sock:
        assert sock.selected_alpn_protocol() == "istio-peer-exchange"
        # The header and the first application bytes in one write: split by the reader.
        sock.sendall(encode_header(peer, "sidecar~1~batch-0.default~x") + b"ping")
        reader = HeaderReader()
        read = reader.feed(b"")
        while read.outcome is ReadOutcome.PENDING:
            read = reader.feed(sock.recv(4096))
        assert read.outcome is ReadOutcome.FOUND
        told = decode_payload(read.payload)
        assert told is not None
        assert (told.workload_name, told.namespace, told.app) == ("echo-v2", "demo", "echo")
        rest = read.rest
        while len(rest) < len(GREETING) + 4:
            rest += sock.recv(4096)
        assert rest == GREETING + b"ping"
    assert echo_app.received == [b"ping"]
    inbound = _settled(server, 1)
    (labels,) = _tcp_series(inbound, OPENED)
    assert labels["source_workload"] == "batch", labels
    assert labels["source_app"] == "batch", labels


def test_client_without_a_header_passes_through_unnamed(
    start_proxy: ProxyFactory, ca: TestCa, echo_app: EchoApp, tmp_path: Path
) -> None:
    """Negotiated, then not spoken (a wrong magic): Istio's rule, the bytes are data."""
    server, server_port = _server(start_proxy, ca, echo_app.port)
    with _raw_client(tmp_path, ca, server_port, UPSTREAM_ALPN) as sock:
        assert sock.selected_alpn_protocol() == "istio-peer-exchange"
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        expected = GREETING + b"GET / HTTP/1.0\r\n\r\n"
        assert _recv_exactly(sock, len(expected)) == expected  # no header came back
    assert echo_app.received == [b"GET / HTTP/1.0\r\n\r\n"]
    inbound = _settled(server, 1)
    (labels,) = _tcp_series(inbound, OPENED)
    assert labels["source_workload"] == "unknown", labels
    assert labels["source_workload_namespace"] == "default", labels  # from the principal


def test_oversized_header_closes_the_connection(
    start_proxy: ProxyFactory, ca: TestCa, echo_app: EchoApp, tmp_path: Path
) -> None:
    server, server_port = _server(start_proxy, ca, echo_app.port)
    with _raw_client(tmp_path, ca, server_port, UPSTREAM_ALPN) as sock:
        sock.sendall(MAGIC + (1 << 30).to_bytes(4, "big") + b"junk")
        sock.settimeout(5)
        try:
            data = sock.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        assert data == b"", data
    assert echo_app.received == []
    inbound = _settled(server, 1)
    assert metric_sum(inbound, CLOSED, response_flags="DPE") == 1


def test_the_end_of_a_stream_crosses_the_mtls_hop(
    start_proxy: ProxyFactory, ca: TestCa, echo_app: EchoApp
) -> None:
    # The client half-closes: its sidecar cannot half-close TLS, so it closes the mTLS
    # connection once the bytes are out; the server's sidecar half-closes towards the
    # application, which ends, and that end comes back to the client at once.
    server, server_port = _server(start_proxy, ca, echo_app.port)
    client, client_port = _client(start_proxy, ca, server_port)
    with socket.create_connection(("127.0.0.1", client_port), timeout=10) as sock:
        assert _recv_exactly(sock, len(GREETING)) == GREETING
        sock.sendall(b"last words")
        assert _recv_exactly(sock, 10) == b"last words"
        began = time.monotonic()
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""  # the end, well before any idle timeout
        assert time.monotonic() - began < 5
    assert metric_sum(_settled(server, 1), CLOSED, reporter="destination") == 1
    assert metric_sum(_settled(client, 1), CLOSED, reporter="source") == 1
