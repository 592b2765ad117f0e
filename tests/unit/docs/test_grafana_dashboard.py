"""The shipped Grafana dashboard only asks for metrics and labels the sidecars export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from trellis.core.metrics import IstioMetrics, PeerLabels

DASHBOARD = Path(__file__).parents[3] / "docs" / "grafana" / "trellis-mesh.json"
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"[^"]*"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported() -> tuple[set[str], set[str]]:
    """Sample names and label names a sidecar's /stats/prometheus carries."""
    metrics = IstioMetrics()
    peer = PeerLabels(reporter="destination")
    metrics.record_http(peer, 200, "-", 3.0, 100, 200)
    metrics.tcp_opened(peer)
    metrics.tcp_bytes(peer, 10, 20)
    metrics.tcp_closed(peer)
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(metrics.render_prometheus()):
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            found.append(variable["definition"])
    return found


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("requests per second", "success rate", "p99", "tcp bytes"):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


def test_every_expression_uses_exported_metrics_and_labels() -> None:
    names, labels = exported()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 10
    used_metrics: set[str] = set()
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        selectors = _SELECTOR.findall(expr)
        bare = re.findall(r"label_values\((\w+)", expr)
        assert selectors or bare, expr
        for metric, matchers in selectors:
            assert metric in names, f"{metric} is not exported ({expr})"
            used_metrics.add(metric)
            for label, _ in _MATCHER.findall(matchers):
                assert label in labels, f"label {label} is not exported ({expr})"
        for metric in bare:
            assert metric in names, expr
        for group in _GROUPING.findall(expr):
            for label in (part.strip() for part in group.split(",")):
                assert label in labels or label == "le", f"grouping by {label} ({expr})"
    assert {"istio_requests_total", "istio_request_duration_milliseconds_bucket",
            "istio_tcp_sent_bytes_total"} <= used_metrics  # fmt: skip
