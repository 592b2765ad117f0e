"""The dashboard's views of a window of traffic: the service graph, per-edge rows and
per-service golden signals over time. Pure: windows in, JSON-ready dicts out.

The graph has a node per workload and per service; a request from workload A
to service S answered by workload B is drawn as A -> S -> B (as Kiali draws a
versioned app graph with service nodes): the A -> S edge sums what A sent to S
whichever workload answered, the S -> B edge what B answered for S whoever
asked. The rows keep the full caller -> workload detail for tables and
`trellis top`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trellis.controlplane.stats_parse import UNKNOWN, EdgeKey
from trellis.controlplane.stats_window import Sample, Traffic, Window, recent, signals, window


@dataclass(frozen=True, slots=True, order=True)
class Node:
    """A graph node: kind "workload", "service" or "unknown" (a caller nobody could name)."""

    kind: str
    namespace: str
    name: str
    version: str = ""

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
        }
        if self.version:
            body["version"] = self.version
        return body


def _source_node(edge: EdgeKey) -> Node:
    if edge.source == UNKNOWN:
        return Node("unknown", edge.source_namespace, UNKNOWN)
    return Node("workload", edge.source_namespace, edge.source)


def _service_node(edge: EdgeKey) -> Node:
    return Node("service", edge.service_namespace, edge.service)


def _destination_node(edge: EdgeKey) -> Node | None:
    if edge.destination == UNKNOWN:
        return None
    return Node("workload", edge.destination_namespace, edge.destination, edge.version)


def _filtered(win: Window, namespace: str | None) -> dict[EdgeKey, Traffic]:
    if namespace is None:
        return dict(win.edges)
    return {edge: traffic for edge, traffic in win.edges.items() if edge.touches(namespace)}


def _add(
    merged: dict[tuple[Node, Node, str], Traffic], key: tuple[Node, Node, str], traffic: Traffic
) -> None:
    target = merged.get(key)
    if target is None:
        target = merged[key] = Traffic()
    target.merge(traffic)


def graph_json(win: Window, namespace: str | None = None) -> dict[str, Any]:
    """Nodes and edges (with rps, success, p50/p90/p99, mTLS) of the traffic in `win`."""
    merged: dict[tuple[Node, Node, str], Traffic] = {}
    nodes: set[Node] = set()
    for edge, traffic in _filtered(win, namespace).items():
        source, service = _source_node(edge), _service_node(edge)
        nodes.update((source, service))
        _add(merged, (source, service, edge.protocol), traffic)
        destination = _destination_node(edge)
        if destination is not None:
            nodes.add(destination)
            _add(merged, (service, destination, edge.protocol), traffic)
    edges = []
    for (source, target, protocol), traffic in sorted(merged.items(), key=lambda item: item[0]):
        edges.append(
            {
                "id": f"{source.id}>{target.id}",
                "source": source.id,
                "target": target.id,
                "protocol": protocol,
                **signals(traffic, win.seconds).to_json(),
            }
        )
    return {
        "kind": "MeshGraph",
        "seconds": round(win.seconds, 3),
        "end": win.end,
        "nodes": [node.to_json() for node in sorted(nodes)],
        "edges": edges,
    }


def rows_json(win: Window, namespace: str | None = None) -> list[dict[str, Any]]:
    """One row per caller -> receiving workload (through a service, at a version)."""
    rows = []
    for edge, traffic in sorted(_filtered(win, namespace).items()):
        rows.append(
            {
                "source": edge.source,
                "sourceNamespace": edge.source_namespace,
                "destination": edge.destination,
                "destinationNamespace": edge.destination_namespace,
                "service": edge.service,
                "serviceNamespace": edge.service_namespace,
                "version": edge.version,
                "protocol": edge.protocol,
                **signals(traffic, win.seconds).to_json(),
            }
        )
    return rows


def by_service(win: Window, namespace: str | None = None) -> dict[tuple[str, str], Traffic]:
    """Traffic per (service namespace, service name), summed over callers and workloads."""
    services: dict[tuple[str, str], Traffic] = {}
    for edge, traffic in win.edges.items():
        if namespace is not None and edge.service_namespace != namespace:
            continue
        key = (edge.service_namespace, edge.service)
        total = services.get(key)
        if total is None:
            total = services[key] = Traffic()
        total.merge(traffic)
    return services


def _point(t: float, traffic: Traffic | None, seconds: float) -> dict[str, Any]:
    body = signals(traffic or Traffic(), seconds).to_json()
    return {"t": t, **{k: body[k] for k in ("rps", "success", "p50", "p90", "p99", "errors")}}


def service_series(
    samples: Sequence[Sample], span: float, step: float, namespace: str | None = None
) -> list[dict[str, Any]]:
    """Per service, its golden signals over the last `span` seconds, one point per `step`
    (at least; points are windows between samples about `step` apart), and overall."""
    chosen = recent(samples, span)
    if len(chosen) < 2:
        return []
    # Cut the samples into runs about `step` long; neighbouring runs share their boundary.
    runs: list[list[Sample]] = [[chosen[0]]]
    for sample in chosen[1:]:
        runs[-1].append(sample)
        if sample.taken - runs[-1][0].taken >= step - 1e-6 and sample is not chosen[-1]:
            runs.append([sample])
    windows = [window(run) for run in runs]
    overall = window(chosen)
    names = sorted(by_service(overall, namespace))
    per_window = [by_service(win, namespace) for win in windows]
    totals = by_service(overall, namespace)
    result = []
    for key in names:
        namespace_name, name = key
        result.append(
            {
                "name": name,
                "namespace": namespace_name,
                "current": signals(totals[key], overall.seconds).to_json(),
                "series": [
                    _point(win.end, services.get(key), win.seconds)
                    for win, services in zip(windows, per_window, strict=True)
                ],
            }
        )
    return result
