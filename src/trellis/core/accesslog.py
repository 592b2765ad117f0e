"""Access log records and Envoy-compatible formatting (text format strings and JSON).

A format is compiled once into literal and operator pieces; formatting an
entry walks the pieces. Unset or empty values print as "-" in text; in JSON a
value made of a single operator keeps its type (number, string, or null when
unset), as Envoy's `json_format` does.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType

from trellis.errors import ConfigError

ENVOY_DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)
"""Envoy's format when none is configured."""

ISTIO_DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
"""The text format Istio configures for its `envoy` access log provider."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessLogEntry:
    """What happened to one HTTP request or one TCP connection.

    For TCP leave the HTTP fields (method, path, protocol, headers) unset and
    `response_code` at 0, as Envoy logs TCP connections. Addresses are
    `host:port` text (`[v6]:port` for IPv6). `request_headers` and
    `response_headers` hold only the extra headers a format asks for
    (`AccessLogFormatter.request_headers`), keyed by lower-case name.
    """

    start_time: float  # seconds since the epoch
    method: str | None = None
    path: str | None = None
    original_path: str | None = None  # before a prefix rewrite (x-envoy-original-path)
    protocol: str | None = None  # "HTTP/1.1", "HTTP/2"
    authority: str | None = None
    response_code: int = 0
    response_flags: str = "-"
    bytes_received: int = 0
    bytes_sent: int = 0
    duration_ms: float = 0.0
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    route_name: str | None = None
    request_id: str | None = None
    trace_id: str | None = None  # 32 hex digits when the connection manager traces
    downstream_remote_address: str | None = None
    downstream_local_address: str | None = None
    upstream_local_address: str | None = None
    requested_server_name: str | None = None
    user_agent: str | None = None
    x_forwarded_for: str | None = None
    upstream_service_time: int | None = None  # milliseconds (x-envoy-upstream-service-time)
    upstream_transport_failure_reason: str | None = None
    response_code_details: str | None = None
    connection_termination_details: str | None = None
    request_headers: Mapping[str, str] | None = None
    response_headers: Mapping[str, str] | None = None
    downstream_peer_uri_san: str | None = None  # the client's SPIFFE ID over mTLS
    upstream_peer_uri_san: str | None = None  # the upstream's SPIFFE ID over mTLS
    rbac_result: str | None = None  # "allowed" / "denied" when RBAC filters ran
    rbac_policy: str | None = None  # the policy and rule that decided, or why none did


Value = str | int | None
Getter = Callable[[AccessLogEntry], Value]
Piece = str | Getter  # a literal or an operator

# % COMMAND(ARGUMENT):LENGTH %, the grammar of Envoy's substitution formatter.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")

_FIELD_OPERATORS: Mapping[str, str] = MappingProxyType(
    {
        "PROTOCOL": "protocol",
        "RESPONSE_CODE": "response_code",
        "RESPONSE_CODE_DETAILS": "response_code_details",
        "CONNECTION_TERMINATION_DETAILS": "connection_termination_details",
        "RESPONSE_FLAGS": "response_flags",
        "BYTES_RECEIVED": "bytes_received",
        "BYTES_SENT": "bytes_sent",
        "UPSTREAM_HOST": "upstream_host",
        "UPSTREAM_CLUSTER": "upstream_cluster",
        "UPSTREAM_CLUSTER_RAW": "upstream_cluster",
        "UPSTREAM_LOCAL_ADDRESS": "upstream_local_address",
        "UPSTREAM_TRANSPORT_FAILURE_REASON": "upstream_transport_failure_reason",
        "DOWNSTREAM_REMOTE_ADDRESS": "downstream_remote_address",
        "DOWNSTREAM_LOCAL_ADDRESS": "downstream_local_address",
        "REQUESTED_SERVER_NAME": "requested_server_name",
        "ROUTE_NAME": "route_name",
        "TRACE_ID": "trace_id",
        "DOWNSTREAM_PEER_URI_SAN": "downstream_peer_uri_san",
        "UPSTREAM_PEER_URI_SAN": "upstream_peer_uri_san",
    }
)

# %DYNAMIC_METADATA(NAMESPACE:KEY)% values Trellis records.
_METADATA_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "envoy.filters.http.rbac:enforced_engine_result": "rbac_result",
        "envoy.filters.http.rbac:enforced_effective_policy_id": "rbac_policy",
        "envoy.filters.network.rbac:enforced_engine_result": "rbac_result",
        "envoy.filters.network.rbac:enforced_effective_policy_id": "rbac_policy",
    }
)

# Headers the entry carries as fields instead of in its header mappings.
_REQUEST_HEADER_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        ":method": "method",
        ":path": "path",
        ":authority": "authority",
        "host": "authority",
        "x-envoy-original-path": "original_path",
        "user-agent": "user_agent",
        "x-forwarded-for": "x_forwarded_for",
        "x-request-id": "request_id",
    }
)


def _duration(entry: AccessLogEntry) -> int:
    return int(entry.duration_ms)


def _upstream_service_time(entry: AccessLogEntry) -> str | None:
    value = entry.upstream_service_time
    return None if value is None else str(value)


def _without_port(address: str | None) -> str | None:
    if not address:
        return address
    if address.startswith("["):
        return address[1 : address.find("]")]
    host, sep, _ = address.rpartition(":")
    return host if sep else address


def _address_without_port(attr: str) -> Getter:
    get = attrgetter(attr)
    return lambda entry: _without_port(get(entry))


_COMPUTED_OPERATORS: Mapping[str, Getter] = MappingProxyType(
    {
        "DURATION": _duration,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _address_without_port(
            "downstream_remote_address"
        ),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _address_without_port("downstream_local_address"),
    }
)


# --- START_TIME ----------------------------------------------------------------------


def _split_time(start: float) -> tuple[int, int]:
    """Whole seconds and microseconds, rounded to the microsecond first."""
    seconds, micros = divmod(round(start * 1_000_000), 1_000_000)
    return seconds, micros


def _default_start_time() -> Getter:
    """Envoy's default START_TIME, `2016-04-15T20:17:00.310Z`; remembers the last second."""
    last: list[tuple[int, str]] = [(-1, "")]

    def render(entry: AccessLogEntry) -> str:
        seconds, micros = _split_time(entry.start_time)
        cached_seconds, stamp = last[0]
        if seconds != cached_seconds:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            last[0] = (seconds, stamp)
        return f"{stamp}.{micros // 1000:03d}Z"

    return render


def _start_time_formatter(spec: str) -> Getter:
    """Compile a strftime-style spec with Envoy's extra `%s` and `%[1-9]f` (UTC)."""
    # Segments: ("t", strftime text) | ("s", "") | ("f", digits)
    segments: list[tuple[str, str]] = []
    chunk: list[str] = []
    i = 0
    while i < len(spec):
        char = spec[i]
        nxt = spec[i + 1] if i + 1 < len(spec) else ""
        special: tuple[str, str] | None = None
        width = 2
        if char == "%" and nxt == "s":
            special = ("s", "")
        elif char == "%" and nxt == "f":
            special = ("f", "9")
        elif char == "%" and nxt and nxt in "123456789" and spec[i + 2 : i + 3] == "f":
            special, width = ("f", nxt), 3
        if special is None:
            width = 2 if char == "%" and nxt else 1
            chunk.append(spec[i : i + width])
        else:
            if chunk:
                segments.append(("t", "".join(chunk)))
                chunk = []
            segments.append(special)
        i += width
    if chunk:
        segments.append(("t", "".join(chunk)))
    frozen = tuple(segments)

    def render(entry: AccessLogEntry) -> str:
        seconds, micros = _split_time(entry.start_time)
        parts = []
        for kind, text in frozen:
            if kind == "t":
                parts.append(time.strftime(text, time.gmtime(seconds)))
            elif kind == "s":
                parts.append(str(seconds))
            else:
                digits = int(text)
                scaled = (
                    micros // 10 ** (6 - digits) if digits <= 6 else micros * 10 ** (digits - 6)
                )
                parts.append(f"{scaled:0{digits}d}")
        return "".join(parts)

    return render


# --- compiling ---------------------------------------------------------------------------


class _Compiler:
    """Turns format strings into pieces and remembers which extra headers they read."""

    def __init__(self) -> None:
        self.request_headers: set[str] = set()
        self.response_headers: set[str] = set()

    def compile(self, fmt: str) -> tuple[Piece, ...]:
        pieces: list[Piece] = []
        literal: list[str] = []
        pos = 0
        while pos < len(fmt):
            char = fmt[pos]
            if char != "%":
                literal.append(char)
                pos += 1
                continue
            if fmt.startswith("%%", pos):
                literal.append("%")
                pos += 2
                continue
            match = _COMMAND.match(fmt, pos)
            if match is None:
                raise ConfigError(f"invalid access log format {fmt!r}: no command at {pos}")
            if literal:
                pieces.append("".join(literal))
                literal = []
            command, argument, length = match.groups()
            getter = self._operator(command, argument)
            if length is not None:
                getter = _truncating(getter, int(length))
            pieces.append(getter)
            pos = match.end()
        if literal:
            pieces.append("".join(literal))
        return tuple(pieces)

    def _operator(self, command: str, argument: str | None) -> Getter:
        if command in ("REQ", "RESP"):
            if not argument:
                raise ConfigError(f"access log operator %{command}% needs a header name")
            return self._header(command == "REQ", argument)
        if command == "DYNAMIC_METADATA":
            field = _METADATA_FIELDS.get(argument or "")
            if field is None:
                known = ", ".join(sorted(_METADATA_FIELDS))
                raise ConfigError(
                    f"unsupported %DYNAMIC_METADATA({argument})% (supported: {known})"
                )
            return attrgetter(field)
        if command == "START_TIME":
            return _default_start_time() if not argument else _start_time_formatter(argument)
        if command in _FIELD_OPERATORS or command in _COMPUTED_OPERATORS:
            if argument is not None:
                raise ConfigError(f"access log operator %{command}% takes no argument")
            computed = _COMPUTED_OPERATORS.get(command)
            return computed if computed is not None else attrgetter(_FIELD_OPERATORS[command])
        raise ConfigError(f"unsupported access log operator %{command}%")

    def _header(self, request: bool, argument: str) -> Getter:
        names = argument.split("?")
        if len(names) > 2 or not all(names):
            raise ConfigError(f"invalid header operator argument {argument!r}")
        getters = [self._one_header(request, name.lower()) for name in names]
        if len(getters) == 1:
            return getters[0]
        main, alternative = getters

        def either(entry: AccessLogEntry) -> Value:
            value = main(entry)
            return alternative(entry) if value is None else value

        return either

    def _one_header(self, request: bool, name: str) -> Getter:
        if request and name in _REQUEST_HEADER_FIELDS:
            return attrgetter(_REQUEST_HEADER_FIELDS[name])
        if not request and name == "x-envoy-upstream-service-time":
            return _upstream_service_time
        if request:
            self.request_headers.add(name)
            return lambda entry: _lookup(entry.request_headers, name)
        self.response_headers.add(name)
        return lambda entry: _lookup(entry.response_headers, name)


def _lookup(headers: Mapping[str, str] | None, name: str) -> str | None:
    return headers.get(name) if headers else None


def _truncating(getter: Getter, length: int) -> Getter:
    def truncated(entry: AccessLogEntry) -> Value:
        value = getter(entry)
        return value[:length] if isinstance(value, str) else value

    return truncated


def _text(pieces: tuple[Piece, ...], entry: AccessLogEntry) -> str:
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
        else:
            value = piece(entry)
            out.append("-" if value is None or value == "" else str(value))
    return "".join(out)


# --- the formatter -------------------------------------------------------------------------


class AccessLogFormatter:
    """A compiled access log format: Envoy's default, a text format string, or JSON.

    `request_headers` / `response_headers` name the extra headers (lower-case)
    the format reads, so the runtime copies only those into an entry.
    """

    __slots__ = ("_json", "_text", "request_headers", "response_headers")

    def __init__(
        self,
        text: tuple[Piece, ...] | None,
        json_fields: tuple[tuple[str, tuple[Piece, ...]], ...] | None,
        request_headers: frozenset[str],
        response_headers: frozenset[str],
    ) -> None:
        self._text = text
        self._json = json_fields
        self.request_headers = request_headers
        self.response_headers = response_headers

    @classmethod
    def from_config(
        cls,
        text_format: str | None = None,
        json_format: tuple[tuple[str, str], ...] | None = None,
    ) -> AccessLogFormatter:
        """Compile a format; neither given means Envoy's default. Raises ConfigError."""
        if text_format is not None and json_format is not None:
            raise ConfigError("access log: set a text format or a JSON format, not both")
        compiler = _Compiler()
        text: tuple[Piece, ...] | None = None
        json_fields: tuple[tuple[str, tuple[Piece, ...]], ...] | None = None
        if json_format is not None:
            json_fields = tuple((key, compiler.compile(fmt)) for key, fmt in json_format)
        else:
            text = compiler.compile(ENVOY_DEFAULT_FORMAT if text_format is None else text_format)
        return cls(
            text,
            json_fields,
            frozenset(compiler.request_headers),
            frozenset(compiler.response_headers),
        )

    def format(self, entry: AccessLogEntry) -> str:
        """One log line; JSON lines end with a newline, text formats carry their own."""
        if self._text is not None:
            return _text(self._text, entry)
        assert self._json is not None
        record: dict[str, Value] = {}
        for key, pieces in self._json:
            if len(pieces) == 1 and not isinstance(pieces[0], str):
                record[key] = pieces[0](entry)
            else:
                record[key] = _text(pieces, entry)
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
