"""Trace context parsing, sampling decisions and the headers sent upstream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.core.tracing import (
    NO_TRACE,
    IncomingTrace,
    TraceContext,
    TraceFormat,
    TracingConfig,
    TracingProvider,
    check_percent,
    decide_sampled,
    incoming_trace,
    new_span_id,
    new_trace_id,
    operation_name,
    outgoing_headers,
    parse_traceparent,
    replace_trace_headers,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
CONFIG = TracingConfig(TracingProvider("otel"), random_sampling=1.0)


def test_traceparent_sampled_and_not() -> None:
    context = parse_traceparent(f"00-{TRACE}-{SPAN}-01".encode())
    assert context == TraceContext(int(TRACE, 16), int(SPAN, 16), True)
    context = parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode())
    assert context is not None and context.sampled is False


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE}-{SPAN}",  # no flags
        f"ff-{TRACE}-{SPAN}-01",  # forbidden version
        f"00-{'0' * 32}-{SPAN}-01",  # zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # zero span id
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper case is invalid in W3C
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four parts
        f"00-{TRACE[:-1]}-{SPAN}-01",
        "garbage",
    ],
)
def test_malformed_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent(value.encode()) is None
    assert incoming_trace([(b"traceparent", value.encode())]).context is None


def test_future_version_with_more_fields_is_read() -> None:
    context = parse_traceparent(f"01-{TRACE}-{SPAN}-01-whatever".encode())
    assert context is not None and context.sampled


def test_w3c_wins_over_b3_and_carries_tracestate() -> None:
    found = incoming_trace(
        [
            (b"x-b3-traceid", b"1" * 16),
            (b"x-b3-spanid", b"2" * 16),
            (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
            (b"tracestate", b"congo=t61rcWkgMzE"),
        ]
    )
    assert found.context == TraceContext(int(TRACE, 16), int(SPAN, 16), True, b"congo=t61rcWkgMzE")


def test_b3_multi_header() -> None:
    found = incoming_trace(
        [
            (b"x-b3-traceid", b"80f198ee56343ba864fe8b2a57d3eff7"),
            (b"x-b3-spanid", b"e457b5a2e4d86bd1"),
            (b"x-b3-parentspanid", b"05e3ac9a4f6e3b90"),
            (b"x-b3-sampled", b"0"),
        ]
    )
    assert found.context == TraceContext(
        0x80F198EE56343BA864FE8B2A57D3EFF7, 0xE457B5A2E4D86BD1, False, source=TraceFormat.B3
    )


def test_b3_debug_flag_samples() -> None:
    found = incoming_trace(
        [(b"x-b3-traceid", b"a" * 16), (b"x-b3-spanid", b"b" * 16), (b"x-b3-flags", b"1")]
    )
    assert found.context is not None
    assert found.context.sampled and found.context.debug
    assert decide_sampled(found, TracingConfig(TracingProvider("o"), overall_sampling=0), 50)


def test_b3_single_header() -> None:
    found = incoming_trace([(b"b3", b"80f198ee56343ba8-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")])
    assert found.context == TraceContext(
        0x80F198EE56343BA8, 0xE457B5A2E4D86BD1, True, source=TraceFormat.B3_SINGLE
    )
    deny = incoming_trace([(b"b3", b"0")])
    assert deny.context is not None and deny.context.sampled is False
    assert deny.context.trace_id == 0  # a decision only: the proxy starts the trace


def test_b3_sampled_alone_decides() -> None:
    found = incoming_trace([(b"x-b3-sampled", b"1")])
    assert found.context is not None and found.context.trace_id == 0
    assert decide_sampled(found, CONFIG, roll=99.0)


def test_no_headers_no_context() -> None:
    assert incoming_trace([(b"host", b"x")]) is NO_TRACE


def test_sampling_order() -> None:
    sampled = IncomingTrace(TraceContext(1, 2, True))
    unsampled = IncomingTrace(TraceContext(1, 2, False))
    undecided = IncomingTrace(TraceContext(1, 2, None))
    # the sender's decision travels with the trace
    assert decide_sampled(sampled, CONFIG, roll=99.0)
    assert not decide_sampled(unsampled, CONFIG, roll=0.0)
    # no decision: random_sampling (1%)
    assert decide_sampled(undecided, CONFIG, roll=0.5)
    assert not decide_sampled(undecided, CONFIG, roll=1.5)
    assert not decide_sampled(NO_TRACE, CONFIG, roll=1.5)
    # forced and client-requested traces
    assert decide_sampled(IncomingTrace(None, forced=True), CONFIG, roll=99.0)
    client = IncomingTrace(None, client_requested=True)
    assert decide_sampled(client, CONFIG, roll=99.0)
    half = TracingConfig(TracingProvider("o"), random_sampling=0, client_sampling=50)
    assert not decide_sampled(client, half, roll=60.0)
    # overall_sampling caps everything
    capped = TracingConfig(TracingProvider("o"), overall_sampling=10)
    assert not decide_sampled(sampled, capped, roll=20.0)
    assert decide_sampled(sampled, capped, roll=5.0)


def test_outgoing_headers_name_the_proxy_span() -> None:
    headers = dict(outgoing_headers(int(TRACE, 16), 0xABC, 0x123, True, b"a=b"))
    assert headers[b"traceparent"] == f"00-{TRACE}-0000000000000abc-01".encode()
    assert headers[b"tracestate"] == b"a=b"
    assert headers[b"x-b3-traceid"] == TRACE.encode()
    assert headers[b"x-b3-spanid"] == b"0000000000000abc"
    assert headers[b"x-b3-parentspanid"] == b"0000000000000123"
    assert headers[b"x-b3-sampled"] == b"1"
    unsampled = dict(outgoing_headers(1, 2, None, False))
    assert unsampled[b"traceparent"].endswith(b"-00")
    assert b"x-b3-parentspanid" not in unsampled
    assert unsampled[b"x-b3-sampled"] == b"0"
    debug = dict(outgoing_headers(1, 2, None, True, debug=True))
    assert debug[b"x-b3-flags"] == b"1" and b"x-b3-sampled" not in debug


def test_replace_drops_every_incoming_trace_header() -> None:
    headers = [
        (b"host", b"x"),
        (b"b3", b"1"),
        (b"traceparent", b"old"),
        (b"x-b3-flags", b"1"),
        (b"x-request-id", b"r"),
    ]
    replace_trace_headers(headers, outgoing_headers(1, 2, None, True))
    names = [name for name, _ in headers]
    assert names[:2] == [b"host", b"x-request-id"]
    assert b"b3" not in names and b"x-b3-flags" not in names
    assert names.count(b"traceparent") == 1


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1), st.booleans())
def test_what_goes_out_comes_back_in(trace: int, span: int, sampled: bool) -> None:
    trace_id, span_id = new_trace_id(trace), new_span_id(span)
    found = incoming_trace(outgoing_headers(trace_id, span_id, None, sampled))
    assert found.context == TraceContext(trace_id, span_id, sampled)


@given(st.binary(max_size=80))
def test_parsers_never_raise(value: bytes) -> None:
    for name in (b"traceparent", b"b3", b"x-b3-traceid", b"x-b3-sampled"):
        incoming_trace([(name, value), (b"x-b3-spanid", value)])


def test_operation_names() -> None:
    assert operation_name("outbound|8080||cart.shop.svc.cluster.local", "cart") == (
        "cart.shop.svc.cluster.local:8080/*"
    )
    assert operation_name("inbound|8080||", "cart:8080") == "cart:8080/*"
    assert operation_name("inbound|9000||", "[::1]:9000") == "[::1]:9000/*"
    assert operation_name("backend", "svc.example") == "svc.example/*"
    assert operation_name(None, "db:5432") == "db:5432/*"


def test_check_percent() -> None:
    assert check_percent(0.5) == 0.5
    with pytest.raises(ValueError, match="between 0 and 100"):
        check_percent(100.5)
