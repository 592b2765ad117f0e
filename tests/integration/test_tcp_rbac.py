"""AuthorizationPolicy on a TCP port: network RBAC filters before the TCP proxy, in a real
`trellis proxy` with real mTLS over loopback.

The inbound TCP listener takes mTLS and plaintext (PERMISSIVE); a DENY filter
blocks one identity, an ALLOW filter lets one other in. An allowed peer gets its
bytes echoed by the upstream; a denied one is closed before the upstream is
contacted, counted, and logged with the policy that decided.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bootstrap import Json, bootstrap, cluster, free_port, tcp_listener
from .harness import ProxyFactory
from .pki import Issued, TestCa
from .proxyproc import ProxyProcess, metric_sum

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
BANNED = "spiffe://cluster.local/ns/shop/sa/banned"
OTHER = "spiffe://cluster.local/ns/shop/sa/other"
SERVER = "spiffe://cluster.local/ns/data/sa/db"
DENY_POLICY = "ns[data]-policy[no-banned]-rule[0]"
ALLOW_POLICY = "ns[data]-policy[db-clients]-rule[0]"


class EchoUpstream:
    """A TCP server that echoes what it reads; it counts the connections it accepts."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


@pytest.fixture
def echo() -> Iterator[EchoUpstream]:
    server = EchoUpstream()
    yield server
    server.close()


def _rbac(action: str, name: str, principal: str) -> Json:
    rules = {
        "action": action,
        "policies": {
            name: {
                "permissions": [{"any": True}],
                "principals": [{"authenticated": {"principal_name": {"exact": principal}}}],
            }
        },
    }
    typed = {"@type": RBAC, "stat_prefix": "tcp.", "rules": rules}
    return {"name": "envoy.filters.network.rbac", "typed_config": typed}


def _access_log(path: Path) -> Json:
    rbac = "%DYNAMIC_METADATA(envoy.filters.network.rbac:"
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {
                "json_format": {
                    "authz": rbac + "enforced_engine_result)%",
                    "policy": rbac + "enforced_effective_policy_id)%",
                    "details": "%CONNECTION_TERMINATION_DETAILS%",
                    "peer": "%DOWNSTREAM_PEER_URI_SAN%",
                    "upstream": "%UPSTREAM_HOST%",
                }
            },
        },
    }


def _server(ca: TestCa, upstream_port: int, log: Path) -> tuple[Json, int]:
    port = free_port()
    listener = tcp_listener("db", port, "db", access_log=[_access_log(log)])
    listener["traffic_direction"] = "INBOUND"
    filters = [
        _rbac("DENY", DENY_POLICY, BANNED),
        _rbac("ALLOW", ALLOW_POLICY, CART),
        *listener["filter_chains"][0]["filters"],
    ]
    tls_socket = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS + "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "server-cert"}],
                "validation_context_sds_secret_config": {"name": "root"},
            },
        },
    }
    listener["filter_chains"] = [
        {
            "filter_chain_match": {"transport_protocol": "tls"},
            "transport_socket": tls_socket,
            "filters": filters,
        },
        {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": filters},
    ]
    listener["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]
    node = {"id": "db", "metadata": {"WORKLOAD_NAME": "db", "NAMESPACE": "data",
                                      "SERVICE_ACCOUNT": "db"}}  # fmt: skip
    config = bootstrap(free_port(), [listener], [cluster("db", [upstream_port])], node=node)
    issued = ca.issue(SERVER)
    config["static_resources"]["secrets"] = [
        {
            "name": "server-cert",
            "tls_certificate": {
                "certificate_chain": {"inline_string": issued.chain_pem},
                "private_key": {"inline_string": issued.key_pem},
            },
        },
        {"name": "root", "validation_context": {"trusted_ca": {"inline_string": ca.root_pem}}},
    ]
    return config, port


def _exchange(sock: socket.socket, payload: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `payload` and read until as many bytes came back, the peer closed, or
    `timeout`; returns (what came back, whether the connection was closed)."""
    got = b""
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(payload)
        while len(got) < len(payload):
            left = deadline - time.monotonic()
            if left <= 0:
                return got, False
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                return got, True
            got += chunk
    except TimeoutError:
        return got, False
    except OSError:  # reset, or a TLS connection closed without close_notify
        return got, True
    return got, False


def _over_tls(
    port: int, ca: TestCa, issued: Issued, tmp_path: Path, payload: bytes
) -> tuple[bytes, bool]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=ca.root_pem)
    pem = tmp_path / "client.pem"
    pem.write_text(issued.chain_pem + issued.key_pem)
    context.load_cert_chain(str(pem))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as conn,
    ):
        return _exchange(conn, payload)


def _plaintext(port: int, payload: bytes) -> tuple[bytes, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return _exchange(sock, payload)


def _log_lines(path: Path, count: int) -> list[Json]:
    deadline = time.monotonic() + 5
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines() if line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _wait_metric(proxy: ProxyProcess, name: str, value: float) -> float:
    deadline = time.monotonic() + 5
    while True:
        found = metric_sum(proxy.samples(), name)
        if found >= value or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _envoy_stats(proxy: ProxyProcess) -> dict[str, str]:
    """Envoy's plain `/stats` listing as name -> value."""
    status, body = proxy.admin("GET", "/stats")
    assert status == 200, body
    return dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)


def test_tcp_rbac_allows_the_principal_and_closes_the_others_before_the_upstream(
    start_proxy: ProxyFactory, echo: EchoUpstream, tmp_path: Path
) -> None:
    ca = TestCa()
    log = tmp_path / "tcp-access.log"
    config, port = _server(ca, echo.port, log)
    proxy = start_proxy(config, name="db")

    payload = b"SELECT 1;" * 100
    assert _over_tls(port, ca, ca.issue(CART), tmp_path, payload) == (payload, False)
    assert echo.accepted == 1

    refused = [
        _over_tls(port, ca, ca.issue(BANNED), tmp_path, b"hello"),  # the DENY filter
        _over_tls(port, ca, ca.issue(OTHER), tmp_path, b"hello"),  # no ALLOW policy matches
        _plaintext(port, b"hello"),  # no principal at all
    ]
    assert refused == [(b"", True)] * 3
    time.sleep(0.2)  # a late upstream connection would show up here
    assert echo.accepted == 1

    # Envoy's counters of the filters' stat prefix `tcp.`, one count per connection.
    stats = _envoy_stats(proxy)
    assert (stats["tcp.rbac.allowed"], stats["tcp.rbac.denied"]) == ("1", "3")
    exposition = proxy.metrics_text().splitlines()
    assert {"envoy_tcp_rbac_allowed 1", "envoy_tcp_rbac_denied 3"} <= set(exposition)
    # Denied connections are still TCP connections in Istio's metrics.
    assert _wait_metric(proxy, "istio_tcp_connections_closed_total", 4) == 4
    samples = proxy.samples()
    assert metric_sum(samples, "istio_tcp_connections_opened_total") == 4
    # The peer's identity labels its connections (the plaintext one has none).
    opened = "istio_tcp_connections_opened_total"
    for principal in (CART, BANNED, OTHER):
        labels = {"source_principal": principal, "connection_security_policy": "mutual_tls"}
        assert metric_sum(samples, opened, **labels) == 1, principal
    assert metric_sum(samples, opened, connection_security_policy="none") == 1

    lines = sorted(_log_lines(log, 4), key=lambda line: str(line["peer"]))
    upstream = f"127.0.0.1:{echo.port}"
    assert lines == [  # by peer: plaintext (None), banned, cart, other
        {"authz": "denied", "policy": "no ALLOW policy matched", "peer": None,
         "upstream": None, "details": "rbac_access_denied_matched_policy[none]"},
        {"authz": "denied", "policy": DENY_POLICY, "peer": BANNED, "upstream": None,
         "details": f"rbac_access_denied_matched_policy[{DENY_POLICY}]"},
        {"authz": "allowed", "policy": ALLOW_POLICY, "peer": CART, "upstream": upstream,
         "details": None},
        {"authz": "denied", "policy": "no ALLOW policy matched", "peer": OTHER,
         "upstream": None, "details": "rbac_access_denied_matched_policy[none]"},
    ]  # fmt: skip
