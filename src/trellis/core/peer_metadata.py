"""Istio's HTTP metadata exchange: who the peer workload is, told in two headers.

The client's sidecar adds `x-envoy-peer-metadata-id` (its node id) and
`x-envoy-peer-metadata` (base64 of a serialized `google.protobuf.Struct`
describing its workload) to requests for mesh services; the server's sidecar
takes them off the request, and when it got them answers with its own on the
response, which the client's sidecar takes off in turn. Each side then labels
its metrics with the other's workload, app, version and canonical service.

The Struct is Istio's workload metadata (proxy `convertWorkloadMetadataToStruct`):
`NAME` (the instance), `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID`, `OWNER` and
`LABELS` with `app`, `version`, `service.istio.io/canonical-name` and
`service.istio.io/canonical-revision`. Decoding also accepts the older, fuller
node metadata (extra keys are ignored), so either kind of Istio sidecar can
be the peer.

Sans-IO: our own headers are encoded once; a peer's value is decoded once and
then found in a bounded cache keyed by the header value itself (so a peer
cannot make one id stand for another workload).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf import message, struct_pb2

from trellis.core.config import NodeIdentity

HEADER_ID = b"x-envoy-peer-metadata-id"
HEADER = b"x-envoy-peer-metadata"
CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"
OWNER_PREFIX = "kubernetes://apis/apps/v1/namespaces/"
UNKNOWN = "unknown"
MAX_VALUE_BYTES = 8192
"""A longer metadata header is ignored: no Istio sidecar sends one that big."""
MAX_CACHED_PEERS = 1024

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class WorkloadMetadata:
    """A workload as the metadata exchange describes it; "unknown" where not told."""

    workload_name: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = "latest"
    cluster_id: str = UNKNOWN
    instance: str = ""
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self.key()))

    def __hash__(self) -> int:  # computed once: metric label caches key on it per request
        return self._hash

    def key(self) -> tuple[str, ...]:
        return (
            self.workload_name, self.namespace, self.app, self.version,
            self.canonical_service, self.canonical_revision, self.cluster_id, self.instance,
        )  # fmt: skip


UNKNOWN_PEER = WorkloadMetadata()
"""A peer that sent the exchange headers without a metadata value we could read."""


def node_workload(node: NodeIdentity) -> WorkloadMetadata:
    """This proxy's own workload, from its node metadata."""
    return WorkloadMetadata(
        workload_name=node.workload_name,
        namespace=node.namespace,
        app=node.app,
        version=node.version,
        canonical_service=node.canonical_service,
        canonical_revision=node.canonical_revision,
        cluster_id=node.cluster_id,
        instance=node.instance,
    )


def workload_struct(workload: WorkloadMetadata) -> struct_pb2.Struct:
    """`workload` as Istio's metadata Struct (unknown fields left out)."""
    struct = struct_pb2.Struct()
    fields = struct.fields
    for key, value in (
        ("NAME", workload.instance),
        ("NAMESPACE", workload.namespace),
        ("WORKLOAD_NAME", workload.workload_name),
        ("CLUSTER_ID", workload.cluster_id),
    ):
        if value and value != UNKNOWN:
            fields[key].string_value = value
    labels = fields["LABELS"].struct_value.fields
    for key, value in (
        (CANONICAL_NAME_LABEL, workload.canonical_service),
        (CANONICAL_REVISION_LABEL, workload.canonical_revision),
        ("app", workload.app),
        ("version", workload.version),
    ):
        if value and value != UNKNOWN:
            labels[key].string_value = value
    if UNKNOWN not in (workload.namespace, workload.workload_name):
        owner = f"{OWNER_PREFIX}{workload.namespace}/deployments/{workload.workload_name}"
        fields["OWNER"].string_value = owner
    return struct


def encode(workload: WorkloadMetadata) -> bytes:
    """The `x-envoy-peer-metadata` value for `workload` (unknown fields left out)."""
    return base64.b64encode(workload_struct(workload).SerializeToString(deterministic=True))


def decode(value: bytes) -> WorkloadMetadata | None:
    """The workload an `x-envoy-peer-metadata` value describes; None if it is not one."""
    if len(value) > MAX_VALUE_BYTES:
        return None
    try:
        raw = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
        struct = struct_pb2.Struct.FromString(raw)
    except (binascii.Error, ValueError, message.DecodeError):
        return None
    return struct_workload(struct)


def struct_workload(struct: struct_pb2.Struct) -> WorkloadMetadata:
    """The workload Istio's metadata Struct describes; "unknown" where it does not say."""
    fields = struct.fields
    labels = _labels(fields.get("LABELS"))
    app = labels.get("app") or UNKNOWN
    version = labels.get("version") or UNKNOWN
    return WorkloadMetadata(
        workload_name=_string(fields.get("WORKLOAD_NAME")) or UNKNOWN,
        namespace=_string(fields.get("NAMESPACE")) or UNKNOWN,
        app=app,
        version=version,
        canonical_service=labels.get(CANONICAL_NAME_LABEL) or UNKNOWN,
        canonical_revision=labels.get(CANONICAL_REVISION_LABEL) or "latest",
        cluster_id=_string(fields.get("CLUSTER_ID")) or UNKNOWN,
        instance=_string(fields.get("NAME")),
    )


def _string(value: struct_pb2.Value | None) -> str:
    if value is None or value.WhichOneof("kind") != "string_value":
        return ""
    return value.string_value


def _labels(value: struct_pb2.Value | None) -> dict[str, str]:
    if value is None or value.WhichOneof("kind") != "struct_value":
        return {}
    return {key: _string(item) for key, item in value.struct_value.fields.items()}


class PeerExchange:
    """One proxy's side of the exchange: its own two headers and the peers it has met."""

    __slots__ = ("_max", "_peers", "headers", "own")

    def __init__(self, node: NodeIdentity, max_peers: int = MAX_CACHED_PEERS) -> None:
        self.own = node_workload(node)
        self.headers: tuple[Header, Header] = (
            (HEADER_ID, (node.id or UNKNOWN).encode("latin-1", "replace")),
            (HEADER, encode(self.own)),
        )
        self._peers: dict[bytes, WorkloadMetadata | None] = {}
        self._max = max_peers

    def peer(self, value: bytes) -> WorkloadMetadata | None:
        """The workload of a metadata header value, decoded once per distinct value."""
        peers = self._peers
        if value in peers:
            return peers[value]
        found = decode(value)
        if len(peers) >= self._max:
            peers.clear()  # a bound, not an LRU: peers are few, churn means an attacker
        peers[value] = found
        return found

    def take(self, headers: list[Header]) -> WorkloadMetadata | None:
        """Remove the exchange headers from `headers`; the peer they describe, None if
        they were absent, `UNKNOWN_PEER` if present but not understood."""
        value: bytes | None = None
        found = False
        for name, item in headers:
            if name == HEADER:
                value = item
                found = True
            elif name == HEADER_ID:
                found = True
        if not found:
            return None
        headers[:] = [h for h in headers if h[0] != HEADER and h[0] != HEADER_ID]
        peer = None if value is None else self.peer(value)
        return UNKNOWN_PEER if peer is None else peer


def is_mesh_cluster(cluster_name: str) -> bool:
    """Whether requests to `cluster_name` carry our metadata: the mesh's
    `outbound|PORT|SUBSET|HOST` service clusters, not arbitrary upstreams."""
    return cluster_name.startswith("outbound|")


def canonical_service(labels: Mapping[str, str], workload: str) -> str:
    """Istio's canonical service of a workload: its canonical-name label, else
    `app.kubernetes.io/name`, else `app`, else the workload's name."""
    return (
        labels.get(CANONICAL_NAME_LABEL)
        or labels.get("app.kubernetes.io/name")
        or labels.get("app")
        or workload
    )
