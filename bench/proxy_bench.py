"""Proxy benchmark: wrk to an nginx upstream directly, through nginx, and through trellis.

Everything runs on 127.0.0.1 in one run; rounds are interleaved (direct, nginx,
trellis, direct, ...) and medians reported. bench/README.md explains the columns.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from _options import CommonOptions, add_common, common_values
from _procs import (
    Pinning,
    choose_pinning,
    cpus_allowed,
    free_port,
    http_get,
    log_tail,
    stop,
    tree_cpu_seconds,
    tree_rss_bytes,
)
from _report import (
    Run,
    Summary,
    cell,
    evaluate,
    format_table,
    format_targets,
    machine_info,
    summarize,
)
from _servers import (
    Server,
    nginx_proxy_conf,
    nginx_upstream_conf,
    nginx_version,
    payload,
    start_nginx,
    start_trellis,
    trellis_command,
)
from _wrk import WrkError, run_wrk, wrk_argv

SCENARIOS = ("direct", "nginx", "trellis")
BENCH_DIR = Path(__file__).resolve().parent

Targets = dict[str, tuple[Server, Server | None]]  # scenario -> (server to load, proxy measured)


@dataclass(frozen=True, slots=True)
class Options(CommonOptions):
    threads: int


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark trellis proxy against nginx with wrk on loopback."
    )
    add_common(parser, SCENARIOS, "proxy")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    args = parser.parse_args(argv)
    common = common_values(parser, args, SCENARIOS)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return Options(threads=args.threads, **common)


def _wrk(opts: Options, pinning: Pinning, url: str, duration_s: int) -> list[str]:
    argv = wrk_argv(url, threads=opts.threads, connections=opts.connections, duration_s=duration_s)
    return pinning.wrap(pinning.load_cpus, argv)


def measure(scenario: str, targets: Targets, *, opts: Options, pinning: Pinning, rnd: int) -> Run:
    """One wrk run, with the proxy's CPU time read before and after and its RSS after."""
    server, proxy = targets[scenario]
    argv = _wrk(opts, pinning, server.url, opts.duration_s)
    cpu_before = tree_cpu_seconds(proxy.proc.pid) if proxy else 0.0
    result, _ = run_wrk(argv, timeout_s=opts.duration_s + 60.0)
    if proxy is None:
        return Run(scenario, rnd, result, None, None)
    cpu_ms = (tree_cpu_seconds(proxy.proc.pid) - cpu_before) * 1000.0
    return Run(scenario, rnd, result, cpu_ms, tree_rss_bytes(proxy.proc.pid))


def start_servers(
    opts: Options, pinning: Pinning, workdir: Path, started: list[Server], problems: list[str]
) -> Targets:
    """Start the upstream and the proxies; `started` collects what must be stopped."""
    as_root = os.geteuid() == 0
    up_port = free_port()
    up_dir = workdir / "upstream"
    conf = nginx_upstream_conf(up_dir, up_port, opts.body_size, as_root)
    upstream = start_nginx(
        "upstream", up_dir, conf, port=up_port, cpus=pinning.load_cpus, pinning=pinning
    )
    started.append(upstream)
    targets: Targets = {}
    if "direct" in opts.scenarios:
        targets["direct"] = (upstream, None)
    if "nginx" in opts.scenarios:
        port, nginx_dir = free_port(), workdir / "nginx"
        conf = nginx_proxy_conf(nginx_dir, port, up_port, as_root)
        nginx = start_nginx(
            "nginx", nginx_dir, conf, port=port, cpus=pinning.proxy_cpus, pinning=pinning
        )
        started.append(nginx)
        targets["nginx"] = (nginx, nginx)
    if "trellis" in opts.scenarios:
        try:
            trellis = start_trellis(
                workdir / "trellis",
                upstream_port=up_port,
                cpus=pinning.proxy_cpus,
                pinning=pinning,
                log_level=opts.log_level,
                command=trellis_command(),
            )
        except (RuntimeError, OSError) as error:
            problems.append(f"trellis: could not start: {error}")
        else:
            started.append(trellis)
            targets["trellis"] = (trellis, trellis)
    expected = payload(opts.body_size).encode()
    for name, (server, _) in list(targets.items()):
        try:
            status, body = http_get(server.url)
        except OSError as error:
            status, body = 0, str(error).encode()
        if status != 200 or body != expected:
            problems.append(f"{name}: sanity GET {server.url} gave {status}, {len(body)} bytes")
            del targets[name]
    return targets


def run_rounds(opts: Options, pinning: Pinning, targets: Targets, problems: list[str]) -> list[Run]:
    """Warm each scenario up, then run the interleaved rounds; a failing scenario is dropped."""
    active = [name for name in SCENARIOS if name in targets]
    if opts.warmup_s > 0:
        for name in active:
            argv = _wrk(opts, pinning, targets[name][0].url, opts.warmup_s)
            try:
                run_wrk(argv, timeout_s=opts.warmup_s + 60.0)
            except WrkError as error:
                problems.append(f"{name}: warm-up failed: {error}")
    runs: list[Run] = []
    failed: set[str] = set()
    for rnd in range(1, opts.rounds + 1):
        for name in active:
            if name in failed:
                continue
            proxy = targets[name][1]
            try:
                run = measure(name, targets, opts=opts, pinning=pinning, rnd=rnd)
            except (WrkError, OSError) as error:
                failed.add(name)
                problems.append(f"{name}: round {rnd} failed: {error}")
                continue
            if proxy is not None and proxy.proc.poll() is not None:
                failed.add(name)
                problems.append(f"{name}: exited with {proxy.proc.returncode}{log_tail(proxy.log)}")
            runs.append(run)
            flag = f"  ERRORS {run.wrk.errors}" if run.wrk.errors else ""
            print(
                f"  round {rnd}/{opts.rounds}  {name:<8}{run.wrk.rps:>9.0f} rps"
                f"  p99 {run.wrk.p99_ms:6.2f} ms  proxy cpu {cell(run.cpu_ms_per_1k, '5.1f')}"
                f" ms/1k{flag}",
                flush=True,
            )
    return runs


def write_json(path: Path, report: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: `make bench` installs nginx-light and wrk", file=sys.stderr)
            return 2
    pinning = choose_pinning(opts.proxy_cpus, opts.load_cpus, opts.pin)
    info = machine_info(BENCH_DIR, nginx_version())
    started_at = datetime.datetime.now(datetime.UTC)
    print(f"machine: {info['cpu_model']}, {info['nproc']} CPUs, Linux {info['kernel']}")
    print(f"tools:   Python {info['python']}, {info['nginx']}, {info['wrk']}")
    print(f"pinning: {pinning.note}")
    print(
        f"load:    wrk -t{opts.threads} -c{opts.connections} -d{opts.duration_s}s --latency, "
        f"{opts.body_size} B bodies, {opts.rounds} round(s), {opts.warmup_s} s warm-up"
    )
    problems: list[str] = []
    started: list[Server] = []
    runs: list[Run] = []
    allowed: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="trellis-bench-"))
    try:
        targets = start_servers(opts, pinning, workdir, started, problems)
        allowed = {server.name: cpus_allowed(server.proc.pid) for server in started}
        print("cpus:    " + ", ".join(f"{name} {cpus}" for name, cpus in allowed.items()))
        runs = run_rounds(opts, pinning, targets, problems)
    finally:
        for server in reversed(started):
            stop(server.proc)
        shutil.rmtree(workdir, ignore_errors=True)

    summaries: list[Summary] = []
    for name in SCENARIOS:
        mine = [r for r in runs if r.scenario == name]
        if mine:
            summaries.append(summarize(name, mine))
    targets_met = evaluate({s.scenario: s for s in summaries})
    print()
    print(format_table(summaries) if summaries else "no results")
    print()
    print(format_targets(targets_met))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    had_errors = any(s.errors for s in summaries)
    if had_errors:
        print("WARNING: runs marked ! had non-2xx/3xx responses or socket errors")

    out = opts.json_out or BENCH_DIR / "results" / f"proxy-{started_at:%Y%m%dT%H%M%SZ}.json"
    options = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
    runs_json = [
        {**asdict(r), "errors": r.wrk.errors, "cpu_ms_per_1k": r.cpu_ms_per_1k}
        | {"cpu_percent": r.cpu_percent}
        for r in runs
    ]
    targets_json = {
        **asdict(targets_met),
        "rps_ratio_met": targets_met.rps_ratio_met,
        "cpu_met": targets_met.cpu_met,
    }
    write_json(
        out,
        {
            "benchmark": "proxy",
            "started_at": started_at.isoformat(),
            "machine": info,
            "options": options,
            "pinning": asdict(pinning) | {"cpus_allowed": allowed},
            "runs": runs_json,
            "summary": [asdict(s) for s in summaries],
            "targets": targets_json,
            "problems": problems,
        },
    )
    print(f"JSON:    {out}")
    if problems or had_errors:
        return 1
    return 1 if opts.check and targets_met.missed else 0


if __name__ == "__main__":
    sys.exit(main())
