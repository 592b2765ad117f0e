"""Malformed, oversized and ambiguous HTTP/1.1 requests, with the answers they must get.

Each case is raw bytes for one connection. `statuses` are the acceptable answers
(Envoy's where it has one; RFC 9110/9112 otherwise). `may_forward` marks cases
a strict-but-lenient parser may accept as one well-formed request; everything
else must never reach the upstream. Requests hidden in a body use the path
`/smuggled`, which the upstream must never see.
"""

from __future__ import annotations

from dataclasses import dataclass

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n"
HOST = b"Host: svc\r\n"


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    data: bytes
    statuses: frozenset[int]
    may_forward: bool = False


def _case(id: str, data: bytes, *statuses: int, may_forward: bool = False) -> Case:
    return Case(id, data, frozenset(statuses), may_forward)


def _post(headers: bytes, body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\n" + HOST + headers + b"\r\n" + body


def _cl(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n" % len(body)


_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_ZERO_THEN_SMUGGLE = b"0\r\n\r\n" + SMUGGLED
_TE_CL_BODY = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)


def _chunked(body: bytes) -> bytes:
    return _post(_CHUNKED, body)


def _get_with(header_lines: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\n" + HOST + header_lines + b"\r\n"


CASES: tuple[Case, ...] = (
    # --- sizes -------------------------------------------------------------------------
    _case(
        "header-block-over-limit",
        _get_with(b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))),
        431,
    ),
    _case("single-header-over-limit", _get_with(b"X-Big: " + b"b" * 20_000 + b"\r\n"), 431),
    _case(
        "too-many-headers",  # Envoy's default max_headers_count is 100; each is tiny
        _get_with(b"".join(b"X-%d: 1\r\n" % i for i in range(150))),
        431,
    ),
    _case(
        "url-over-limit",
        b"GET /" + b"u" * 20_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        414,
        431,
    ),
    _case(
        "absurdly-long-url",
        b"GET /" + b"u" * 200_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        414,
        431,
    ),
    _case("long-method", b"G" * 20_000 + b" / HTTP/1.1\r\n" + HOST + b"\r\n", 400, 414, 431, 501),
    # --- Content-Length / Transfer-Encoding conflicts (CL.TE, TE.CL) -----------------
    _case("cl-then-te", _post(_cl(_ZERO_THEN_SMUGGLE) + _CHUNKED, _ZERO_THEN_SMUGGLE), 400),
    _case("te-then-cl", _post(_CHUNKED + b"Content-Length: 4\r\n", _TE_CL_BODY), 400),
    _case(
        "cl-te-on-get",
        b"GET / HTTP/1.1\r\n"
        + HOST
        + _cl(_ZERO_THEN_SMUGGLE)
        + _CHUNKED
        + b"\r\n"
        + _ZERO_THEN_SMUGGLE,
        400,
    ),
    _case(
        "duplicate-cl-differing",
        _post(b"Content-Length: 5\r\n" + _cl(b"hello" + SMUGGLED), b"hello" + SMUGGLED),
        400,
    ),
    _case(
        "cl-list-differing",
        _post(b"Content-Length: 5, %d\r\n" % (5 + len(SMUGGLED)), b"hello" + SMUGGLED),
        400,
    ),
    _case(
        "duplicate-cl-identical",
        _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
        200,
        400,
        may_forward=True,
    ),
    _case(
        "te-chunked-identity",
        _post(b"Transfer-Encoding: chunked, identity\r\n" + _cl(_TE_CL_BODY), _TE_CL_BODY),
        400,
        501,
    ),
    _case(
        "te-identity-chunked",
        _post(b"Transfer-Encoding: identity, chunked\r\n" + b"Content-Length: 4\r\n", _TE_CL_BODY),
        400,
        501,
    ),
    _case(
        "te-xchunked",
        _post(b"Transfer-Encoding: xchunked\r\n" + _cl(_ZERO_THEN_SMUGGLE), _ZERO_THEN_SMUGGLE),
        400,
        501,
    ),
    _case(
        "te-identity",
        _post(b"Transfer-Encoding: identity\r\n" + _cl(_ZERO_THEN_SMUGGLE), _ZERO_THEN_SMUGGLE),
        400,
        501,
    ),
    _case(
        "te-two-headers",
        _post(
            _CHUNKED + b"Transfer-Encoding: identity\r\n" + b"Content-Length: 4\r\n", _TE_CL_BODY
        ),
        400,
        501,
    ),
    _case(
        "te-space-before-colon",
        _post(b"Transfer-Encoding : chunked\r\n" + b"Content-Length: 4\r\n", _TE_CL_BODY),
        400,
    ),
    _case(
        "te-obs-fold",
        _post(b"Transfer-Encoding:\r\n chunked\r\n" + b"Content-Length: 4\r\n", _TE_CL_BODY),
        400,
    ),
    _case(
        "te-vertical-tab",
        _post(b"Transfer-Encoding:\x0bchunked\r\n" + b"Content-Length: 4\r\n", _TE_CL_BODY),
        400,
        501,
    ),
    _case(
        "te-quoted",
        _post(b'Transfer-Encoding: "chunked"\r\n' + b"Content-Length: 4\r\n", _TE_CL_BODY),
        400,
        501,
    ),
    _case(
        "te-in-http10",
        b"POST / HTTP/1.0\r\n" + HOST + _CHUNKED + b"Content-Length: 4\r\n\r\n" + _TE_CL_BODY,
        400,
        426,
        501,
    ),
    # --- chunk framing -----------------------------------------------------------------
    _case("chunk-size-hex-garbage", _chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    _case("chunk-size-negative", _chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    _case("chunk-size-overflow", _chunked(b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n"), 400),
    _case("chunk-size-0x-prefix", _chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    _case("chunk-size-missing-crlf", _chunked(b"5hello\r\n0\r\n\r\n"), 400),
    _case(
        "chunk-data-longer-than-size", _chunked(b"5\r\nhello" + SMUGGLED + b"\r\n0\r\n\r\n"), 400
    ),
    _case("chunk-data-missing-crlf", _chunked(b"5\r\nhello0\r\n\r\n"), 400),
    # --- request line ------------------------------------------------------------------
    _case("missing-version", b"GET /\r\n" + HOST + b"\r\n", 400),
    _case("http-2.0-in-h1", b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 400, 505),
    _case("version-garbage", b"GET / HTTP/x.y\r\n" + HOST + b"\r\n", 400),
    _case("lowercase-version", b"GET / http/1.1\r\n" + HOST + b"\r\n", 400),
    _case("space-in-target", b"GET /a b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    _case("control-char-in-target", b"GET /a\x01b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    _case("del-in-target", b"GET /a\x7fb HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    _case("nul-in-target", b"GET /a\x00b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    _case("empty-method", b" / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    _case("non-token-method", b"G(T / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    _case(
        "tls-client-hello",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x5a" * 32 + b"\r\n\r\n",
        400,
    ),
    _case("bare-lf-lines", b"GET / HTTP/1.1\n" + b"Host: svc\n\n", 200, 400, may_forward=True),
    # --- header fields -----------------------------------------------------------------
    _case("space-before-colon", _get_with(b"X-Foo : bar\r\n"), 400),
    _case("non-token-header-name", _get_with(b"X[Foo]: bar\r\n"), 400),
    _case("empty-header-name", _get_with(b": bar\r\n"), 400),
    _case("header-without-colon", _get_with(b"X-Foo bar\r\n"), 400),
    _case("nul-in-header-name", _get_with(b"X-F\x00oo: bar\r\n"), 400),
    _case("nul-in-header-value", _get_with(b"X-Foo: a\x00b\r\n"), 400),
    _case("bare-cr-in-header-value", _get_with(b"X-Foo: a\rb\r\n"), 400),
    _case("leading-whitespace-first-header", b"GET / HTTP/1.1\r\n Host: svc\r\n\r\n", 400),
    _case("obs-fold-benign", _get_with(b"X-Folded: a\r\n b\r\n"), 200, 400, may_forward=True),
    _case(
        "obs-fold-content-length",
        _post(b"Content-Length: 0\r\n %d\r\n" % len(SMUGGLED), SMUGGLED),
        400,
    ),
    _case("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    _case("duplicate-host", b"GET / HTTP/1.1\r\nHost: svc\r\nHost: other\r\n\r\n", 400),
    # --- Content-Length values ---------------------------------------------------------
    _case("cl-non-numeric", _post(b"Content-Length: abc\r\n", SMUGGLED), 400),
    _case("cl-negative", _post(b"Content-Length: -5\r\n", b"hello" + SMUGGLED), 400),
    _case("cl-plus-sign", _post(b"Content-Length: +5\r\n", b"hello" + SMUGGLED), 400),
    _case("cl-hex", _post(b"Content-Length: 0x10\r\n", b"x" * 16 + SMUGGLED), 400),
    _case("cl-decimal-point", _post(b"Content-Length: 5.0\r\n", b"hello" + SMUGGLED), 400),
    _case("cl-empty", _post(b"Content-Length: \r\n", SMUGGLED), 400),
    _case("cl-huge", _post(b"Content-Length: 99999999999999999999999999\r\n", SMUGGLED), 400, 413),
)
