"""The mesh benchmark's pure parts: PKI, sidecar bootstraps, pacing script, medians and goals."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from trellis.core.tls import (
    DownstreamTls,
    TlsCertificateSecret,
    TransportProtocol,
    UpstreamTls,
    ValidationSecret,
)
from trellis.xds.bootstrap import parse_bootstrap
from trellis.xds.compile import compile_bootstrap

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))


def _wrk(rps: float, p50: float, p90: float, p99: float, requests: int = 10_000) -> Any:
    from _wrk import WrkResult  # noqa: PLC0415

    return WrkResult(requests, 10.0, rps, p50, (p50 + p90) / 2, p90, p99)


def _run(scenario: str, phase: str, rnd: int, wrk: Any, cpu_ms: float = 0.0) -> Any:
    from _mesh_report import MeshRun, SidecarSample  # noqa: PLC0415

    sidecars: tuple[SidecarSample, ...] = ()
    if scenario != "direct":
        client = SidecarSample("client", cpu_ms, 30 << 20)
        sidecars = (client, SidecarSample("server", cpu_ms / 2, (36 + rnd) << 20))
    return MeshRun(scenario, phase, rnd, wrk, sidecars)


def test_pki_issues_spiffe_certificates_that_chain_to_the_root(tmp_path: Path) -> None:
    from _mesh_config import CLIENT_ID, SERVER_ID, make_pki  # noqa: PLC0415

    pki = make_pki(NOW)
    root = x509.load_pem_x509_certificate(pki.root_pem.encode())
    for pair, spiffe_id in ((pki.client, CLIENT_ID), (pki.server, SERVER_ID)):
        leaf, chained_root = x509.load_pem_x509_certificates(pair.chain_pem.encode())
        assert chained_root == root
        leaf.verify_directly_issued_by(root)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id]
        assert leaf.not_valid_before_utc <= NOW < leaf.not_valid_after_utc
        pem = tmp_path / "pair.pem"
        pem.write_text(pair.chain_pem + pair.key_pem)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(pem))  # key matches leaf
    assert pki.client.key_pem != pki.server.key_pem


def test_mtls_bootstraps_compile_with_the_proxys_compiler() -> None:
    from _mesh_config import (  # noqa: PLC0415
        SERVER_ID,
        client_sidecar_bootstrap,
        make_pki,
        server_sidecar_bootstrap,
    )

    pki = make_pki(NOW)
    server_doc = server_sidecar_bootstrap(
        listen_port=4001, admin_port=4002, upstream_port=4000, pki=pki
    )
    server = compile_bootstrap(parse_bootstrap(server_doc, "server"), "server")
    assert server.node.service_account == "server"
    (listener,) = server.listeners
    assert listener.address.port == 4001
    (chain,) = listener.chains
    assert chain.transport_protocol is TransportProtocol.TLS
    assert isinstance(chain.tls, DownstreamTls)
    assert chain.tls.require_client_certificate
    assert chain.tls.common.validation is not None
    assert chain.tls.common.validation.name == "ROOTCA"
    assert {name: type(s) for name, s in server.secrets} == {
        "default": TlsCertificateSecret,
        "ROOTCA": ValidationSecret,
    }
    assert [str(c.endpoints[0].address) for c in server.clusters] == ["127.0.0.1:4000"]

    client_doc = client_sidecar_bootstrap(
        listen_port=4003, admin_port=4004, server_port=4001, pki=pki
    )
    client = compile_bootstrap(parse_bootstrap(client_doc, "client"), "client")
    (cluster,) = client.clusters
    assert str(cluster.endpoints[0].address) == "127.0.0.1:4001"
    tls = cluster.transport_socket
    assert isinstance(tls, UpstreamTls)
    assert [m.matcher.value for m in tls.common.san_matchers] == [SERVER_ID]
    assert tls.common.certificate is not None and tls.common.certificate.name == "default"
    assert [name for name, _ in client.secrets] == ["default", "ROOTCA"]


def test_plain_bootstraps_have_no_tls_and_no_secrets() -> None:
    from _mesh_config import client_sidecar_bootstrap, server_sidecar_bootstrap  # noqa: PLC0415

    server_doc = server_sidecar_bootstrap(
        listen_port=4001, admin_port=4002, upstream_port=4000, pki=None
    )
    server = compile_bootstrap(parse_bootstrap(server_doc, "server"), "server")
    assert server.listeners[0].chains[0].tls is None
    assert server.secrets == ()
    client_doc = client_sidecar_bootstrap(
        listen_port=4003, admin_port=4004, server_port=4001, pki=None
    )
    client = compile_bootstrap(parse_bootstrap(client_doc, "client"), "client")
    assert client.clusters[0].transport_socket is None
    assert client.secrets == ()


def test_pacing_script_spaces_requests_by_the_rate() -> None:
    from _mesh_config import paced_wrk_argv, pacing_script  # noqa: PLC0415

    script = pacing_script(400.0)
    assert "local interval_ms = 2.5\n" in script
    assert "function delay()" in script
    assert "if wait <= 0 then\n    return 0" in script  # never a negative (huge unsigned) delay
    assert "math.floor(wait + 0.5)" in script
    assert "local interval_ms = 1.0\n" in pacing_script(1000.0)
    with pytest.raises(ValueError, match="rate per thread"):
        pacing_script(0.0)
    argv = paced_wrk_argv(
        "http://127.0.0.1:1/", script="/tmp/p.lua", threads=1, connections=10, duration_s=5
    )
    assert argv == [
        "wrk", "-t1", "-c10", "-d5s", "--latency", "-s", "/tmp/p.lua", "http://127.0.0.1:1/"
    ]  # fmt: skip


def test_summary_takes_medians_per_phase_and_sidecar() -> None:
    from _mesh_report import summarize_all  # noqa: PLC0415

    runs = [
        _run("sidecars", "max", 1, _wrk(9000, 3.0, 4.0, 6.0), cpu_ms=300.0),
        _run("sidecars", "max", 2, _wrk(11000, 2.0, 3.0, 5.0), cpu_ms=400.0),
        _run("sidecars", "max", 3, _wrk(10000, 2.5, 3.5, 9.0), cpu_ms=500.0),
        _run("direct", "rate", 1, _wrk(1000, 0.05, 0.08, 0.4)),
    ]
    summaries = summarize_all(runs, ("direct", "sidecars"))
    assert [(s.phase, s.scenario) for s in summaries] == [("max", "sidecars"), ("rate", "direct")]
    mesh = summaries[0]
    assert (mesh.rps, mesh.p50_ms, mesh.p99_ms) == (10000.0, 2.5, 6.0)
    assert mesh.rps_by_round == (9000.0, 11000.0, 10000.0)
    client, server = mesh.sidecar("client"), mesh.sidecar("server")
    assert client is not None and server is not None
    assert client.cpu_ms_per_1k == pytest.approx(40.0)  # 400 ms over 10 000 requests
    assert client.cpu_percent == pytest.approx(4.0)  # 400 ms over 10 s
    assert server.cpu_ms_per_1k == pytest.approx(20.0)
    assert (server.rss_mib, server.rss_max_mib) == (38.0, 39.0)
    assert summaries[1].sidecars == ()


def test_added_latency_pairs_rounds_and_goals_judge_the_mtls_pair() -> None:
    from _mesh_report import added_latency, evaluate, summarize_all  # noqa: PLC0415

    runs = [
        _run("direct", "rate", 1, _wrk(1000, 0.05, 0.10, 0.40)),
        _run("direct", "rate", 2, _wrk(1000, 0.30, 0.50, 2.00)),  # a noisy round for both
        _run("sidecars", "rate", 1, _wrk(1000, 0.30, 0.50, 1.00), cpu_ms=900.0),
        _run("sidecars", "rate", 2, _wrk(1000, 0.60, 0.90, 2.80), cpu_ms=1100.0),
        _run("sidecars", "rate", 3, _wrk(1000, 9.00, 9.00, 9.00), cpu_ms=1000.0),  # unpaired
        _run("sidecars-plain", "max", 1, _wrk(20000, 1.0, 2.0, 3.0), cpu_ms=99_000.0),
    ]
    added = added_latency(runs, "sidecars")
    assert added is not None
    assert added.rounds == 2
    assert (added.p50_ms, added.p90_ms, added.p99_ms) == pytest.approx((0.275, 0.4, 0.7))
    assert added_latency(runs, "sidecars-plain") is None  # no rate runs

    summaries = summarize_all(runs, ("direct", "sidecars", "sidecars-plain"))
    goals = evaluate(summaries, added)
    assert goals.cpu_ms_per_1k == pytest.approx({"client": 100.0, "server": 50.0})
    assert goals.rss_max_mib == {"client": 30.0, "server": 39.0}  # sidecars-plain not judged
    assert goals.verdicts() == {"cpu": True, "p90": True, "p99": True, "rss": True}
    assert not goals.missed

    worse = evaluate(summaries, added_latency(runs[:2] + runs[3:4], "sidecars"))
    assert worse.added is not None and worse.added.p99_ms == pytest.approx(0.8)
    assert worse.verdicts()["p90"] is True and worse.verdicts()["p99"] is True
    slow = added_latency([runs[0], _run("sidecars", "rate", 1, _wrk(1000, 1, 1, 1.5))], "sidecars")
    assert evaluate(summaries, slow).verdicts()["p90"] is False
    assert evaluate(summaries, slow).verdicts()["p99"] is False
    assert evaluate(summaries, slow).missed
    empty = evaluate([], None)
    assert set(empty.verdicts().values()) == {None}
    assert not empty.missed


def test_tables_and_goal_lines() -> None:
    from _mesh_report import (  # noqa: PLC0415
        added_latency,
        evaluate,
        format_added,
        format_goals,
        format_table,
        summarize_all,
    )

    runs = [
        _run("direct", "rate", 1, _wrk(1000, 0.05, 0.10, 0.40)),
        _run("sidecars", "rate", 1, _wrk(998, 0.30, 0.70, 1.50), cpu_ms=1200.0),
    ]
    summaries = summarize_all(runs, ("direct", "sidecars"))
    table = format_table(summaries).splitlines()
    assert table[0].split()[:3] == ["phase", "scenario", "rps"]
    assert table[2].split()[:6] == ["rate", "direct", "1000", "0.050", "0.100", "0.400"]
    assert table[2].split()[6:] == ["-"] * 6 + ["0"]
    assert table[3].split()[6:8] == ["120.0", "60.0"]  # cpu ms/1k: client, server
    added = added_latency(runs, "sidecars")
    assert added is not None
    lines = format_added([added], {"sidecars": 998.0}).splitlines()
    assert lines[2].split() == ["sidecars", "998", "+0.250", "+0.600", "+1.100"]
    goals = format_goals(evaluate(summaries, added)).splitlines()
    assert goals[0].endswith("client 120.0, server 60.0 (goal <= 100: MISSED)")
    assert goals[1].endswith("0.600 ms (goal <= 0.5 ms: MISSED)")
    assert goals[2].endswith("1.100 ms (goal <= 1 ms: MISSED)")
    assert goals[3].endswith("client 30.0, server 37.0 MiB (goal <= 40 MiB: met)")


def test_server_metrics_prove_the_transport() -> None:
    from _mesh_config import CLIENT_ID  # noqa: PLC0415
    from _mesh_servers import inbound_requests  # noqa: PLC0415

    page = (
        "# TYPE istio_requests_total counter\n"
        f'istio_requests_total{{reporter="destination",source_principal="{CLIENT_ID}",'
        'connection_security_policy="mutual_tls",response_code="200"} 3\n'
        'istio_requests_total{reporter="destination",source_principal="unknown",'
        'connection_security_policy="none",response_code="200"} 2\n'
        'istio_requests_total{reporter="source",connection_security_policy="mutual_tls"} 7\n'
        'istio_request_bytes_sum{reporter="destination",connection_security_policy="none"} 9\n'
    )
    assert inbound_requests(page, mutual_tls=True) == 3
    assert inbound_requests(page, mutual_tls=False) == 2
    assert inbound_requests("", mutual_tls=True) == 0


def test_options_quick_and_scenario_order() -> None:
    from mesh_bench import parse_args  # noqa: PLC0415

    quick = parse_args(["--quick", "--scenarios", "sidecars,direct"])
    assert (quick.rounds, quick.duration_s, quick.warmup_s) == (1, 2, 1)
    assert quick.scenarios == ("direct", "sidecars")  # run in the fixed order
    assert (quick.rate, quick.rate_connections, quick.connections) == (1000, 10, 50)
    with pytest.raises(SystemExit):
        parse_args(["--scenarios", "nginx"])
    with pytest.raises(SystemExit):
        parse_args(["--rate", "0"])
