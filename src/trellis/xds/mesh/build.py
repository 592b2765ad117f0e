"""Small builders for the Envoy messages every translator needs.

Durations are given in seconds (float) and turned into `google.protobuf.Duration`
exactly (nanoseconds rounded), so golden output does not depend on float noise.
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, config_source_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from trellis.xds.protos import base_pb2

NANOS = 1_000_000_000
MAX_UINT32 = 2**32 - 1


def duration(seconds: float) -> duration_pb2.Duration:
    """A `Duration` of `seconds` (0 is a valid value: "disabled" for timeouts)."""
    total = round(seconds * NANOS)
    whole, nanos = divmod(total, NANOS)
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


def u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def boolean(value: bool) -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=value)


def pack(msg: Message) -> any_pb2.Any:
    """`msg` wrapped in an `Any` with the usual `type.googleapis.com/` prefix."""
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def ads_source() -> config_source_pb2.ConfigSource:
    """`{ads: {}, resource_api_version: V3}`: take the resource from the ADS stream."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def header_option(name: str, value: str, *, append: bool) -> base_pb2.HeaderValueOption:
    """A header to add: appended to existing values, or overwriting them (Istio's set/add)."""
    action = (
        base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if append
        else base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=action
    )
