"""Config propagation benchmark: one apply to the control plane, until every proxy has ACKed it.

For each proxy count, a fresh `trellis control-plane` stores `--services`
ServiceEntries (one WorkloadEntry each, a VirtualService for every tenth), then
simulated proxies (real gRPC ADS streams in separate processes) connect and
sync. Each round applies a VirtualService weight change and, separately, a new
ServiceEntry, and times each proxy from the apply's acknowledgement to its ACK
of the changed resources (with VHDS, the default over delta: the changed
virtual host). bench/README.md explains the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _procs import Pinning, choose_pinning, cpu_seconds, cpus_allowed, log_tail, rss_bytes, stop
from _xds_config import Change, mesh, new_service, weight_change
from _xds_procs import (
    Clients,
    Plane,
    apply,
    peak_rss_bytes,
    quiet,
    start_clients,
    start_plane,
    stop_clients,
    wait_for,
)
from _xds_report import (
    SYNC,
    PhaseRun,
    distribution,
    evaluate,
    format_goal,
    format_table,
    json_safe,
    latencies_ms,
    machine_info,
    summarize,
)
from _xds_verify import check_content, merge_reports

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Options:
    proxies: tuple[int, ...]
    services: int
    rounds: int
    vs_every: int
    per_process: int
    debounce: float
    cp_cpus: str
    client_cpus: str
    pin: bool
    sync_timeout: float
    change_timeout: float
    json_out: Path | None
    cp_profile: Path | None
    log_level: str
    check: bool
    protocol: str
    vhds: bool  # asked for and in effect: only over delta

    def changes(self, round_no: int) -> tuple[Change, Change]:
        """The round's two changes, watching what this protocol sends for them."""
        return (
            weight_change(self.services, round_no, use_vhds=self.vhds),
            new_service(self.services, round_no, use_vhds=self.vhds),
        )


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Time from a config apply to every simulated proxy's ACK over ADS."
    )
    add = parser.add_argument
    add("--proxies", help="comma-separated proxy counts (100,1000; --quick: 100)")
    add("--services", type=int, default=1000, help="ServiceEntries stored (1000)")
    add("--rounds", type=int, default=3, help="rounds of both changes per proxy count (3)")
    add("--vs-every", type=int, default=10, help="a VirtualService for every Nth service (10)")
    add("--per-process", type=int, default=500, help="ADS streams per client process (500)")
    add("--debounce", type=float, default=0.1, help="control-plane --debounce seconds (0.1)")
    add("--cp-cpus", default="1", help="taskset CPU list for the control plane (1)")
    add("--client-cpus", default="0", help="taskset CPU list for the client processes (0)")
    add("--no-pin", action="store_true", help="do not pin processes to CPUs")
    add("--sync-timeout", type=float, default=120.0, help="seconds for the initial sync (120)")
    add("--change-timeout", type=float, default=60.0, help="seconds for one change (60)")
    add("--json-out", type=Path, help="JSON file (default bench/results/xds-<UTC time>.json)")
    add("--cp-profile", type=Path, help="run the control plane under cProfile: stats to PATH-N")
    add("--log-level", default="warning", help="control-plane --log-level (warning)")
    add("--check", action="store_true", help="exit 1 when the goal is missed")
    add(
        "--protocol",
        choices=("sotw", "delta"),
        default="delta",
        help="ADS protocol of the simulated proxies (delta, what `trellis proxy --xds` speaks)",
    )
    add(
        "--vhds",
        choices=("on", "off"),
        default="on",
        help="delta proxies announce VHDS: a changed service sends one virtual host (on; "
        "ignored with --protocol sotw)",
    )
    add("--quick", action="store_true", help="smoke run: 1 round, 100 proxies unless --proxies")
    args = parser.parse_args(argv)
    text = args.proxies or ("100" if args.quick else "100,1000")
    try:
        proxies = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        parser.error(f"--proxies: expected numbers separated by commas, got {text!r}")
    if not proxies or min(proxies) < 1:
        parser.error("--proxies needs at least one count, each >= 1")
    if args.services < 2 or min(args.rounds, args.vs_every, args.per_process) < 1:
        parser.error("--services must be >= 2; --rounds, --vs-every, --per-process >= 1")
    if args.debounce < 0 or min(args.sync_timeout, args.change_timeout) <= 0:
        parser.error("--debounce must be >= 0 and the timeouts > 0")
    return Options(
        proxies=proxies,
        services=args.services,
        rounds=1 if args.quick else args.rounds,
        vs_every=args.vs_every,
        per_process=args.per_process,
        debounce=args.debounce,
        cp_cpus=args.cp_cpus,
        client_cpus=args.client_cpus,
        pin=not args.no_pin,
        sync_timeout=args.sync_timeout,
        change_timeout=args.change_timeout,
        json_out=args.json_out,
        cp_profile=args.cp_profile,
        log_level=args.log_level,
        check=args.check,
        protocol=args.protocol,
        vhds=args.vhds == "on" and args.protocol == "delta",
    )


def _errors(reports: list[dict[str, Any] | None]) -> list[str]:
    found = []
    for report in reports:
        for index, reason in (report or {}).get("errors", {}).items():
            found.append(f"stream {index}: {reason}")
    return found


def _clients_cpu(fleet: list[Clients]) -> float:
    return sum(cpu_seconds(c.proc.pid) for c in fleet if c.proc.poll() is None)


def _gather(
    fleet: list[Clients], event: str, event_id: object, timeout: float, nudge: dict[str, Any]
) -> tuple[list[dict[str, Any] | None], list[float | None], bool]:
    """`event` from every client process, its per-client times, and whether it timed out.

    Processes that did not report in time are sent `nudge`, which asks for a partial report.
    """
    reports = wait_for(fleet, event, event_id, timeout)
    timed_out = any(r is None for r in reports)
    if timed_out:
        late = [c for c, r in zip(fleet, reports, strict=True) if r is None]
        for clients in late:
            clients.send(nudge)
        late_reports = iter(wait_for(late, event, event_id, 10.0))
        reports = [r if r is not None else next(late_reports) for r in reports]
    times: list[float | None] = []
    for clients, report in zip(fleet, reports, strict=True):
        times += report["times"] if report else [None] * clients.count
    return reports, times, timed_out


def measure_sync(
    plane: Plane, fleet: list[Clients], opts: Options, problems: list[str]
) -> PhaseRun:
    """Connect every stream at once; time each until it holds CDS, LDS and what they name."""
    proxies = sum(c.count for c in fleet)
    pid = plane.proc.pid
    cpu_before, clients_before = cpu_seconds(pid), _clients_cpu(fleet)
    started = time.monotonic()
    for clients in fleet:
        clients.send({"cmd": "connect"})
    nudge = {"cmd": "sync-status"}
    reports, times, timed_out = _gather(fleet, "synced", None, opts.sync_timeout, nudge)
    cpu = cpu_seconds(pid) - cpu_before
    clients_cpu = _clients_cpu(fleet) - clients_before
    if timed_out:
        problems.append(f"{proxies} proxies: not all synced within {opts.sync_timeout:g} s")
    with_vhds = sum((r or {}).get("vhds", 0) for r in reports)
    if opts.vhds and with_vhds < proxies:
        problems.append(
            f"{proxies} proxies, sync: only {with_vhds} got route configurations with `vhds`"
        )
    problems += [f"{proxies} proxies, sync: {e}" for e in _errors(reports)[:5]]
    done = sum(t is not None for t in times)
    return PhaseRun(
        proxies=proxies,
        phase=SYNC,
        round=1,
        latency=distribution(latencies_ms(started, times)),
        done=done,
        apply_ms=None,
        apply_cpu_s=None,
        cpu_s=cpu,
        clients_cpu_s=clients_cpu,
        rss_bytes=rss_bytes(pid),
        verified=done == proxies,
    )


def measure_change(
    plane: Plane,
    fleet: list[Clients],
    change: Change,
    round_no: int,
    opts: Options,
    problems: list[str],
) -> PhaseRun:
    """Arm every client, apply the change, wait until all clients ACKed the new content."""
    proxies = sum(c.count for c in fleet)
    round_id = f"{proxies}-{change.kind}-{round_no}"
    for clients in fleet:
        clients.send({"cmd": "arm", "id": round_id, "watch": [list(w) for w in change.watch]})
    if any(r is None for r in wait_for(fleet, "armed", round_id, 30.0)):
        raise RuntimeError(f"{round_id}: a client process did not arm")
    pid = plane.proc.pid
    cpu_before = cpu_seconds(pid)
    applied = apply(plane.api_url, change.documents)
    cpu_acked, clients_before = cpu_seconds(pid), _clients_cpu(fleet)
    nudge = {"cmd": "collect", "id": round_id}
    reports, times, timed_out = _gather(fleet, "updated", round_id, opts.change_timeout, nudge)
    cpu = cpu_seconds(pid) - cpu_acked
    clients_cpu = _clients_cpu(fleet) - clients_before
    rss = rss_bytes(pid)
    if timed_out:
        problems.append(f"{round_id}: not every proxy updated within {opts.change_timeout:g} s")
    samples, content_problems = merge_reports([r for r in reports if r is not None])
    content_problems += check_content(change, round_no, samples)
    problems += [f"{round_id}: {p}" for p in content_problems + _errors(reports)[:5]]
    return PhaseRun(
        proxies=proxies,
        phase=change.kind,
        round=round_no,
        latency=distribution(latencies_ms(applied.acked, times)),
        done=sum(t is not None for t in times),
        apply_ms=(applied.acked - applied.sent) * 1000.0,
        apply_cpu_s=cpu_acked - cpu_before,
        cpu_s=cpu,
        clients_cpu_s=clients_cpu,
        rss_bytes=rss,
        verified=not content_problems,
    )


def _line(run: PhaseRun, rounds: int) -> str:
    where = "sync" if run.phase == SYNC else f"round {run.round}/{rounds} {run.phase}"
    lat = run.latency
    apply_ms = "" if run.apply_ms is None else f"  apply {run.apply_ms:.0f} ms"
    return (
        f"  {run.proxies:>5} proxies  {where:<26} p50 {lat.p50_ms:7.0f}  p99 {lat.p99_ms:7.0f}"
        f"  max {lat.max_ms:7.0f} ms  done {run.done}/{run.proxies}{apply_ms}"
        f"  cp cpu {run.cpu_s:.2f} s  rss {run.rss_bytes / 2**20:.0f} MiB"
        f"  clients cpu {run.clients_cpu_s:.2f} s"
    )


def run_scale(
    proxies: int, opts: Options, pinning: Pinning, workdir: Path, problems: list[str]
) -> tuple[list[PhaseRun], dict[str, Any]]:
    """One fresh control plane, `proxies` simulated proxies, the sync and all rounds."""
    runs: list[PhaseRun] = []
    info: dict[str, Any] = {"proxies": proxies}
    profile = None
    if opts.cp_profile is not None:
        profile = opts.cp_profile.with_name(f"{opts.cp_profile.name}-{proxies}").resolve()
        info["cp_profile"] = str(profile)
    plane = start_plane(
        workdir,
        cpus=pinning.proxy_cpus,
        pinning=pinning,
        debounce=opts.debounce,
        log_level=opts.log_level,
        profile=profile,
    )
    fleet: list[Clients] = []
    try:
        seeded = apply(plane.api_url, mesh(opts.services, opts.vs_every))
        info["seed_apply_s"] = round(seeded.acked - seeded.sent, 3)
        info["seed_outcomes"] = seeded.outcomes
        info["cpus_allowed"] = {"control-plane": cpus_allowed(plane.proc.pid)}
        quiet(plane.proc.pid)
        info["rss_idle_bytes"] = rss_bytes(plane.proc.pid)
        fleet = start_clients(
            plane.ads_address,
            proxies=proxies,
            services=opts.services,
            per_process=opts.per_process,
            workdir=workdir,
            cpus=pinning.load_cpus,
            pinning=pinning,
            protocol=opts.protocol,
            vhds=opts.vhds,
        )
        info["cpus_allowed"] |= {f"clients-{c.first}": cpus_allowed(c.proc.pid) for c in fleet}
        runs.append(measure_sync(plane, fleet, opts, problems))
        print(_line(runs[-1], opts.rounds), flush=True)
        for round_no in range(1, opts.rounds + 1):
            for change in opts.changes(round_no):
                quiet(plane.proc.pid)
                runs.append(measure_change(plane, fleet, change, round_no, opts, problems))
                print(_line(runs[-1], opts.rounds), flush=True)
        info["rss_peak_bytes"] = peak_rss_bytes(plane.proc.pid)
        if plane.proc.poll() is not None:
            problems.append(
                f"control plane exited with {plane.proc.returncode}{log_tail(plane.log)}"
            )
    finally:
        stop_clients(fleet)
        stop(plane.proc)
    return runs, info


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    checked = choose_pinning(opts.cp_cpus, opts.client_cpus, opts.pin)
    pinning = checked
    if checked.proxy_cpus is not None:
        note = f"control plane on CPU {opts.cp_cpus}, client processes on {opts.client_cpus}"
        pinning = Pinning(opts.cp_cpus, opts.client_cpus, note)
    info = machine_info(BENCH_DIR)
    started_at = datetime.datetime.now(datetime.UTC)
    print(f"machine: {info['cpu_model']}, {info['nproc']} CPUs, Linux {info['kernel']}")
    print(f"tools:   Python {info['python']}, grpcio {info['grpcio']}, protobuf {info['protobuf']}")
    print(f"pinning: {pinning.note}")
    print(
        f"mesh:    {opts.services} services, proxies {','.join(map(str, opts.proxies))}, "
        f"{opts.rounds} round(s), debounce {opts.debounce:g} s, {opts.protocol} xDS"
        f"{' with VHDS' if opts.vhds else ''}"
    )
    problems: list[str] = []
    runs: list[PhaseRun] = []
    scales: list[dict[str, Any]] = []
    for proxies in opts.proxies:
        workdir = Path(tempfile.mkdtemp(prefix="trellis-xds-bench-"))
        try:
            scale_runs, scale_info = run_scale(proxies, opts, pinning, workdir, problems)
            runs += scale_runs
            scales.append(scale_info)
        except (RuntimeError, OSError) as error:
            problems.append(f"{proxies} proxies: {error}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    summaries = summarize(runs)
    goal = evaluate(summaries)
    print()
    print(format_table(summaries) if summaries else "no results")
    print()
    print(format_goal(goal))
    for scale in scales:
        print(
            f"control plane at {scale['proxies']} proxies: peak RSS "
            f"{scale.get('rss_peak_bytes', 0) / 2**20:.0f} MiB, idle RSS after storing "
            f"{opts.services} services {scale.get('rss_idle_bytes', 0) / 2**20:.0f} MiB, "
            f"storing them took {scale.get('seed_apply_s', 0):.1f} s"
        )
    for problem in problems:
        print(f"PROBLEM: {problem}")

    out = opts.json_out or BENCH_DIR / "results" / f"xds-{started_at:%Y%m%dT%H%M%SZ}.json"
    options = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
    report = {
        "benchmark": "xds",
        "started_at": started_at.isoformat(),
        "machine": info,
        "options": options,
        "pinning": asdict(pinning),
        "scales": scales,
        "runs": [asdict(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
        "goal": {**asdict(goal), "met": goal.met},
        "problems": problems,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    print(f"JSON:    {out}")
    if problems:
        return 1
    return 1 if opts.check and goal.met is False else 0


if __name__ == "__main__":
    sys.exit(main())
