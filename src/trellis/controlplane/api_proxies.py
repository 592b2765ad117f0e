"""Proxy status as JSON for `GET /api/v1/proxies`, and finding a proxy by a short name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trellis.controlplane.ads_status import Nack, ProxyStatus, TypeStatus
from trellis.controlplane.api_status import StatusError


def _nack_json(nack: Nack | None) -> dict[str, Any] | None:
    if nack is None:
        return None
    return {"version": nack.version, "nonce": nack.nonce, "message": nack.message, "at": nack.at}


def _type_json(status: TypeStatus) -> dict[str, Any]:
    return {
        "typeUrl": status.type_url,
        "state": status.state.value,
        "sentVersion": status.sent_version,
        "ackedVersion": status.acked_version,
        "lastNack": _nack_json(status.last_nack),
        "wildcard": status.wildcard,
        "resourceNames": list(status.resource_names),
        "responses": status.responses,
        "acks": status.acks,
        "nacks": status.nacks,
    }


def proxy_json(status: ProxyStatus) -> dict[str, Any]:
    node = status.node
    return {
        "id": node.id,
        "connectionId": status.connection_id,
        "cluster": node.cluster,
        "workload": node.workload_name,
        "namespace": node.namespace,
        "serviceAccount": node.service_account,
        "labels": dict(node.labels),
        "userAgent": node.user_agent,
        "peer": status.peer,
        # Where its admin endpoints are (`trellis proxy --admin-port` announces it).
        "adminAddress": node.metadata.get("TRELLIS_ADMIN_ADDRESS") or None,
        "connectedSince": status.connected_since,
        "snapshotVersion": status.snapshot_version,
        "types": {item.short_name: _type_json(item) for item in status.types},
    }


def proxies_json(statuses: Sequence[ProxyStatus]) -> list[dict[str, Any]]:
    """Every stream, ordered by node id then connection."""
    ordered = sorted(statuses, key=lambda item: (item.node.id, item.connection_id))
    return [proxy_json(status) for status in ordered]


def resolve_proxy(name: str, statuses: Sequence[ProxyStatus]) -> str:
    """The node id `name` stands for: an exact node id, or a unique `workload.namespace` or
    workload name of a connected proxy. Unknown names are returned unchanged.

    Raises StatusError 400 when a short name matches several proxies.
    """
    ids = {status.node.id for status in statuses}
    if name in ids or not statuses:
        return name
    matches = sorted(
        {
            status.node.id
            for status in statuses
            if name
            in (status.node.workload_name, f"{status.node.workload_name}.{status.node.namespace}")
        }
    )
    if len(matches) > 1:
        raise StatusError(400, f"{name!r} matches several proxies: {', '.join(matches)}")
    return matches[0] if matches else name
