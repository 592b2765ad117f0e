"""Access logs (file logger) record each request with Envoy's response flags."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

from .bootstrap import (
    Json,
    bootstrap,
    cluster,
    free_port,
    http_listener,
    tcp_listener,
    virtual_host,
)
from .client import read_until_closed, request
from .harness import ProxyFactory
from .tcp_upstream import TcpUpstream
from .upstream import HttpUpstream

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
JSON_FORMAT = {
    "code": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "method": "%REQ(:METHOD)%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "rid": "%REQ(X-REQUEST-ID)%",
}


def _file_log(path: Path, log_format: Json | None = None) -> list[Json]:
    typed: Json = {"@type": FILE_LOG, "path": str(path)}
    if log_format is not None:
        typed["log_format"] = log_format
    return [{"name": "envoy.access_loggers.file", "typed_config": typed}]


def _lines(path: Path, want: int, timeout: float = 4.0) -> list[str]:
    """Envoy flushes access log files about once a second: poll."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _routes() -> list[Json]:
    def to(prefix: str, name: str, **action: Any) -> Json:
        return {"match": {"prefix": prefix}, "route": {"cluster": name, **action}}

    return [
        to("/ok/", "good", prefix_rewrite="/"),
        to("/slow/", "good", prefix_rewrite="/", timeout="0.2s"),
        to("/dead/", "dead"),
        to(
            "/retry/",
            "good",
            prefix_rewrite="/",
            retry_policy={"retry_on": "5xx", "num_retries": 1},
        ),
    ]


def test_http_access_log_json_with_response_flags(
    tmp_path: Path, start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    log = tmp_path / "access.json.log"
    port = free_port()
    listener = http_listener(
        "http",
        port,
        [virtual_host("svc", _routes(), ["svc"])],
        access_log=_file_log(log, {"json_format": JSON_FORMAT}),
    )
    clusters = [cluster("good", [upstream.port]), cluster("dead", [free_port()])]
    start_proxy(bootstrap(free_port(), [listener], clusters))

    sent = [
        ("/ok/x", request(port, "GET", "/ok/x", headers={"x-request-id": "rid-1"}).status),
        ("/nothing", request(port, "GET", "/", host="other").status),
        ("/dead/x", request(port, "GET", "/dead/x").status),
        ("/slow/delay/2", request(port, "GET", "/slow/delay/2").status),
        ("/retry/status/503", request(port, "GET", "/retry/status/503").status),
    ]
    assert [code for _, code in sent] == [200, 404, 503, 504, 503]
    records = [json.loads(line) for line in _lines(log, 5)]
    assert len(records) == 5, records
    by_path = {r["path"]: r for r in records}
    expected = {
        "/ok/x": "-",
        "/": "NR",
        "/dead/x": "UF",
        "/slow/delay/2": "UT",
        "/retry/status/503": "URX",
    }
    for path, flag in expected.items():
        assert path in by_path, f"no access log record for {path}: {records}"
        flags = str(by_path[path]["flags"]).split(",")
        assert flag in flags, f"{path}: flags {by_path[path]['flags']!r}, expected {flag}"
    assert int(by_path["/ok/x"]["code"]) == 200
    assert by_path["/ok/x"]["rid"] == "rid-1"
    assert by_path["/ok/x"]["cluster"] == "good"
    assert int(by_path["/dead/x"]["code"]) == 503


def test_http_access_log_default_format(
    tmp_path: Path, start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    log = tmp_path / "access.log"
    port = free_port()
    listener = http_listener(
        "http", port, [virtual_host("svc", _routes(), ["svc"])], access_log=_file_log(log)
    )
    start_proxy(
        bootstrap(
            free_port(),
            [listener],
            [cluster("good", [upstream.port]), cluster("dead", [free_port()])],
        )
    )
    assert (
        request(port, "POST", "/ok/echo", body=b"12345", headers={"user-agent": "ua/1"}).status
        == 200
    )
    (line,) = _lines(log, 1)
    pattern = (
        r'^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "POST /ok/echo HTTP/1\.1" 200 - 5 5 \d+ \S+ '
        r'"-" "ua/1" "[0-9a-f-]{36}" "svc" "127\.0\.0\.1:' + str(upstream.port) + '"$'
    )
    assert re.match(pattern, line), line


def test_tcp_access_log(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    ok_log, dead_log = tmp_path / "tcp-ok.log", tmp_path / "tcp-dead.log"
    up = TcpUpstream("reply").start()
    try:
        ok_port, dead_port = free_port(), free_port()
        fmt = {"json_format": {**JSON_FORMAT, "rx": "%BYTES_RECEIVED%", "tx": "%BYTES_SENT%"}}
        listeners = [
            tcp_listener("ok", ok_port, "good", access_log=_file_log(ok_log, fmt)),
            tcp_listener("dead", dead_port, "dead", access_log=_file_log(dead_log, fmt)),
        ]
        clusters = [cluster("good", [up.port]), cluster("dead", [free_port()])]
        start_proxy(bootstrap(free_port(), listeners, clusters))
        with socket.create_connection(("127.0.0.1", ok_port), timeout=5) as sock:
            sock.sendall(b"abc")
            sock.shutdown(socket.SHUT_WR)
            assert read_until_closed(sock, 5).data == b"received 3 bytes"
        with socket.create_connection(("127.0.0.1", dead_port), timeout=5) as sock:
            assert read_until_closed(sock, 5).closed
        ok_lines, dead_lines = _lines(ok_log, 1), _lines(dead_log, 1)
    finally:
        up.stop()
    assert len(ok_lines) == 1, f"no access log line for a proxied TCP connection: {ok_lines}"
    ok = json.loads(ok_lines[0])
    assert (ok["flags"], int(ok["rx"]), int(ok["tx"])) == ("-", 3, 16), ok
    assert len(dead_lines) == 1, f"no access log line for a failed TCP connection: {dead_lines}"
    assert "UF" in str(json.loads(dead_lines[0])["flags"]).split(","), dead_lines
