"""Access log formatting: Envoy's default, custom text formats, JSON, and config errors."""

from __future__ import annotations

import json
import re

import pytest

from trellis.core.accesslog import (
    ENVOY_DEFAULT_FORMAT,
    ISTIO_DEFAULT_FORMAT,
    AccessLogEntry,
    AccessLogFormatter,
)
from trellis.errors import ConfigError

# The example line of Envoy's access log documentation, as an entry.
DOC_EXAMPLE = AccessLogEntry(
    start_time=1460751420.310,  # 2016-04-15T20:17:00.310Z
    method="POST",
    path="/api/v1/locations",
    protocol="HTTP/2",
    authority="locations",
    response_code=204,
    bytes_received=154,
    bytes_sent=0,
    duration_ms=226.9,
    upstream_service_time=100,
    x_forwarded_for="10.0.35.28",
    user_agent="nsq2http",
    request_id="cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2",
    upstream_host="10.0.2.1:80",
)

TCP = AccessLogEntry(
    start_time=1700000000.0,
    bytes_received=512,
    bytes_sent=2048,
    duration_ms=1500.2,
    upstream_host="10.1.0.7:5432",
    upstream_cluster="outbound|5432||db.default.svc.cluster.local",
    downstream_remote_address="10.1.0.3:40000",
    response_flags="UF",
)


def line(text_format: str, entry: AccessLogEntry) -> str:
    return AccessLogFormatter.from_config(text_format).format(entry)


def test_default_format_matches_envoys_documented_example() -> None:
    assert AccessLogFormatter.from_config().format(DOC_EXAMPLE) == (
        '[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 '
        '"10.0.35.28" "nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" '
        '"10.0.2.1:80"\n'
    )
    assert line(ENVOY_DEFAULT_FORMAT, DOC_EXAMPLE) == AccessLogFormatter.from_config().format(
        DOC_EXAMPLE
    )


def test_default_format_for_a_tcp_connection() -> None:
    assert AccessLogFormatter.from_config().format(TCP) == (
        '[2023-11-14T22:13:20.000Z] "- - -" 0 UF 512 2048 1500 - "-" "-" "-" "-" "10.1.0.7:5432"\n'
    )


def test_original_path_wins_over_the_rewritten_path() -> None:
    entry = AccessLogEntry(start_time=0, method="GET", path="/v2/x", original_path="/api/x")
    assert line("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(:PATH)%", entry) == "/api/x /v2/x"


def test_unset_and_empty_values_print_a_dash() -> None:
    entry = AccessLogEntry(start_time=0, user_agent="", route_name=None)
    assert line("[%REQ(USER-AGENT)%][%ROUTE_NAME%][%PROTOCOL%]", entry) == "[-][-][-]"


def test_custom_text_format_operators() -> None:
    entry = AccessLogEntry(
        start_time=1527590590.528,
        method="GET",
        authority="reviews:9080",
        response_code=200,
        duration_ms=12.99,
        upstream_cluster="outbound|9080||reviews.default.svc.cluster.local",
        route_name="default",
        downstream_remote_address="[2001:db8::1]:51000",
        downstream_local_address="10.0.0.5:9080",
        requested_server_name="outbound_.9080_._.reviews.default.svc.cluster.local",
        upstream_transport_failure_reason="TLS error: 268435581:SSL routines",
        request_headers={"x-tenant": "acme-corporation"},
        response_headers={"content-type": "application/json"},
    )
    fmt = (
        "%START_TIME(%s.%3f)% %START_TIME(%Y/%m/%d %H:%M:%S)% 100%% %REQ(:METHOD)% "
        "%REQ(X-TENANT):4% %RESP(CONTENT-TYPE)% %RESP(X-MISSING?CONTENT-TYPE)% "
        "%DURATION%ms %UPSTREAM_CLUSTER% %ROUTE_NAME% "
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% "
        "%REQUESTED_SERVER_NAME% %UPSTREAM_TRANSPORT_FAILURE_REASON:9%\n"
    )
    assert line(fmt, entry) == (
        "1527590590.528 2018/05/29 10:43:10 100% GET acme application/json application/json "
        "12ms outbound|9080||reviews.default.svc.cluster.local default "
        "2001:db8::1 10.0.0.5 outbound_.9080_._.reviews.default.svc.cluster.local TLS error\n"
    )


def test_start_time_fractions_and_epoch() -> None:
    entry = AccessLogEntry(start_time=1527590590.123456)
    assert line("%START_TIME(%s)%", entry) == "1527590590"
    assert line("%START_TIME(%s.%6f)%", entry) == "1527590590.123456"
    assert line("%START_TIME(%s.%9f)%", entry) == "1527590590.123456000"
    assert line("%START_TIME(%1f|%f)%", entry) == "1|123456000"


def test_formatter_lists_the_extra_headers_it_reads() -> None:
    formatter = AccessLogFormatter.from_config(
        "%REQ(X-Tenant)% %REQ(:AUTHORITY)% %REQ(USER-AGENT)% %RESP(Grpc-Status)% "
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"
    )
    assert formatter.request_headers == frozenset({"x-tenant"})
    assert formatter.response_headers == frozenset({"grpc-status"})
    assert AccessLogFormatter.from_config().request_headers == frozenset()


def test_istio_default_format_renders_every_field() -> None:
    entry = AccessLogEntry(
        start_time=1460751420.0,
        method="GET",
        path="/reviews/0",
        protocol="HTTP/1.1",
        authority="reviews:9080",
        response_code=200,
        response_code_details="via_upstream",
        bytes_sent=358,
        duration_ms=5,
        upstream_service_time=4,
        user_agent="curl/8.0",
        request_id="abc",
        upstream_host="10.0.0.9:9080",
        upstream_cluster="outbound|9080||reviews.default.svc.cluster.local",
        upstream_local_address="10.0.0.4:40000",
        downstream_local_address="10.96.0.10:9080",
        downstream_remote_address="10.0.0.4:39000",
        route_name="default",
    )
    assert AccessLogFormatter.from_config(ISTIO_DEFAULT_FORMAT).format(entry) == (
        '[2016-04-15T20:17:00.000Z] "GET /reviews/0 HTTP/1.1" 200 - via_upstream - "-" 0 358 5 4 '
        '"-" "curl/8.0" "abc" "reviews:9080" "10.0.0.9:9080" '
        "outbound|9080||reviews.default.svc.cluster.local 10.0.0.4:40000 10.96.0.10:9080 "
        "10.0.0.4:39000 - default\n"
    )


def test_json_format_keeps_types_and_uses_null_for_unset() -> None:
    formatter = AccessLogFormatter.from_config(
        json_format=(
            ("start_time", "%START_TIME%"),
            ("method", "%REQ(:METHOD)%"),
            ("code", "%RESPONSE_CODE%"),
            ("duration", "%DURATION%"),
            ("flags", "%RESPONSE_FLAGS%"),
            ("agent", "%REQ(USER-AGENT)%"),
            ("route", "%ROUTE_NAME%"),
            ("summary", "%RESPONSE_CODE% in %DURATION%ms via %ROUTE_NAME%"),
            ("tenant", "%REQ(X-TENANT)%"),
        )
    )
    out = formatter.format(DOC_EXAMPLE)
    assert out.endswith("\n") and out.count("\n") == 1
    record = json.loads(out)
    assert list(record) == [
        "start_time",
        "method",
        "code",
        "duration",
        "flags",
        "agent",
        "route",
        "summary",
        "tenant",
    ]
    assert record == {
        "start_time": "2016-04-15T20:17:00.310Z",
        "method": "POST",
        "code": 204,
        "duration": 226,
        "flags": "-",
        "agent": "nsq2http",
        "route": None,
        "summary": "204 in 226ms via -",
        "tenant": None,
    }


def test_json_format_for_tcp_and_escaping() -> None:
    formatter = AccessLogFormatter.from_config(
        json_format=(
            ("method", "%REQ(:METHOD)%"),
            ("sent", "%BYTES_SENT%"),
            ("ua", "%REQ(USER-AGENT)%"),
        )
    )
    assert json.loads(formatter.format(TCP)) == {"method": None, "sent": 2048, "ua": None}
    odd = AccessLogEntry(start_time=0, user_agent='say "hi"\n\u00e9')
    assert json.loads(formatter.format(odd))["ua"] == 'say "hi"\n\u00e9'


@pytest.mark.parametrize(
    ("text_format", "message"),
    [
        ("%FOO_BAR%", "%FOO_BAR%"),
        (
            "[%START_TIME%] %DYNAMIC_METADATA(istio.mixer:status)%",
            "unsupported %DYNAMIC_METADATA(istio.mixer:status)% (supported: envoy.filters",
        ),
        ("100% done", "no command at 3"),
        ("%REQ%", "needs a header name"),
        ("%REQ(A?B?C)%", "invalid header operator"),
        ("%PROTOCOL(x)%", "takes no argument"),
    ],
)
def test_bad_text_formats_are_config_errors(text_format: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        AccessLogFormatter.from_config(text_format)


def test_unknown_operator_in_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported access log operator %NOPE%"):
        AccessLogFormatter.from_config(json_format=(("a", "%PROTOCOL%"), ("b", "%NOPE%")))


def test_text_and_json_together_are_rejected() -> None:
    with pytest.raises(ConfigError, match="not both"):
        AccessLogFormatter.from_config("%PROTOCOL%", (("p", "%PROTOCOL%"),))


def test_rbac_metadata_and_peer_identities_are_logged() -> None:
    formatter = AccessLogFormatter.from_config(
        json_format=(
            ("result", "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_engine_result)%"),
            ("policy", "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%"),
            ("client", "%DOWNSTREAM_PEER_URI_SAN%"),
            ("server", "%UPSTREAM_PEER_URI_SAN%"),
        )
    )
    entry = AccessLogEntry(
        start_time=0,
        rbac_result="denied",
        rbac_policy="no ALLOW policy matched",
        downstream_peer_uri_san="spiffe://cluster.local/ns/a/sa/b",
    )
    assert json.loads(formatter.format(entry)) == {
        "result": "denied",
        "policy": "no ALLOW policy matched",
        "client": "spiffe://cluster.local/ns/a/sa/b",
        "server": None,
    }


def test_trace_id_is_the_traced_requests_and_a_dash_without_one() -> None:
    formatter = AccessLogFormatter.from_config("%TRACE_ID% %REQ(X-REQUEST-ID)%", None)
    traced = AccessLogEntry(start_time=0, trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    assert formatter.format(traced) == "4bf92f3577b34da6a3ce929d0e0e4736 -"
    assert formatter.format(AccessLogEntry(start_time=0)) == "- -"
