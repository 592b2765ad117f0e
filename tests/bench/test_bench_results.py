"""The benchmark's pure parts: wrk report parsing, medians, targets, table, generated configs."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from trellis.xds.bootstrap import parse_bootstrap

ROOT = Path(__file__).resolve().parents[2]

WRK_OK = """\
Running 10s test @ http://127.0.0.1:40001/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.31us  201.44us   9.87ms   91.02%
    Req/Sec    80.12k     2.31k   84.00k    70.00%
  Latency Distribution
     50%  580.00us
     75%  650.00us
     90%  720.00us
     99%    1.25ms
  801234 requests in 10.00s, 950.12MB read
Requests/sec:  80119.45
Transfer/sec:     95.00MB
"""

WRK_ERRORS = """\
Running 2s test @ http://127.0.0.1:18999/nonexistent
  1 threads and 20 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    23.69ms   99.72ms 835.83ms   94.85%
    Req/Sec     2.66k   314.55     3.02k    60.00%
  Latency Distribution
     50%    2.13ms
     75%    2.61ms
     90%    3.59ms
     99%     1.50s
  5289 requests in 2.00s, 2.62MB read
  Socket errors: connect 1, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 5289
Requests/sec:   2644.07
Transfer/sec:      1.31MB
"""


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


def test_parse_clean_run() -> None:
    from _wrk import parse_wrk_output  # noqa: PLC0415

    result = parse_wrk_output(WRK_OK)
    assert result.requests == 801234
    assert result.duration_s == 10.0
    assert result.rps == 80119.45
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == (0.58, 0.72, 1.25)
    assert result.errors == 0


def test_parse_run_with_errors_and_second_latencies() -> None:
    from _wrk import parse_wrk_output  # noqa: PLC0415

    result = parse_wrk_output(WRK_ERRORS)
    assert result.p99_ms == 1500.0
    assert result.non_2xx_3xx == 5289
    assert (result.connect_errors, result.read_errors, result.timeouts) == (1, 12, 3)
    assert result.errors == 5289 + 1 + 12 + 3


def test_output_without_latency_distribution_is_rejected() -> None:
    from _wrk import WrkError, parse_wrk_output  # noqa: PLC0415

    without = "\n".join(line for line in WRK_OK.splitlines() if "%" not in line)
    with pytest.raises(WrkError):
        parse_wrk_output(without)


def test_wrk_command_line() -> None:
    from _wrk import wrk_argv  # noqa: PLC0415

    argv = wrk_argv("http://127.0.0.1:1/", threads=1, connections=50, duration_s=10)
    assert argv == ["wrk", "-t1", "-c50", "-d10s", "--latency", "http://127.0.0.1:1/"]


def test_medians_cpu_per_request_and_targets() -> None:
    from _report import Run, evaluate, format_table, summarize  # noqa: PLC0415
    from _wrk import parse_wrk_output  # noqa: PLC0415

    clean, errors = parse_wrk_output(WRK_OK), parse_wrk_output(WRK_ERRORS)
    nginx = [Run("nginx", i, clean, cpu, 13 << 20) for i, cpu in enumerate((8000.0, 9000.0, 1.0))]
    trellis = [Run("trellis", 1, errors, 500.0, 40 << 20)]
    assert nginx[0].cpu_ms_per_1k == pytest.approx(8000.0 / 801234 * 1000)
    assert nginx[0].cpu_percent == pytest.approx(80.0)
    summary = summarize("nginx", nginx)
    assert summary.cpu_ms_per_1k == pytest.approx(8000.0 / 801234 * 1000)  # the median
    assert summary.rss_mib == 13.0
    slow = summarize("trellis", trellis)
    assert slow.cpu_ms_per_1k == pytest.approx(500.0 / 5289 * 1000)
    targets = evaluate({"nginx": summary, "trellis": slow})
    assert targets.trellis_vs_nginx_rps == pytest.approx(2644.07 / 80119.45)
    assert targets.rps_ratio_met is False
    assert targets.cpu_met is True
    assert targets.missed
    table = format_table([summary, slow]).splitlines()
    assert table[0].split()[:2] == ["scenario", "rps"]
    assert table[2].startswith("nginx") and table[2].endswith(" 0")
    assert table[3].endswith(f"{5289 + 16} !")


def test_targets_are_unknown_without_both_proxies() -> None:
    from _report import evaluate  # noqa: PLC0415

    targets = evaluate({})
    assert targets.rps_ratio_met is None and targets.cpu_met is None
    assert not targets.missed


def test_nginx_configs_carry_the_fairness_settings(tmp_path: Path) -> None:
    from _servers import nginx_proxy_conf, nginx_upstream_conf, payload  # noqa: PLC0415

    upstream = nginx_upstream_conf(tmp_path, 4000, 1024, as_root=False)
    assert "worker_processes 1;" in upstream
    assert "access_log off;" in upstream
    assert f'return 200 "{payload(1024)}";' in upstream
    assert len(payload(1024)) == 1024
    proxy = nginx_proxy_conf(tmp_path, 4001, 4000, as_root=True)
    for line in ("keepalive 64;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";'):
        assert line in proxy
    assert "server 127.0.0.1:4000;" in proxy
    assert "user root root;" in proxy


def test_bench_and_demo_bootstraps_are_valid_envoy_bootstraps() -> None:
    from _servers import trellis_bootstrap  # noqa: PLC0415

    bench = parse_bootstrap(trellis_bootstrap(4001, 4002, 4000), "bench")
    assert bench.static_resources.clusters[0].name == "upstream"
    assert bench.admin.address.socket_address.port_value == 4002
    demo_module = importlib.import_module("proxy_demo")
    demo = parse_bootstrap(demo_module.bootstrap(5001, 5002, 5003, 5004), "demo")
    assert [c.name for c in demo.static_resources.clusters] == ["svc-a", "svc-b"]
