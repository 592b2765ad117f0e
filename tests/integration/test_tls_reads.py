"""The proxy's TLS contexts read one record at a time (`RecordSizedSSLObject`).

uvloop asks for 256 KiB per read, and `ssl` allocates what is asked for before
OpenSSL fills it: two such blocks per received segment of every TLS connection
spread the sidecar's heap (bench/README.md, churn). Real certificates and a real
handshake, over memory buffers.
"""

from __future__ import annotations

import ssl
import tracemalloc

from trellis.core.tls import (
    CommonTls,
    DownstreamTls,
    SecretRef,
    TlsCertificateSecret,
    UpstreamTls,
    ValidationSecret,
)
from trellis.runtime.secrets import TLS_RECORD_PLAINTEXT, SecretStore

from .pki import TestCa

UVLOOP_READ = 256 * 1024  # what uvloop's TLS transport asks for (SSL_READ_MAX_SIZE)


def _pair() -> tuple[ssl.SSLObject, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A client and a server TLS object from the proxy's store, handshaken; and the
    memory buffers that carry client -> server and server -> client records."""
    ca = TestCa()
    client_cert = ca.issue("spiffe://cluster.local/ns/t/sa/client")
    server_cert = ca.issue("spiffe://cluster.local/ns/t/sa/server")
    store = SecretStore(
        (
            (
                "client",
                TlsCertificateSecret(client_cert.chain_pem.encode(), client_cert.key_pem.encode()),
            ),
            (
                "server",
                TlsCertificateSecret(server_cert.chain_pem.encode(), server_cert.key_pem.encode()),
            ),
            ("root", ValidationSecret(ca.root_pem.encode())),
        )
    )
    client_context = store.client_context(
        UpstreamTls(CommonTls(SecretRef("client"), SecretRef("root")))
    )
    server_context = store.server_context(
        DownstreamTls(CommonTls(SecretRef("server"), SecretRef("root")), True)
    )
    assert client_context is not None and server_context is not None
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_side=False)
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):  # a TLS 1.3 handshake takes a few flights
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            break
    else:
        raise AssertionError("the handshake did not finish")
    return client, server, to_server, to_client


def test_a_read_allocates_one_record_not_what_was_asked_for() -> None:
    client, server, _, _ = _pair()
    body = bytes(range(256)) * 160  # 40 KiB: three records
    client.write(body)
    received = []
    tracemalloc.start()
    try:
        for _ in range(10):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            try:
                chunk = server.read(UVLOOP_READ)
            except ssl.SSLWantReadError:
                break
            grown = tracemalloc.get_traced_memory()[1] - before
            assert grown < 2 * TLS_RECORD_PLAINTEXT, f"a read took {grown} bytes"
            received.append(chunk)
    finally:
        tracemalloc.stop()
    assert b"".join(received) == body
    assert max(map(len, received)) <= TLS_RECORD_PLAINTEXT


def test_reading_into_a_buffer_is_bounded_the_same_way() -> None:
    client, server, _, _ = _pair()
    client.write(b"x" * 1000)
    buffer = bytearray(UVLOOP_READ)
    count: object = server.read(UVLOOP_READ, buffer)  # typeshed says bytes; it is the count
    assert count == 1000
    assert buffer[:1000] == b"x" * 1000
