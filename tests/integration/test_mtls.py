"""Mutual TLS between two proxies over loopback: real certificates, real handshakes.

The client proxy originates mTLS to the server proxy's inbound listener and
checks the server's SPIFFE SAN; the server terminates it (STRICT or
PERMISSIVE) and reports the peer's identity in its metrics. Secrets come from
the bootstrap here; the control plane's CA and SDS deliver them in a mesh.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .bootstrap import Json, bootstrap, cluster, free_port, http_listener, route, virtual_host
from .client import request
from .harness import ProxyFactory
from .pki import Issued, TestCa
from .proxyproc import ProxyProcess, metric_sum
from .upstream import HttpUpstream

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/web-sa"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server-sa"


def _secrets(root: str, name: str, issued: Issued) -> list[Json]:
    return [
        {
            "name": name,
            "tls_certificate": {
                "certificate_chain": {"inline_string": issued.chain_pem},
                "private_key": {"inline_string": issued.key_pem},
            },
        },
        {"name": "root", "validation_context": {"trusted_ca": {"inline_string": root}}},
    ]


def _tls_chain(*, match: str = "tls") -> Json:
    return {
        "filter_chain_match": {"transport_protocol": match},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TLS + "DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": "server-cert"}],
                    # As the control plane builds it: any identity of the mesh's trust domain.
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [
                                {
                                    "san_type": "URI",
                                    "matcher": {"prefix": "spiffe://cluster.local/"},
                                }
                            ]
                        },
                        "validation_context_sds_secret_config": {"name": "root"},
                    },
                },
            },
        },
    }


def _server(
    ca: TestCa,
    upstream: HttpUpstream,
    mode: str,
    *,
    rbac: Json | None = None,
    access_log: Path | None = None,
) -> tuple[Json, int]:
    port = free_port()
    filters: list[Json] = []
    if rbac is not None:
        filters.append({"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, **rbac}})
    listener = http_listener(
        "inbound",
        port,
        [virtual_host("all", [route("app")])],
        direction="INBOUND",
    )
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = filters + hcm["http_filters"]
    if access_log is not None:
        hcm["access_log"] = [_json_log(access_log)]
    base = listener["filter_chains"][0]
    chains = [{**base, **_tls_chain()}]
    if mode == "PERMISSIVE":
        chains.append({**base, "filter_chain_match": {"transport_protocol": "raw_buffer"}})
    listener["filter_chains"] = chains
    listener["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]
    node = {"id": "server", "metadata": {"WORKLOAD_NAME": "server", "NAMESPACE": "default",
                                          "SERVICE_ACCOUNT": "server-sa"}}  # fmt: skip
    config = bootstrap(free_port(), [listener], [cluster("app", [upstream.port])], node=node)
    config["static_resources"]["secrets"] = _secrets(
        ca.root_pem, "server-cert", ca.issue(SERVER_ID)
    )
    return config, port


def _json_log(path: Path) -> Json:
    rbac = "%DYNAMIC_METADATA(envoy.filters.http.rbac:"
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {
                "json_format": {
                    "code": "%RESPONSE_CODE%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "authz": rbac + "enforced_engine_result)%",
                    "policy": rbac + "enforced_effective_policy_id)%",
                    "peer": "%DOWNSTREAM_PEER_URI_SAN%",
                }
            },
        },
    }


def _client(ca: TestCa, server_port: int, expected_san: str, issued: Issued) -> tuple[Json, int]:
    port = free_port()
    upstream_tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS + "UpstreamTlsContext",
            "sni": "outbound_.80_._.server.default.svc.cluster.local",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "client-cert"}],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": expected_san}}
                        ]
                    },
                    "validation_context_sds_secret_config": {"name": "root"},
                },
                "alpn_protocols": ["istio-peer-exchange", "istio"],
            },
        },
    }
    listener = http_listener(
        "outbound", port, [virtual_host("server", [route("server")])], direction="OUTBOUND"
    )
    clusters = [cluster("server", [server_port], transport_socket=upstream_tls)]
    config = bootstrap(free_port(), [listener], clusters)
    config["static_resources"]["secrets"] = _secrets(ca.root_pem, "client-cert", issued)
    return config, port


def _tls_handshake(port: int, ca: TestCa, issued: Issued | None, tmp_path: Path) -> str:
    """Connect with Python's ssl as a client; returns "ok" or why it failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=ca.root_pem)
    if issued is not None:
        pem = tmp_path / "client.pem"
        pem.write_text(issued.chain_pem + issued.key_pem)
        context.load_cert_chain(str(pem))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as conn,
        ):
            conn.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
            data = conn.recv(65536)
    except (OSError, ssl.SSLError) as error:
        return f"refused: {error}"
    if not data:  # TLS 1.3: the server checks the client certificate after the handshake
        return "refused: closed without an answer"
    return "ok" if data.startswith(b"HTTP/1.1 200") else f"answered {data[:40]!r}"


def _plaintext(port: int) -> str:
    try:
        response = request(port, timeout=5)
    except (OSError, ConnectionError) as error:
        return f"refused: {error}"
    return f"answered {response.status}"


@pytest.fixture
def ca() -> TestCa:
    return TestCa()


def _pair(
    start_proxy: ProxyFactory,
    ca: TestCa,
    upstream: HttpUpstream,
    mode: str,
    **server: Any,
) -> Callable[..., tuple[ProxyProcess, int, ProxyProcess, int]]:
    def make(expected_san: str = SERVER_ID) -> tuple[ProxyProcess, int, ProxyProcess, int]:
        server_config, server_port = _server(ca, upstream, mode, **server)
        server_proxy = start_proxy(server_config, name="server")
        client_config, client_port = _client(ca, server_port, expected_san, ca.issue(CLIENT_ID))
        client_proxy = start_proxy(client_config, name="client")
        return client_proxy, client_port, server_proxy, server_port

    return make


def test_mtls_between_proxies_reports_both_identities(
    start_proxy: ProxyFactory, ca: TestCa, upstream: HttpUpstream
) -> None:
    client, client_port, server, _ = _pair(start_proxy, ca, upstream, "STRICT")()
    for _ in range(5):
        assert request(client_port, host="server").status == 200
    inbound = server.samples()
    assert (
        metric_sum(
            inbound,
            "istio_requests_total",
            reporter="destination",
            connection_security_policy="mutual_tls",
            source_principal=CLIENT_ID,
            destination_principal=SERVER_ID,
        )
        == 5
    )
    outbound = client.samples()
    assert (
        metric_sum(
            outbound, "istio_requests_total", reporter="source", destination_principal=SERVER_ID
        )
        == 5
    )


def test_strict_refuses_every_unauthenticated_attempt(
    start_proxy: ProxyFactory, ca: TestCa, upstream: HttpUpstream, tmp_path: Path
) -> None:
    _, _, server, port = _pair(start_proxy, ca, upstream, "STRICT")()
    other = TestCa("another root")
    assert _tls_handshake(port, ca, ca.issue(CLIENT_ID), tmp_path) == "ok"
    for attempt in range(3):  # every attempt, not just the first
        assert _plaintext(port).startswith("refused"), attempt
        assert _tls_handshake(port, ca, None, tmp_path).startswith("refused")  # no certificate
        foreign = other.issue(CLIENT_ID)
        assert _tls_handshake(port, ca, foreign, tmp_path).startswith("refused")
        expired = ca.issue(CLIENT_ID, expired=True)
        assert _tls_handshake(port, ca, expired, tmp_path).startswith("refused")
        # Signed by the mesh's CA, but for another trust domain.
        stranger = ca.issue("spiffe://other.example/ns/default/sa/web-sa")
        assert _tls_handshake(port, ca, stranger, tmp_path).startswith("refused")
    assert len(upstream.requests) == 1
    assert server.alive()


def test_client_refuses_a_server_with_an_unexpected_identity(
    start_proxy: ProxyFactory, ca: TestCa, upstream: HttpUpstream
) -> None:
    make = _pair(start_proxy, ca, upstream, "STRICT")
    _, client_port, _, _ = make("spiffe://cluster.local/ns/default/sa/payment")
    response = request(client_port, host="server")
    assert response.status == 503
    assert b"SAN" in response.body
    assert len(upstream.requests) == 0


def test_permissive_serves_tls_and_plaintext_on_one_port(
    start_proxy: ProxyFactory, ca: TestCa, upstream: HttpUpstream, tmp_path: Path
) -> None:
    _, client_port, server, port = _pair(start_proxy, ca, upstream, "PERMISSIVE")()
    assert request(client_port, host="server").status == 200
    assert _plaintext(port) == "answered 200"
    assert _tls_handshake(port, ca, ca.issue(CLIENT_ID), tmp_path) == "ok"
    samples = server.samples()
    mtls = metric_sum(samples, "istio_requests_total", connection_security_policy="mutual_tls")
    plain = metric_sum(samples, "istio_requests_total", connection_security_policy="none")
    assert (mtls, plain) == (2, 1)


def test_rbac_allows_the_principal_and_denies_plaintext(
    start_proxy: ProxyFactory, ca: TestCa, upstream: HttpUpstream, tmp_path: Path
) -> None:
    rbac = {
        "rules": {
            "action": "ALLOW",
            "policies": {
                "ns[default]-policy[web-only]-rule[0]": {
                    "permissions": [{"any": True}],
                    "principals": [{"authenticated": {"principal_name": {"exact": CLIENT_ID}}}],
                }
            },
        }
    }
    log = tmp_path / "access.log"
    make = _pair(start_proxy, ca, upstream, "PERMISSIVE", rbac=rbac, access_log=log)
    _, client_port, server, port = make()
    assert request(client_port, host="server").status == 200
    denied = request(port)
    assert (denied.status, denied.body) == (403, b"RBAC: access denied")
    assert len(upstream.requests) == 1
    samples = server.samples()
    assert metric_sum(samples, "istio_requests_total", response_code="403") == 1
    exposition = server.metrics_text()
    assert 'envoy_http_rbac_allowed{envoy_http_conn_manager_prefix="inbound"} 1' in exposition
    assert 'envoy_http_rbac_denied{envoy_http_conn_manager_prefix="inbound"} 1' in exposition
    lines = _log_lines(log, 2)
    assert lines[0] == {
        "code": 200,
        "details": None,
        "authz": "allowed",
        "policy": "ns[default]-policy[web-only]-rule[0]",
        "peer": CLIENT_ID,
    }
    assert lines[1] == {
        "code": 403,
        "details": "rbac_access_denied_matched_policy[none]",
        "authz": "denied",
        "policy": "no ALLOW policy matched",
        "peer": None,
    }


def _log_lines(path: Path, count: int) -> list[Json]:
    deadline = time.monotonic() + 5
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines() if line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)
