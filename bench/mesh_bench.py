"""Mesh benchmark: wrk to an nginx upstream directly and through a client + server sidecar pair.

Everything runs on 127.0.0.1 in one run. Two phases per round, each over every
scenario in turn: `max` (closed loop, as many requests as wrk gets through) and
`rate` (wrk paced by a Lua script to a fixed rate, 1000 rps by default). Rounds
are interleaved and medians reported. bench/README.md explains the columns.
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

from _mesh_config import CLIENT_ID, SERVER_ID, make_pki, paced_wrk_argv, pacing_script
from _mesh_report import (
    DIRECT,
    PHASES,
    SIDECARS,
    MeshRun,
    SidecarSample,
    added_latency,
    evaluate,
    format_added,
    format_goals,
    format_table,
    summarize_all,
)
from _mesh_servers import SidecarPair, check_transport, start_pair
from _options import CommonOptions, add_common, common_values
from _procs import Pinning, choose_pinning, cpus_allowed, free_port, http_get, log_tail, stop
from _procs import tree_cpu_seconds as cpu_seconds
from _procs import tree_rss_bytes as rss_bytes
from _report import machine_info
from _servers import (
    Server,
    nginx_upstream_conf,
    nginx_version,
    payload,
    start_nginx,
    trellis_command,
)
from _wrk import WrkError, WrkResult, run_wrk, wrk_argv

SCENARIOS = (DIRECT, "sidecars", "sidecars-plain")
RATE_SHORTFALL = 0.95  # warn when the paced phase reaches less than this share of --rate
BENCH_DIR = Path(__file__).resolve().parent
PACING = (
    "wrk with a Lua delay() that hands each request the next slot of a fixed schedule "
    "(1/rate apart, 1 ms timer resolution, catches up after stalls like wrk2); latency is "
    "measured from the actual send, without wrk2's coordinated-omission correction"
)

Targets = dict[str, tuple[str, SidecarPair | None]]  # scenario -> (URL to load, sidecars measured)


@dataclass(frozen=True, slots=True)
class Options(CommonOptions):
    rate: int
    rate_connections: int


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark a trellis sidecar pair (mTLS) against direct calls with wrk."
    )
    add_common(parser, SCENARIOS, "mesh")
    add = parser.add_argument
    add("--rate", type=int, default=1000, help="requests/s in the rate phase (1000)")
    add("--rate-connections", type=int, default=10, help="wrk connections, rate phase (10)")
    args = parser.parse_args(argv)
    common = common_values(parser, args, SCENARIOS)
    if min(args.rate, args.rate_connections) < 1:
        parser.error("--rate and --rate-connections must be >= 1")
    return Options(rate=args.rate, rate_connections=args.rate_connections, **common)


def _argv(
    opts: Options, pinning: Pinning, phase: str, url: str, script: Path, secs: int
) -> list[str]:
    if phase == "rate":
        argv = paced_wrk_argv(
            url, script=str(script), threads=1, connections=opts.rate_connections, duration_s=secs
        )
    else:
        argv = wrk_argv(url, threads=1, connections=opts.connections, duration_s=secs)
    return pinning.wrap(pinning.load_cpus, argv)


def measure(
    argv: list[str], timeout_s: float, pair: SidecarPair | None
) -> tuple[WrkResult, tuple[SidecarSample, ...]]:
    """One wrk run with each sidecar's CPU time read before and after and its RSS after."""
    if pair is None:
        result, _ = run_wrk(argv, timeout_s=timeout_s)
        return result, ()
    members = pair.members()
    before = [cpu_seconds(s.proc.pid) for s in members]
    result, _ = run_wrk(argv, timeout_s=timeout_s)
    samples = tuple(
        SidecarSample(role, (cpu_seconds(s.proc.pid) - cpu0) * 1000.0, rss_bytes(s.proc.pid))
        for role, s, cpu0 in zip(SIDECARS, members, before, strict=True)
    )
    return result, samples


def start_servers(
    opts: Options, pinning: Pinning, workdir: Path, started: list[Server], problems: list[str]
) -> Targets:
    """Start the upstream and the sidecar pairs; `started` collects what must be stopped."""
    up_port, up_dir = free_port(), workdir / "upstream"
    conf = nginx_upstream_conf(up_dir, up_port, opts.body_size, os.geteuid() == 0)
    upstream = start_nginx(
        "upstream", up_dir, conf, port=up_port, cpus=pinning.load_cpus, pinning=pinning
    )
    started.append(upstream)
    targets: Targets = {}
    if DIRECT in opts.scenarios:
        targets[DIRECT] = (upstream.url, None)
    pki = make_pki(datetime.datetime.now(datetime.UTC)) if "sidecars" in opts.scenarios else None
    for scenario in opts.scenarios:
        if scenario == DIRECT:
            continue
        try:
            pair = start_pair(
                scenario,
                workdir / scenario,
                upstream_port=up_port,
                pki=pki if scenario == "sidecars" else None,
                cpus=pinning.proxy_cpus,
                pinning=pinning,
                log_level=opts.log_level,
                command=trellis_command(),
                started=started,
            )
        except (RuntimeError, OSError) as error:
            problems.append(f"{scenario}: could not start: {error}")
        else:
            targets[scenario] = (pair.url, pair)
    expected = payload(opts.body_size).encode()
    for name, (url, measured) in list(targets.items()):
        try:
            status, body = http_get(url)
        except OSError as error:
            status, body = 0, str(error).encode()
        problem = None
        if status != 200 or body != expected:
            problem = f"{name}: sanity GET {url} gave {status}, {len(body)} bytes"
        elif measured is not None:
            problem = check_transport(measured, mutual_tls=name == "sidecars")
        if problem:
            problems.append(problem)
            del targets[name]
    return targets


def run_rounds(
    opts: Options, pinning: Pinning, targets: Targets, script: Path, problems: list[str]
) -> list[MeshRun]:
    """Warm each scenario up, then the rounds (each: both phases over all scenarios)."""
    active = [name for name in SCENARIOS if name in targets]
    for name in active:
        if opts.warmup_s == 0:
            break
        argv = _argv(opts, pinning, "max", targets[name][0], script, opts.warmup_s)
        try:
            run_wrk(argv, timeout_s=opts.warmup_s + 60.0)
        except WrkError as error:
            problems.append(f"{name}: warm-up failed: {error}")
    runs: list[MeshRun] = []
    failed: set[str] = set()
    for rnd in range(1, opts.rounds + 1):
        for phase in PHASES:
            for name in active:
                if name in failed:
                    continue
                url, pair = targets[name]
                argv = _argv(opts, pinning, phase, url, script, opts.duration_s)
                try:
                    result, samples = measure(argv, opts.duration_s + 60.0, pair)
                except (WrkError, OSError) as error:
                    failed.add(name)
                    problems.append(f"{name}: round {rnd} {phase} failed: {error}")
                    continue
                run = MeshRun(name, phase, rnd, result, samples)
                runs.append(run)
                for member in pair.members() if pair else ():
                    if member.proc.poll() is not None:
                        failed.add(name)
                        code = member.proc.returncode
                        problems.append(f"{member.name}: exited with {code}{log_tail(member.log)}")
                _print_run(run, opts.rounds)
    return runs


def _print_run(run: MeshRun, rounds: int) -> None:
    cpu = "  ".join(
        f"{role} {run.cpu_ms_per_1k(role):5.1f}"
        for role in SIDECARS
        if run.cpu_ms_per_1k(role) is not None
    )
    flag = f"  ERRORS {run.wrk.errors}" if run.wrk.errors else ""
    print(
        f"  round {run.round}/{rounds}  {run.phase:<4} {run.scenario:<15}{run.wrk.rps:>8.0f} rps"
        f"  p50 {run.wrk.p50_ms:6.3f}  p99 {run.wrk.p99_ms:6.3f} ms"
        f"{'  cpu ms/1k ' + cpu if cpu else ''}{flag}",
        flush=True,
    )


def _print_plan(opts: Options, pinning: Pinning, info: dict[str, object]) -> None:
    print(f"machine: {info['cpu_model']}, {info['nproc']} CPUs, Linux {info['kernel']}")
    print(f"tools:   Python {info['python']}, {info['nginx']}, {info['wrk']}")
    print(f"pinning: {pinning.note.replace('proxy', 'both sidecars')}")
    print(f"scenarios: {', '.join(opts.scenarios)}; mTLS {CLIENT_ID} -> {SERVER_ID}")
    print(
        f"max:     wrk -t1 -c{opts.connections} -d{opts.duration_s}s --latency (closed loop)\n"
        f"rate:    wrk -t1 -c{opts.rate_connections} -d{opts.duration_s}s --latency, "
        f"paced to {opts.rate} rps\n"
        f"         ({PACING})\n"
        f"rounds:  {opts.rounds} x (max, rate) over the scenarios, {opts.warmup_s} s warm-up each, "
        f"{opts.body_size} B bodies"
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: `make bench` installs nginx-light and wrk", file=sys.stderr)
            return 2
    pinning = choose_pinning(opts.proxy_cpus, opts.load_cpus, opts.pin)
    info = machine_info(BENCH_DIR, nginx_version())
    started_at = datetime.datetime.now(datetime.UTC)
    _print_plan(opts, pinning, info)
    problems: list[str] = []
    started: list[Server] = []
    runs: list[MeshRun] = []
    allowed: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="trellis-mesh-bench-"))
    try:
        script = workdir / "pace.lua"
        script.write_text(pacing_script(float(opts.rate)))
        targets = start_servers(opts, pinning, workdir, started, problems)
        allowed = {server.name: cpus_allowed(server.proc.pid) for server in started}
        print("cpus:    " + ", ".join(f"{name} {cpus}" for name, cpus in allowed.items()))
        runs = run_rounds(opts, pinning, targets, script, problems)
    finally:
        for server in reversed(started):
            stop(server.proc)
        shutil.rmtree(workdir, ignore_errors=True)  # also removes the keys

    summaries = summarize_all(runs, SCENARIOS)
    added = [a for s in SCENARIOS[1:] if (a := added_latency(runs, s)) is not None]
    goals = evaluate(summaries, next((a for a in added if a.scenario == "sidecars"), None))
    rate_rps = {s.scenario: s.rps for s in summaries if s.phase == "rate"}
    print()
    print(format_table(summaries) if summaries else "no results")
    if added:
        print(f"\nadded over direct at {opts.rate} rps (median of per-round differences):")
        print(format_added(added, rate_rps))
    print()
    print(format_goals(goals))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    for scenario, rps in rate_rps.items():
        if rps < RATE_SHORTFALL * opts.rate:
            print(
                f"WARNING: {scenario} reached {rps:.0f} of the {opts.rate} rps asked in phase rate"
            )
    had_errors = any(s.errors for s in summaries)
    if had_errors:
        print("WARNING: runs marked ! had non-2xx/3xx responses or socket errors")

    out = opts.json_out or BENCH_DIR / "results" / f"mesh-{started_at:%Y%m%dT%H%M%SZ}.json"
    options = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
    report = {
        "benchmark": "mesh",
        "started_at": started_at.isoformat(),
        "machine": info,
        "options": options,
        "pacing": PACING,
        "pinning": asdict(pinning) | {"cpus_allowed": allowed},
        "runs": [_run_json(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
        "added_latency": [asdict(a) for a in added],
        "goals": asdict(goals) | {"verdicts": goals.verdicts()},
        "problems": problems,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON:    {out}")
    if problems or had_errors:
        return 1
    return 1 if opts.check and goals.missed else 0


def _run_json(run: MeshRun) -> dict[str, object]:
    per_1k = {role: run.cpu_ms_per_1k(role) for role in SIDECARS if run.sidecars}
    return asdict(run) | {"errors": run.wrk.errors, "cpu_ms_per_1k": per_1k}


if __name__ == "__main__":
    sys.exit(main())
