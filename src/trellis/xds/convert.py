"""Conversions shared by the bootstrap compiler: durations, wrappers, headers, matchers."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf.message import Message

from trellis.core.addresses import PIPE_PATH_MAX_BYTES, EndpointAddress, PipeAddress, SocketAddress
from trellis.core.config import (
    NO_HEADER_MUTATION,
    AppendAction,
    HeaderMutation,
    HeaderToAdd,
    StringMatcher,
    StringMatchKind,
)
from trellis.core.headers import has_formatter
from trellis.xds.re2 import Re2SyntaxError, compile_re2
from trellis.xds.where import Where

_APPEND_ACTIONS = {
    base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD: AppendAction.APPEND_IF_EXISTS_OR_ADD,
    base_pb2.HeaderValueOption.ADD_IF_ABSENT: AppendAction.ADD_IF_ABSENT,
    base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD: AppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS: AppendAction.OVERWRITE_IF_EXISTS,
}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
MAX_PORT = 65535


def duration(msg: Message, name: str, where: Where, default: float | None) -> float | None:
    """Seconds in a `Duration` field; `default` if unset, `None` if zero (disabled)."""
    if not msg.HasField(name):
        return default
    value = getattr(msg, name)
    seconds = float(value.seconds) + value.nanos / 1e9
    if seconds < 0:
        raise where.at(name).error("duration must not be negative")
    return seconds or None


def positive_duration(msg: Message, name: str, where: Where, default: float) -> float:
    """Seconds in a `Duration` field that must be greater than zero when set."""
    seconds = duration(msg, name, where, default)
    if seconds is None:
        raise where.at(name).error("duration must be greater than zero")
    return seconds


def wrapped(msg: Message, name: str, default: int) -> int:
    """The value of a `UInt32Value` field, or `default` when unset."""
    return int(getattr(msg, name).value) if msg.HasField(name) else default


def wrapped_bool(msg: Message, name: str, default: bool) -> bool:
    """The value of a `BoolValue` field, or `default` when unset."""
    return bool(getattr(msg, name).value) if msg.HasField(name) else default


def socket_address(address: address_pb2.Address, where: Where) -> SocketAddress:
    """An IP literal and a port from a `core.v3.Address` (listeners, admin: no pipes)."""
    if address.HasField("pipe"):
        raise where.at("pipe").error(
            "a Unix socket (pipe) is supported only as a cluster endpoint's address; "
            "use socket_address"
        )
    if not address.HasField("socket_address"):
        raise where.error("socket_address is required")
    sock = address.socket_address
    here = where.at("socket_address")
    host = sock.address
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise here.at("address").error(f"{host!r} is not an IP address") from None
    if not 0 < sock.port_value <= MAX_PORT:
        raise here.at("port_value").error(f"port must be 1-{MAX_PORT}, got {sock.port_value}")
    return SocketAddress(host, sock.port_value)


def endpoint_address(address: address_pb2.Address, where: Where) -> EndpointAddress:
    """A cluster endpoint's `core.v3.Address`: a socket address or a `pipe` (Unix socket)."""
    if not address.HasField("pipe"):
        return socket_address(address, where)
    here = where.at("pipe").at("path")
    path = address.pipe.path
    if not path:
        raise here.error("path is required")
    if path.startswith("@"):
        raise here.error(f"{path!r}: abstract Unix sockets are not supported; give a file path")
    if "\0" in path:
        raise here.error("the path must not contain NUL characters")
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > PIPE_PATH_MAX_BYTES:
        raise here.error(
            f"the path is {size} bytes long; a Unix socket path holds at most {PIPE_PATH_MAX_BYTES}"
        )
    return PipeAddress(path)


def compile_regex(pattern: str, where: Where) -> re.Pattern[str]:
    """Compile an RE2 pattern, naming the field when it is invalid or not RE2."""
    if not pattern:
        raise where.error("regex must not be empty")
    try:
        return compile_re2(pattern)
    except Re2SyntaxError as exc:
        raise where.error(str(exc)) from None


def regex_matcher(matcher: regex_pb2.RegexMatcher, where: Where) -> re.Pattern[str]:
    """Compile an `envoy.type.matcher.v3.RegexMatcher`."""
    return compile_regex(matcher.regex, where.at("regex"))


def string_matcher(matcher: string_pb2.StringMatcher, where: Where) -> StringMatcher:
    """Convert an `envoy.type.matcher.v3.StringMatcher`; ignore_case lower-cases the value."""
    kind_name = matcher.WhichOneof("match_pattern")
    ignore_case = bool(matcher.ignore_case)
    if kind_name is None:
        raise where.error("one of exact, prefix, suffix, contains, safe_regex is required")
    if kind_name == "safe_regex":
        if ignore_case:
            raise where.at("ignore_case").error("ignore_case has no effect with safe_regex")
        here = where.at("safe_regex")
        pattern = regex_matcher(matcher.safe_regex, here)
        return StringMatcher(StringMatchKind.REGEX, matcher.safe_regex.regex, regex=pattern)
    value = str(getattr(matcher, kind_name))
    if kind_name != "exact" and not value:
        raise where.at(kind_name).error("must not be empty")
    return StringMatcher(
        StringMatchKind(kind_name), value.lower() if ignore_case else value, ignore_case
    )


def header_name(name: str, where: Where) -> str:
    """A lower-cased HTTP header name (pseudo-headers keep their leading ':')."""
    bare = name[1:] if name.startswith(":") else name
    if not _HEADER_NAME.match(bare):
        raise where.error(f"invalid header name {name!r}")
    return name.lower()


def header_mutation(
    adds: Sequence[base_pb2.HeaderValueOption],
    removes: Sequence[str],
    where: Where,
    prefix: str,
) -> HeaderMutation:
    """Headers to add and remove from `<prefix>_headers_to_add/remove`."""
    add_where = where.at(f"{prefix}_headers_to_add")
    remove_where = where.at(f"{prefix}_headers_to_remove")
    added = tuple(_header_to_add(opt, add_where.item(i)) for i, opt in enumerate(adds))
    removed: set[str] = set()
    for i, name in enumerate(removes):
        lowered = header_name(name, remove_where.item(i))
        if lowered.startswith(":") or lowered == "host":
            raise remove_where.item(i).error(f"{name!r}: pseudo-headers and host cannot be removed")
        removed.add(lowered)
    if not added and not removed:
        return NO_HEADER_MUTATION
    return HeaderMutation(added, frozenset(removed))


def _header_to_add(option: base_pb2.HeaderValueOption, where: Where) -> HeaderToAdd:
    if not option.HasField("header"):
        raise where.at("header").error("header is required")
    name = header_name(option.header.key, where.at("header").at("key"))
    if name.startswith(":") or name == "host":
        raise (
            where.at("header")
            .at("key")
            .error(f"{option.header.key!r}: pseudo-headers and host cannot be modified")
        )
    action = _APPEND_ACTIONS[option.append_action]
    if option.HasField("append"):
        if option.append_action != base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD:
            raise where.error("append and append_action cannot both be set")
        action = (
            AppendAction.APPEND_IF_EXISTS_OR_ADD
            if option.append.value
            else AppendAction.OVERWRITE_IF_EXISTS_OR_ADD
        )
    if has_formatter(option.header.value):
        raise (
            where.at("header")
            .at("value")
            .error(
                f"{option.header.value!r}: %-formatters in header values are not supported "
                "(write %% for a literal %)"
            )
        )
    return HeaderToAdd(name, option.header.value, action, option.keep_empty_value)


def check_ads_source(source: config_source_pb2.ConfigSource, where: Where) -> None:
    """Dynamic resources come over the bootstrap's ADS stream, and nowhere else."""
    if source.WhichOneof("config_source_specifier") != "ads":
        raise where.error("only `ads: {}` config sources are supported")
