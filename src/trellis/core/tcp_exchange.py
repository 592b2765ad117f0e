"""Istio's TCP metadata exchange: who the peer workload is, told before the first byte.

HTTP carries the peer's workload in headers (`peer_metadata`); raw TCP has
nowhere to put it, so Istio's sidecars negotiate it in the TLS handshake. The
client's sidecar offers the ALPN protocol `istio-peer-exchange` on its mTLS
connection to another sidecar; when the server's sidecar selects it, each side
writes one header ahead of the application's bytes and takes the other's off
the stream (istio/proxy `filters/network/metadata_exchange`):

    magic      uint32, network order: 0x3D230467
    size       uint32, network order: length of what follows
    payload    a serialized `google.protobuf.Any` holding a `google.protobuf.Struct`
               with `x-envoy-peer-metadata` (the workload Struct of the HTTP
               exchange) and `x-envoy-peer-metadata-id` (the node id)

What a bad header does (Istio's behaviour, where it is safe):
- a wrong magic means the peer negotiated the protocol without speaking it:
  no metadata, and the bytes are the application's, passed on untouched
  (Istio does the same);
- a payload that is not an Any of a Struct is still framed by its size, so it
  is taken off the stream and the peer stays unknown (Istio leaves it in the
  stream, where the application would read it);
- a declared size above `MAX_PAYLOAD_BYTES` cannot be skipped without holding
  it all: the connection is closed (Istio buffers without a limit).

Sans-IO: `HeaderReader` takes bytes as they arrive, in pieces of any size;
the runtime writes `TcpPeerExchange.header` and closes or relays as told.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from google.protobuf import any_pb2, message, struct_pb2

from trellis.core.config import NodeIdentity
from trellis.core.peer_metadata import (
    HEADER,
    HEADER_ID,
    MAX_CACHED_PEERS,
    UNKNOWN,
    UNKNOWN_PEER,
    WorkloadMetadata,
    node_workload,
    struct_workload,
    workload_struct,
)

ALPN = "istio-peer-exchange"
MAGIC = 0x3D230467
MAX_PAYLOAD_BYTES = 64 * 1024
"""A peer announcing a longer payload gets its connection closed (Istio's are < 2 KiB)."""
STRUCT_TYPE_URL = "type.googleapis.com/google.protobuf.Struct"
_PREFIX = struct.Struct("!II")
_MAGIC_BYTES = MAGIC.to_bytes(4, "big")
_METADATA_KEY = HEADER.decode("ascii")
_METADATA_ID_KEY = HEADER_ID.decode("ascii")


class ReadOutcome(enum.Enum):
    """Where reading the peer's header stands."""

    PENDING = "pending"  # not all of it has arrived
    FOUND = "found"  # read and taken off the stream
    ABSENT = "absent"  # not a header (wrong magic): the bytes are the application's
    TOO_LARGE = "too_large"  # announced more than MAX_PAYLOAD_BYTES: close the connection


@dataclass(frozen=True, slots=True)
class HeaderRead:
    """The result of feeding bytes to a `HeaderReader`.

    `payload`: the serialized Any (FOUND); `rest`: the application bytes that
    followed the header, or everything received when it was ABSENT.
    """

    outcome: ReadOutcome
    payload: bytes = b""
    rest: bytes = b""


PENDING = HeaderRead(ReadOutcome.PENDING)
TOO_LARGE = HeaderRead(ReadOutcome.TOO_LARGE)


class HeaderReader:
    """Reads one peer header off the front of a byte stream, fed in pieces."""

    __slots__ = ("_buffer", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> HeaderRead:
        """Add received bytes; PENDING until the header is complete or known absent.

        After a result other than PENDING the reader is done: feed it nothing more.
        """
        buffer = self._buffer + data if self._buffer else data
        if not _MAGIC_BYTES.startswith(buffer[:4]):  # decided on the first wrong byte
            return self._finish(HeaderRead(ReadOutcome.ABSENT, rest=buffer))
        if len(buffer) < _PREFIX.size:
            self._buffer = buffer
            return PENDING
        _, size = _PREFIX.unpack_from(buffer)
        if size > MAX_PAYLOAD_BYTES:
            return self._finish(TOO_LARGE)
        end = _PREFIX.size + size
        if len(buffer) < end:
            self._buffer = buffer
            return PENDING
        return self._finish(HeaderRead(ReadOutcome.FOUND, buffer[_PREFIX.size : end], buffer[end:]))

    def _finish(self, result: HeaderRead) -> HeaderRead:
        self._buffer = b""
        self.done = True
        return result


def encode_header(workload: WorkloadMetadata, node_id: str) -> bytes:
    """The header announcing `workload` (node `node_id`) to a peer: magic, size, payload."""
    data = struct_pb2.Struct()
    data.fields[_METADATA_KEY].struct_value.CopyFrom(workload_struct(workload))
    if node_id:
        data.fields[_METADATA_ID_KEY].string_value = node_id
    wrapped = any_pb2.Any(
        type_url=STRUCT_TYPE_URL, value=data.SerializeToString(deterministic=True)
    )
    payload = wrapped.SerializeToString(deterministic=True)
    return _PREFIX.pack(MAGIC, len(payload)) + payload


def decode_payload(payload: bytes) -> WorkloadMetadata | None:
    """The workload a header's payload describes; None when it does not describe one."""
    try:
        wrapped = any_pb2.Any.FromString(payload)
        if wrapped.type_url.rpartition("/")[2] != "google.protobuf.Struct":
            return None
        data = struct_pb2.Struct.FromString(wrapped.value)
    except (ValueError, message.DecodeError):
        return None
    metadata = data.fields.get(_METADATA_KEY)
    if metadata is None or metadata.WhichOneof("kind") != "struct_value":
        return None
    return struct_workload(metadata.struct_value)


class TcpPeerExchange:
    """One proxy's side of the TCP exchange: its header, built once, and the peers met."""

    __slots__ = ("_max", "_peers", "header")

    def __init__(self, node: NodeIdentity, max_peers: int = MAX_CACHED_PEERS) -> None:
        self.header = encode_header(node_workload(node), node.id or UNKNOWN)
        self._peers: dict[bytes, WorkloadMetadata] = {}
        self._max = max_peers

    def peer(self, payload: bytes) -> WorkloadMetadata:
        """The workload of a header payload (`UNKNOWN_PEER` when unreadable), decoded
        once per distinct payload."""
        peers = self._peers
        found = peers.get(payload)
        if found is None:
            found = decode_payload(payload) or UNKNOWN_PEER
            if len(peers) >= self._max:
                peers.clear()  # a bound, not an LRU: peers are few, churn means an attacker
            peers[payload] = found
        return found
