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


def test_vhds_watches_are_the_virtual_hosts_the_control_plane_sends() -> None:
    from _xds_config import mesh, new_service, weight_change, workload_name  # noqa: PLC0415
    from _xds_stream import CDS, EDS, VHDS  # noqa: PLC0415
    from _xds_verify import check_content  # noqa: PLC0415

    documents = mesh(20, vs_every=10)

    def sent(docs: list[dict[str, Any]]) -> dict[str, dict[str, Message]]:
        resources = _translate(docs, workload_name(3))
        resources[VHDS] = {h.name: h for h in _vhds_resources(resources)[1]}
        return resources

    def sample(resources: dict[str, dict[str, Message]], watch: Any) -> dict[str, bytes]:
        return {f"{t}|{n}": resources[t][n].SerializeToString() for t, n in watch}

    change = new_service(20, 1, use_vhds=True)
    assert [t for t, _ in change.watch] == [CDS, EDS, VHDS]
    after = sent(_applied(documents, change))
    assert check_content(change, 1, sample(after, change.watch)) == []
    (_, name) = change.watch[-1]
    wrong = after[VHDS][name]
    wrong.ClearField("domains")
    wrong.domains.append("new-001:8080")  # type: ignore[attr-defined]
    problems = check_content(change, 1, sample(after, change.watch))
    assert problems == [
        f"new-service: virtual host {name!r} lacks domains "
        "['new-001.bench.svc.cluster.local', 'new-001.bench.svc.cluster.local:8080']"
    ]
    problems = check_content(new_service(20, 2, use_vhds=True), 2, sample(after, change.watch))
    assert any("no client reported" in p for p in problems)

    weighted = weight_change(20, 1, use_vhds=True)
    ((type_url, name),) = weighted.watch
    before = sent(documents)[type_url][name]
    changed = sent(_applied(documents, weighted))[type_url][name]
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


# --- the simulated delta proxy and VHDS ---------------------------------------------------


def _name(message: Message) -> str:
    return str(getattr(message, "name", "") or getattr(message, "cluster_name", ""))


def _delta(
    type_url: str, messages: list[Message], nonce: str, removed: tuple[str, ...] = ()
) -> Any:
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url,
        system_version_info=f"v{nonce}",
        nonce=nonce,
        removed_resources=list(removed),
        resources=[
            discovery_pb2.Resource(
                name=_name(m),
                version=nonce,
                resource=any_pb2.Any(
                    type_url=type_url, value=m.SerializeToString(deterministic=True)
                ),
            )
            for m in messages
        ],
    )


def _vhds_resources(resources: dict[str, dict[str, Message]]) -> tuple[Any, list[Any]]:
    """The `outbound` route configuration as the control plane sends it to a VHDS client."""
    from _xds_stream import RDS  # noqa: PLC0415
    from trellis.xds.vhds import split  # noqa: PLC0415

    return split(resources[RDS]["outbound"])


def _delta_synced(proxy: Any, resources: dict[str, dict[str, Message]], vhds: bool) -> list[Any]:
    """Feed CDS, LDS, EDS and RDS; returns the requests the RDS response led to."""
    from _xds_stream import CDS, EDS, LDS, RDS  # noqa: PLC0415

    proxy.receive(_delta(CDS, list(resources[CDS].values()), "1"))
    proxy.receive(_delta(LDS, list(resources[LDS].values()), "2"))
    proxy.receive(_delta(EDS, list(resources[EDS].values()), "3"))
    routes = [_vhds_resources(resources)[0]] if vhds else list(resources[RDS].values())
    requests: list[Any] = proxy.receive(_delta(RDS, routes, "4"))
    return requests


def _delta_proxy(index: int, services: int, *, vhds: bool) -> Any:
    from _xds_config import node_id, node_metadata  # noqa: PLC0415
    from _xds_delta import SimulatedDeltaProxy  # noqa: PLC0415
    from _xds_stream import Decoder, make_node  # noqa: PLC0415
    from trellis.xds.vhds import VHDS_CLIENT_FEATURE  # noqa: PLC0415

    features = [VHDS_CLIENT_FEATURE] if vhds else []
    node = make_node(node_id(index), node_metadata(index, services), features)
    return SimulatedDeltaProxy(node, Decoder())


def test_delta_proxy_with_vhds_subscribes_holds_and_sees_one_virtual_host_change() -> None:
    from _xds_config import mesh, virtual_host, weight_change  # noqa: PLC0415
    from _xds_config import workload_name as workload  # noqa: PLC0415
    from _xds_stream import RDS, VHDS  # noqa: PLC0415
    from _xds_verify import check_content  # noqa: PLC0415
    from trellis.xds.vhds import VHDS_CLIENT_FEATURE, resource_name  # noqa: PLC0415

    documents = mesh(20, vs_every=10)
    resources = _translate(documents, workload(2))
    proxy = _delta_proxy(2, 20, vhds=True)
    first, _ = proxy.initial()
    assert list(first.node.client_features) == [VHDS_CLIENT_FEATURE]
    ack, subscribe = _delta_synced(proxy, resources, vhds=True)
    assert (ack.type_url, ack.response_nonce, list(ack.resource_names_subscribe)) == (RDS, "4", [])
    assert (subscribe.type_url, list(subscribe.resource_names_subscribe)) == (VHDS, ["outbound"])
    assert proxy.uses_vhds and proxy.subscribed(VHDS) == {"outbound"}
    assert proxy.settle(1.0) == (False, False)  # routes held, their virtual hosts not yet

    hosts = _vhds_resources(resources)[1]
    (ack,) = proxy.receive(_delta(VHDS, hosts, "5"))
    assert (ack.type_url, ack.response_nonce) == (VHDS, "5")
    assert proxy.settle(2.0) == (True, False)
    watched = resource_name("outbound", virtual_host("svc-0000"))
    assert proxy.held(VHDS, watched) is not None

    change = weight_change(20, 1, use_vhds=True)
    assert change.watch == ((VHDS, watched),)
    proxy.arm(change.watch)
    proxy.receive(_delta(VHDS, [h for h in hosts if h.name == watched], "6"))  # same content
    other = resource_name("outbound", virtual_host("svc-0001"))
    proxy.receive(_delta(VHDS, [], "7", removed=(other,)))
    assert proxy.held(VHDS, other) is None  # a removal drops only what it names
    assert proxy.settle(3.0) == (False, False) and proxy.armed
    changed = _vhds_resources(_translate(_applied(documents, change), workload(2)))[1]
    (new_host,) = [h for h in changed if h.name == watched]
    proxy.receive(_delta(VHDS, [new_host], "8"))
    assert proxy.settle(4.0) == (False, True)
    value = proxy.held(VHDS, watched).value
    assert check_content(change, 1, {f"{VHDS}|{watched}": value}) == []

    # The route configuration loses `vhds` (whole again): the namespace is unsubscribed.
    ack, unsubscribe = proxy.receive(_delta(RDS, list(resources[RDS].values()), "9"))
    assert (unsubscribe.type_url, list(unsubscribe.resource_names_unsubscribe)) == (
        VHDS,
        ["outbound"],
    )
    assert proxy.held(VHDS, watched) is None and not proxy.uses_vhds
    assert proxy.synced  # nothing subscribed: no virtual host response needed


def test_delta_proxy_drops_virtual_hosts_with_their_route_configuration() -> None:
    from _xds_config import mesh  # noqa: PLC0415
    from _xds_config import workload_name as workload  # noqa: PLC0415
    from _xds_stream import LDS, RDS, VHDS  # noqa: PLC0415

    resources = _translate(mesh(20, vs_every=10), workload(2))
    proxy = _delta_proxy(2, 20, vhds=True)
    _delta_synced(proxy, resources, vhds=True)
    hosts = _vhds_resources(resources)[1]
    proxy.receive(_delta(VHDS, hosts, "5"))
    assert proxy.synced
    _, rds, vhds = proxy.receive(_delta(LDS, [], "6", removed=tuple(resources[LDS])))
    assert (rds.type_url, list(rds.resource_names_unsubscribe)) == (RDS, ["outbound"])
    assert (vhds.type_url, list(vhds.resource_names_unsubscribe)) == (VHDS, ["outbound"])
    assert all(proxy.held(VHDS, h.name) is None for h in hosts)


def test_delta_proxy_keeps_the_virtual_hosts_of_route_configurations_still_held() -> None:
    from envoy.config.route.v3 import route_components_pb2  # noqa: PLC0415

    from _xds_config import mesh  # noqa: PLC0415
    from _xds_config import workload_name as workload  # noqa: PLC0415
    from _xds_stream import RDS, VHDS  # noqa: PLC0415

    resources = _translate(mesh(20, vs_every=10), workload(2))
    proxy = _delta_proxy(2, 20, vhds=True)
    _delta_synced(proxy, resources, vhds=True)
    slim, hosts = _vhds_resources(resources)
    other = type(slim)()
    other.CopyFrom(slim)
    other.name = "outbound/v2"  # a `/` in a route configuration's name: split at the last one
    _, subscribe = proxy.receive(_delta(RDS, [other], "5"))
    assert list(subscribe.resource_names_subscribe) == ["outbound/v2"]
    mine = route_components_pb2.VirtualHost(name="outbound/v2/a:80", domains=["a:80"])
    proxy.receive(_delta(VHDS, [*hosts, mine], "6"))
    _, unsubscribe = proxy.receive(_delta(RDS, [], "7", removed=("outbound",)))
    assert list(unsubscribe.resource_names_unsubscribe) == ["outbound"]
    assert proxy.held(VHDS, mine.name) is not None
    assert all(proxy.held(VHDS, h.name) is None for h in hosts)


def test_delta_proxy_with_vhds_rejects_a_misnamed_virtual_host() -> None:
    from _xds_config import mesh  # noqa: PLC0415
    from _xds_config import workload_name as workload  # noqa: PLC0415
    from _xds_stream import VHDS  # noqa: PLC0415

    resources = _translate(mesh(20, vs_every=10), workload(2))
    proxy = _delta_proxy(2, 20, vhds=True)
    _delta_synced(proxy, resources, vhds=True)
    host = _vhds_resources(resources)[1][0]
    response = _delta(VHDS, [host], "5")
    response.resources[0].name = "outbound/elsewhere"
    with pytest.raises(ValueError, match="named 'outbound/svc-0000"):
        proxy.receive(response)


def test_delta_proxy_without_the_feature_keeps_whole_route_configurations() -> None:
    from _xds_config import mesh  # noqa: PLC0415
    from _xds_config import workload_name as workload  # noqa: PLC0415
    from _xds_stream import RDS, VHDS  # noqa: PLC0415

    resources = _translate(mesh(20, vs_every=10), workload(2))
    proxy = _delta_proxy(2, 20, vhds=False)
    assert list(proxy.initial()[0].node.client_features) == []
    (ack,) = _delta_synced(proxy, resources, vhds=False)
    assert ack.type_url == RDS and proxy.settle(1.0) == (True, False)
    assert not proxy.uses_vhds
    with pytest.raises(ValueError, match="not requested"):
        proxy.receive(_delta(VHDS, _vhds_resources(resources)[1], "5"))
