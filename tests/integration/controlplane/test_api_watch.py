"""`GET /api/v1/watch`: newline-delimited JSON events from a resourceVersion on (in process)."""

from __future__ import annotations

import json
from typing import Any

from .api_helpers import GROUP, SHOP_YAML, YAML, in_process


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_watch_replays_changes_since_a_version() -> None:
    client = in_process()
    client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    client.delete(f"{GROUP}/namespaces/shop/workloadentries/payment-v2")
    response = client.get("/api/v1/watch", params={"since": "3", "timeoutSeconds": "0.2"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    events = [
        (event["type"], event["object"]["kind"], event["object"]["metadata"]["name"],
         event["object"]["metadata"]["resourceVersion"])
        for event in _events(response.text)
    ]  # fmt: skip
    assert events == [
        ("ADDED", "DestinationRule", "payment", "4"),
        ("ADDED", "VirtualService", "payment", "5"),
        ("DELETED", "WorkloadEntry", "payment-v2", "6"),
    ]


def test_watch_filters_by_kind_and_namespace() -> None:
    client = in_process()
    client.post("/api/v1/apply", content=SHOP_YAML, headers=YAML)
    only = client.get(
        "/api/v1/watch", params={"since": "0", "kind": "WorkloadEntry", "timeoutSeconds": "0.2"}
    )
    assert [e["object"]["metadata"]["name"] for e in _events(only.text)] == [
        "payment-v1",
        "payment-v2",
    ]
    other = client.get(
        "/api/v1/watch", params={"since": "0", "namespace": "default", "timeoutSeconds": "0.2"}
    )
    assert _events(other.text) == []


def test_watch_from_the_future_expires_and_bad_versions_are_rejected() -> None:
    client = in_process()
    future = client.get("/api/v1/watch", params={"since": "99", "timeoutSeconds": "5"})
    [event] = _events(future.text)
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and "re-list" in event["object"]["message"]
    bad = client.get("/api/v1/watch", params={"since": "abc"})
    assert bad.status_code == 400
    assert "resourceVersion" in bad.json()["message"]
    unknown = client.get("/api/v1/watch", params={"kind": "Gateway"})
    assert unknown.status_code == 400
