"""Istio's TCP metadata exchange header: its wire format and reading it in pieces."""

from __future__ import annotations

import struct

from google.protobuf import any_pb2, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from trellis.core.config import NodeIdentity
from trellis.core.peer_metadata import UNKNOWN_PEER, WorkloadMetadata, node_workload
from trellis.core.tcp_exchange import (
    MAX_PAYLOAD_BYTES,
    HeaderReader,
    ReadOutcome,
    TcpPeerExchange,
    decode_payload,
    encode_header,
)

NODE = NodeIdentity(
    id="sidecar~10.0.0.2~db-0.shop~shop.svc.cluster.local",
    workload_name="db",
    namespace="shop",
    service_account="db",
    app="db",
    version="v3",
    canonical_service="db-svc",
    canonical_revision="v3",
    cluster_id="Kubernetes",
    instance="db-0",
)
APP = b"SELECT 1;\r\n" * 3


def _header() -> bytes:
    return TcpPeerExchange(NODE).header


def _frame(payload: bytes, magic: int = 0x3D230467) -> bytes:
    return struct.pack(">II", magic, len(payload)) + payload


def test_header_is_magic_size_and_an_any_of_a_struct() -> None:
    header = _header()
    assert header[:4] == b"\x3d\x23\x04\x67"
    (size,) = struct.unpack(">I", header[4:8])
    assert size == len(header) - 8
    wrapped = any_pb2.Any.FromString(header[8:])
    assert wrapped.type_url == "type.googleapis.com/google.protobuf.Struct"
    data = struct_pb2.Struct.FromString(wrapped.value)
    assert data.fields["x-envoy-peer-metadata-id"].string_value == NODE.id
    metadata = data.fields["x-envoy-peer-metadata"].struct_value.fields
    assert metadata["WORKLOAD_NAME"].string_value == "db"
    assert metadata["NAMESPACE"].string_value == "shop"
    assert metadata["NAME"].string_value == "db-0"
    assert metadata["CLUSTER_ID"].string_value == "Kubernetes"
    labels = metadata["LABELS"].struct_value.fields
    assert labels["app"].string_value == "db"
    assert labels["version"].string_value == "v3"
    assert labels["service.istio.io/canonical-name"].string_value == "db-svc"


def test_round_trip_in_one_piece() -> None:
    read = HeaderReader().feed(_header() + APP)
    assert read.outcome is ReadOutcome.FOUND
    assert read.rest == APP
    assert decode_payload(read.payload) == node_workload(NODE)


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_round_trip_split_anywhere(cuts: list[int]) -> None:
    stream = _header() + APP
    points = [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]
    reader = HeaderReader()
    start = 0
    found = None
    app = b""
    for point in points:
        piece = stream[start:point]
        start = point
        if found is not None:
            app += piece
            continue
        read = reader.feed(piece)
        if read.outcome is ReadOutcome.PENDING:
            assert read.rest == b""
            continue
        assert read.outcome is ReadOutcome.FOUND
        found = read
        app += read.rest
    assert found is not None
    assert app == APP  # the header never reaches the application, its bytes all do
    assert TcpPeerExchange(NODE).peer(found.payload) == node_workload(NODE)


def test_byte_by_byte() -> None:
    reader = HeaderReader()
    header = _header()
    for byte in header[:-1]:
        assert reader.feed(bytes([byte])).outcome is ReadOutcome.PENDING
    read = reader.feed(header[-1:])
    assert read.outcome is ReadOutcome.FOUND and read.rest == b""
    assert reader.done


def test_bad_magic_passes_every_byte_through() -> None:
    data = _frame(b"xyz", magic=0x3D230468) + APP
    read = HeaderReader().feed(data)
    assert read.outcome is ReadOutcome.ABSENT
    assert read.rest == data


def test_bad_magic_is_seen_on_the_first_wrong_byte() -> None:
    reader = HeaderReader()
    assert reader.feed(b"\x3d\x23").outcome is ReadOutcome.PENDING
    read = reader.feed(b"!")  # a short application message must not wait for 8 bytes
    assert read.outcome is ReadOutcome.ABSENT
    assert read.rest == b"\x3d\x23!"


def test_oversized_payload_is_refused_before_it_arrives() -> None:
    prefix = struct.pack(">II", 0x3D230467, MAX_PAYLOAD_BYTES + 1)
    read = HeaderReader().feed(prefix)
    assert read.outcome is ReadOutcome.TOO_LARGE
    assert read.rest == b""


def test_largest_payload_is_accepted() -> None:
    payload = b"\x00" * MAX_PAYLOAD_BYTES
    read = HeaderReader().feed(_frame(payload) + b"tail")
    assert read.outcome is ReadOutcome.FOUND
    assert read.rest == b"tail"


def test_undecodable_payload_is_stripped_and_the_peer_unknown() -> None:
    exchange = TcpPeerExchange(NODE)
    for payload in (b"\xff\xff\xff", b"", any_pb2.Any(type_url="x/y.Z").SerializeToString()):
        read = HeaderReader().feed(_frame(payload) + APP)
        assert read.outcome is ReadOutcome.FOUND
        assert read.rest == APP
        assert exchange.peer(read.payload) is UNKNOWN_PEER


def test_struct_without_metadata_names_nobody() -> None:
    data = struct_pb2.Struct()
    data.fields["x-envoy-peer-metadata-id"].string_value = "sidecar~1"
    wrapped = any_pb2.Any(
        type_url="type.googleapis.com/google.protobuf.Struct", value=data.SerializeToString()
    )
    assert decode_payload(wrapped.SerializeToString()) is None


def test_unknown_fields_are_left_out() -> None:
    header = encode_header(WorkloadMetadata(workload_name="w", namespace="ns"), "")
    wrapped = any_pb2.Any.FromString(header[8:])
    data = struct_pb2.Struct.FromString(wrapped.value)
    assert "x-envoy-peer-metadata-id" not in data.fields
    decoded = decode_payload(header[8:])
    assert decoded == WorkloadMetadata(workload_name="w", namespace="ns")


def test_peers_are_decoded_once_and_bounded() -> None:
    exchange = TcpPeerExchange(NODE, max_peers=2)
    payload = _header()[8:]
    first = exchange.peer(payload)
    assert exchange.peer(payload) is first
    for i in range(5):
        other = encode_header(WorkloadMetadata(workload_name=f"w{i}"), "")[8:]
        assert exchange.peer(other).workload_name == f"w{i}"
    assert len(exchange._peers) <= 2
