"""The pure parts of the sidecar's application probes: the request, the status, gRPC's answer."""

from __future__ import annotations

import pytest

from trellis.core.app_probe import HttpGetCheck
from trellis.runtime.app_prober import AppProber, ProbeFailedError, _status, serving_status


def test_the_request_is_the_kubelets_and_the_probes_own_headers_win() -> None:
    prober = AppProber({})
    check = HttpGetCheck(8080, "/healthz?deep=1", headers=(("Host", "web.shop"), ("X-A", "1")))
    head = prober._request(check, {"host": "10.1.2.3:15020", "user-agent": "kube-probe/1.30"})
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /healthz?deep=1 HTTP/1.1"
    assert "Host: web.shop" in lines
    assert "User-Agent: kube-probe/1.30" in lines
    assert "Connection: close" in lines
    assert "X-A: 1" in lines
    assert head.endswith(b"\r\n\r\n")
    # Without an override: the kubelet's host with the application's port.
    head = prober._request(HttpGetCheck(8080), {"host": "[fd00::5]:15020"})
    assert b"\r\nHost: [fd00::5]:8080\r\n" in head
    head = prober._request(HttpGetCheck(8080), {})
    assert b"\r\nHost: 127.0.0.1:8080\r\n" in head


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", 200),
        (b"HTTP/1.0 204 No Content\r\n\r\n", 204),
        (b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n", 200),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", 503),
    ],
)
def test_the_kubelet_gets_the_applications_status(head: bytes, status: int) -> None:
    assert _status(head) == status


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 101 Switching\r\n\r\n", b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 x\r\n\r\n"]
)
def test_an_answer_that_is_not_a_final_http_status_fails_the_probe(head: bytes) -> None:
    with pytest.raises(ProbeFailedError):
        _status(head)


def test_grpc_health_answers_decode() -> None:
    assert serving_status(b"\x08\x01") == 1  # SERVING
    assert serving_status(b"\x08\x02") == 2  # NOT_SERVING
    assert serving_status(b"") == 0  # UNKNOWN
    assert serving_status(b"\x12\x02ab\x08\x01") == 1  # an unknown field skipped
    with pytest.raises(ProbeFailedError):
        serving_status(b"\x08")
