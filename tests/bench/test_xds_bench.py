"""The xDS benchmark's pure parts: percentiles and goal, generated config, the simulated proxy."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from trellis.api.loader import parse_resource
from trellis.api.networking import VirtualService, WorkloadEntry
from trellis.xds.mesh import MeshConfig, ProxyIdentity, Translator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))


def _translate(documents: list[dict[str, Any]], workload: str) -> dict[str, dict[str, Message]]:
    """The xDS resources the control plane's translator builds for one workload's proxy."""
    resources = [parse_resource(d, source="test", index=i) for i, d in enumerate(documents, 1)]
    entry = next(
        r for r in resources if isinstance(r, WorkloadEntry) and r.metadata.name == workload
    )
    proxy = ProxyIdentity.from_workload_entry(f"node-{workload}", entry)
    return Translator(MeshConfig.of(resources)).translate(proxy)


def _applied(documents: list[dict[str, Any]], change: Any) -> list[dict[str, Any]]:
    """`documents` after applying `change` (create or replace by kind, namespace and name)."""

    def key(doc: dict[str, Any]) -> tuple[str, str, str]:
        return (doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])

    merged = {key(d): d for d in documents}
    merged.update((key(d), d) for d in change.documents)
    return list(merged.values())


def _response(type_url: str, messages: list[Message], version: str, nonce: str) -> Any:
    return discovery_pb2.DiscoveryResponse(
        type_url=type_url,
        version_info=version,
        nonce=nonce,
        resources=[
            any_pb2.Any(type_url=type_url, value=m.SerializeToString(deterministic=True))
            for m in messages
        ],
    )


# --- statistics and the goal --------------------------------------------------------------


def test_nearest_rank_percentiles() -> None:
    from _xds_report import distribution, percentile  # noqa: PLC0415

    values = [float(v) for v in range(1, 101)]  # 1..100, shuffled order must not matter
    assert percentile(list(reversed(values)), 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == 4.0  # rank ceil(3.6) = 4
    dist = distribution(values)
    assert (dist.count, dist.p50_ms, dist.p90_ms, dist.p99_ms, dist.max_ms) == (
        100,
        50.0,
        90.0,
        99.0,
        100.0,
    )
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="not in"):
        percentile(values, 0)


def test_clients_that_never_finished_count_as_infinite() -> None:
    from _xds_report import distribution, latencies_ms  # noqa: PLC0415

    times: list[float | None] = [10.0 + i / 1000 for i in range(98)] + [None, None]
    latencies = latencies_ms(10.0, times)
    assert latencies[1] == pytest.approx(1.0)
    dist = distribution(latencies)
    assert dist.p90_ms == pytest.approx(89.0)
    assert math.isinf(dist.p99_ms)  # 2 of 100 missing: the p99 is not met whatever the rest


def _run(proxies: int, phase: str, round_no: int, p99: float, done: int | None = None) -> Any:
    from _xds_report import Distribution, PhaseRun  # noqa: PLC0415

    return PhaseRun(
        proxies=proxies,
        phase=phase,
        round=round_no,
        latency=Distribution(proxies, p99 / 2, p99 * 0.9, p99, p99 * 1.1),
        done=proxies if done is None else done,
        apply_ms=None if phase == "initial-sync" else 12.0,
        apply_cpu_s=None if phase == "initial-sync" else 0.01,
        cpu_s=0.5,
        clients_cpu_s=0.2,
        rss_bytes=100 * 2**20,
        verified=True,
    )


def test_summaries_take_medians_of_rounds_and_judge_the_largest_count() -> None:
    from _xds_report import evaluate, format_goal, format_table, summarize  # noqa: PLC0415

    runs = [
        _run(100, "initial-sync", 1, 3000.0),
        *(_run(100, "vs-weight", r, p) for r, p in ((1, 300.0), (2, 100.0), (3, 200.0))),
        *(_run(1000, "vs-weight", r, p) for r, p in ((1, 900.0), (2, 950.0), (3, 5000.0))),
        *(_run(1000, "new-service", r, p) for r, p in ((1, 800.0), (2, 990.0), (3, 700.0))),
    ]
    summaries = summarize(runs)
    assert [(s.proxies, s.phase, s.rounds) for s in summaries] == [
        (100, "initial-sync", 1),
        (100, "vs-weight", 3),
        (1000, "vs-weight", 3),
        (1000, "new-service", 3),
    ]
    assert summaries[1].p99_ms == 200.0
    assert summaries[2].p99_ms == 950.0  # one bad round does not decide
    assert summaries[2].p99_by_round == (900.0, 950.0, 5000.0)
    goal = evaluate(summaries)
    assert (goal.proxies, goal.worst_p99_ms, goal.met) == (1000, 950.0, True)  # sync not judged
    assert "PASS" in format_goal(goal)
    table = format_table(summaries)
    assert table.splitlines()[0].split()[:3] == ["proxies", "phase", "rounds"]
    assert "1000/1000" in table

    slow = summarize([_run(1000, "new-service", 1, 1500.0)])
    assert evaluate(slow).met is False
    assert "FAIL" in format_goal(evaluate(slow))
    missing = summarize([_run(1000, "vs-weight", 1, 500.0, done=999)])
    assert evaluate(missing).met is False  # fast, but a proxy never got the change
    assert evaluate(summarize([_run(100, "vs-weight", 1, 10.0)])).met is None


def test_json_has_no_infinity() -> None:
    from _xds_report import json_safe  # noqa: PLC0415

    assert json_safe({"a": [1.0, math.inf], "b": (math.inf,)}) == {"a": [1.0, None], "b": [None]}


# --- generated config ---------------------------------------------------------------------


def test_generated_mesh_is_valid_istio_config() -> None:
    from _xds_config import mesh, new_service, weight_change  # noqa: PLC0415

    documents = mesh(1000, vs_every=10)
    resources = [parse_resource(d, source="bench", index=i) for i, d in enumerate(documents, 1)]
    kinds = [r.kind for r in resources]
    assert (kinds.count("ServiceEntry"), kinds.count("WorkloadEntry")) == (1000, 1000)
    assert kinds.count("VirtualService") == 100
    addresses = {d["spec"]["address"] for d in documents if d["kind"] == "WorkloadEntry"}
    assert len(addresses) == 1000
    for change in (weight_change(1000, 1), new_service(1000, 1)):
        for document in change.documents:
            parse_resource(document, source=change.kind)
    split = parse_resource(weight_change(1000, 2).documents[0])
    assert isinstance(split, VirtualService)
    weights = [d.weight for d in split.spec.http[0].route]
    assert sum(weights) == 100


def test_each_round_changes_the_weight() -> None:
    from _xds_config import weight_for  # noqa: PLC0415

    weights = [90] + [weight_for(r) for r in range(1, 60)]
    assert all(a != b for a, b in itertools.pairwise(weights))
    assert all(0 < w < 100 for w in weights)


def test_watched_names_are_what_the_translator_builds() -> None:
    from _xds_config import mesh, new_service, weight_change, workload_name  # noqa: PLC0415
    from _xds_verify import check_content  # noqa: PLC0415

    documents = mesh(20, vs_every=10)
    change = new_service(20, 1)
    after = _translate(_applied(documents, change), workload_name(3))
    for type_url, name in change.watch:
        assert name in after[type_url], (type_url, name)
    samples = {
        f"{t}|{n}": after[t][n].SerializeToString(deterministic=True) for t, n in change.watch
    }
    assert check_content(change, 1, samples) == []

    weighted = weight_change(20, 1)
    (type_url, name), *_ = weighted.watch
    before = _translate(documents, workload_name(3))[type_url][name]
    changed = _translate(_applied(documents, weighted), workload_name(3))[type_url][name]
    assert changed != before
    key = f"{type_url}|{name}"
    assert check_content(weighted, 1, {key: changed.SerializeToString()}) == []
    problems = check_content(weighted, 1, {key: before.SerializeToString()})
    assert problems and "weights (90, 10)" in problems[0]


# --- the simulated proxy ------------------------------------------------------------------


def test_leading_name_reads_field_one() -> None:
    from _xds_stream import leading_name  # noqa: PLC0415

    long_name = "outbound|8080||" + "x" * 300  # a two-byte length varint
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=long_name)
    assert leading_name(cla.SerializeToString(deterministic=True)) == long_name
    assert leading_name(b"") is None
    assert leading_name(b"\x0a\x05ab") is None  # truncated


def test_simulated_proxy_subscribes_acks_syncs_and_sees_a_change() -> None:
    from _xds_config import mesh, node_id, node_metadata, weight_change  # noqa: PLC0415
    from _xds_config import workload_name as workload  # noqa: PLC0415
    from _xds_stream import CDS, EDS, LDS, RDS, Decoder, SimulatedProxy, make_node  # noqa: PLC0415

    documents = mesh(20, vs_every=10)
    resources = _translate(documents, workload(2))
    proxy = SimulatedProxy(make_node(node_id(2), node_metadata(2, 20)), Decoder())
    first, second = proxy.initial()
    assert (first.type_url, first.node.id, list(first.resource_names)) == (CDS, node_id(2), [])
    assert first.node.metadata.fields["WORKLOAD_NAME"].string_value == workload(2)
    assert (second.type_url, second.HasField("node")) == (LDS, False)

    ack, eds = proxy.receive(_response(CDS, list(resources[CDS].values()), "c1", "1"))
    assert (ack.type_url, ack.version_info, ack.response_nonce) == (CDS, "c1", "1")
    assert eds.type_url == EDS and set(eds.resource_names) == set(resources[EDS])
    assert not proxy.synced
    ack, rds = proxy.receive(_response(LDS, list(resources[LDS].values()), "l1", "2"))
    assert (rds.type_url, list(rds.resource_names)) == (RDS, list(resources[RDS]))
    proxy.receive(_response(EDS, list(resources[EDS].values()), "e1", "3"))
    assert proxy.settle(5.0) == (False, False)  # routes still missing
    (ack,) = proxy.receive(_response(RDS, list(resources[RDS].values()), "r1", "4"))
    assert (ack.version_info, ack.response_nonce, list(ack.resource_names)) == (
        "r1",
        "4",
        ["outbound"],
    )
    assert proxy.settle(6.0) == (True, False) and proxy.synced_at == 6.0

    change = weight_change(20, 1)
    proxy.arm(change.watch)
    proxy.receive(_response(RDS, list(resources[RDS].values()), "r1", "5"))  # same content
    assert proxy.settle(7.0) == (False, False) and proxy.armed
    changed = _translate(_applied(documents, change), workload(2))
    proxy.receive(_response(RDS, list(changed[RDS].values()), "r2", "6"))
    assert proxy.settle(8.0) == (False, True) and proxy.updated_at == 8.0
    with pytest.raises(ValueError, match="not requested"):
        proxy.receive(discovery_pb2.DiscoveryResponse(type_url="type.googleapis.com/x.Y"))
