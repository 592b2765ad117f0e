"""Who is connected over ADS and how far each proxy's config has got.

`ProxyNode` is the identity a proxy sends in the first request of its stream
(Envoy's `Node`, with Istio's metadata keys as in the proxy's bootstrap).
`ProxyStatus` is a plain, frozen view of one stream for `trellis proxy-status`:
per resource type the last version sent, the last one acknowledged and the last
rejection (NACK) with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format, struct_pb2

from trellis.core.config import NodeIdentity
from trellis.errors import ConfigError

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProxyNode:
    """A proxy's identity, from `DiscoveryRequest.node` (validated)."""

    id: str
    cluster: str = ""
    workload_name: str = ""
    namespace: str = ""
    service_account: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    metadata: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    user_agent: str = ""
    client_features: tuple[str, ...] = ()

    def identity(self) -> NodeIdentity:
        """The same identity the proxy derives from its bootstrap (`xds.compile.node_identity`)."""
        return NodeIdentity(
            id=self.id,
            cluster=self.cluster,
            workload_name=self.workload_name or UNKNOWN,
            namespace=self.namespace or UNKNOWN,
            service_account=self.service_account or UNKNOWN,
            app=self.labels.get("app") or UNKNOWN,
            version=self.labels.get("version") or UNKNOWN,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "cluster": self.cluster,
            "workload_name": self.workload_name,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "labels": dict(self.labels),
            "metadata": dict(self.metadata),
            "user_agent": self.user_agent,
            "client_features": list(self.client_features),
        }


def node_from_proto(node: base_pb2.Node) -> ProxyNode:
    """Validate a node; raises ConfigError naming the offending field."""
    if not node.id:
        raise ConfigError("the first request of a stream must carry node.id", path="node.id")
    fields = node.metadata.fields
    labels: dict[str, str] = {}
    if "LABELS" in fields:
        value = fields["LABELS"]
        if value.WhichOneof("kind") != "struct_value":
            raise ConfigError("must be a mapping", path='node.metadata["LABELS"]')
        for key, item in value.struct_value.fields.items():
            labels[key] = _string(item, f'node.metadata["LABELS"]["{key}"]')
    user_agent = node.user_agent_name
    if node.WhichOneof("user_agent_version_type") == "user_agent_version":
        user_agent = f"{user_agent}/{node.user_agent_version}"
    metadata = json_format.MessageToDict(node.metadata)
    return ProxyNode(
        id=node.id,
        cluster=node.cluster,
        workload_name=_text(fields, "WORKLOAD_NAME"),
        namespace=_text(fields, "NAMESPACE"),
        service_account=_text(fields, "SERVICE_ACCOUNT"),
        labels=MappingProxyType(labels),
        metadata=MappingProxyType(metadata),
        user_agent=user_agent,
        client_features=tuple(node.client_features),
    )


def _text(fields: Mapping[str, struct_pb2.Value], key: str) -> str:
    return _string(fields[key], f'node.metadata["{key}"]') if key in fields else ""


def _string(value: struct_pb2.Value, path: str) -> str:
    if value.WhichOneof("kind") != "string_value":
        raise ConfigError("must be a string", path=path)
    return value.string_value


class SyncState(StrEnum):
    """istioctl's words: the latest config is acknowledged, is not, or none was sent."""

    SYNCED = "SYNCED"
    STALE = "STALE"
    NOT_SENT = "NOT SENT"


@dataclass(frozen=True, slots=True)
class Nack:
    """A response the proxy rejected."""

    type_url: str
    version: str
    nonce: str
    message: str
    at: float  # wall-clock seconds

    def to_dict(self) -> dict[str, object]:
        return {
            "type_url": self.type_url,
            "version": self.version,
            "nonce": self.nonce,
            "message": self.message,
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """One resource type on one stream."""

    type_url: str
    short_name: str  # LDS, RDS, CDS, EDS, SDS or the type name
    state: SyncState
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    last_nack: Nack | None = None
    wildcard: bool = False
    resource_names: tuple[str, ...] = ()
    responses: int = 0
    acks: int = 0
    nacks: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "type_url": self.type_url,
            "type": self.short_name,
            "state": self.state.value,
            "sent_version": self.sent_version,
            "sent_nonce": self.sent_nonce,
            "acked_version": self.acked_version,
            "last_nack": self.last_nack.to_dict() if self.last_nack else None,
            "wildcard": self.wildcard,
            "resource_names": list(self.resource_names),
            "responses": self.responses,
            "acks": self.acks,
            "nacks": self.nacks,
        }


@dataclass(frozen=True, slots=True)
class ProxyStatus:
    """One connected ADS stream."""

    connection_id: str
    node: ProxyNode
    peer: str
    connected_since: float  # wall-clock seconds
    snapshot_version: str  # "" when the control plane has no snapshot for the node
    types: tuple[TypeStatus, ...]

    def type(self, short_name: str) -> TypeStatus | None:
        return next((t for t in self.types if t.short_name == short_name), None)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready data (for the REST API)."""
        return {
            "connection_id": self.connection_id,
            "node": self.node.to_dict(),
            "peer": self.peer,
            "connected_since": self.connected_since,
            "snapshot_version": self.snapshot_version,
            "types": [t.to_dict() for t in self.types],
        }
