"""xDS benchmark results: percentiles, per-round records, medians of rounds, the table, the goal."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOAL_PROXIES = 1000  # DESIGN.md section 8: 1000 proxies and 1000 services ...
GOAL_P99_MS = 1000.0  # ... every proxy acknowledges a change within 1 s (p99)
SYNC = "initial-sync"
_MIB = 1024 * 1024


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `pct`% of values <= it."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile {pct} is not in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(pct / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class Distribution:
    """Percentiles over clients in milliseconds; `math.inf` stands for a client never done."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def distribution(values_ms: Sequence[float]) -> Distribution:
    return Distribution(
        count=len(values_ms),
        p50_ms=percentile(values_ms, 50),
        p90_ms=percentile(values_ms, 90),
        p99_ms=percentile(values_ms, 99),
        max_ms=max(values_ms),
    )


def latencies_ms(start: float, times: Sequence[float | None]) -> list[float]:
    """Milliseconds from `start` to each client's time; `inf` for clients without one."""
    return [math.inf if t is None else (t - start) * 1000.0 for t in times]


@dataclass(frozen=True, slots=True)
class PhaseRun:
    """One measured phase with one number of proxies: the initial sync or one applied change."""

    proxies: int
    phase: str  # SYNC, or a change kind ("vs-weight", "new-service")
    round: int
    latency: Distribution  # from connect (sync) or from the apply's acknowledgement
    done: int  # clients synced / updated
    apply_ms: float | None  # how long the apply request took (None for the sync)
    apply_cpu_s: float | None  # control-plane CPU seconds while the apply request ran
    cpu_s: float  # control-plane CPU seconds from the sync's start (or the apply's ack)
    # to the last client done
    clients_cpu_s: float  # CPU seconds of all client processes over the same span
    rss_bytes: int  # control-plane VmRSS when the phase ended
    verified: bool  # the clients hold the expected content


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians over the rounds of one (proxies, phase)."""

    proxies: int
    phase: str
    rounds: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    apply_ms: float | None
    apply_cpu_s: float | None
    cpu_s: float
    rss_mib: float
    done_min: int
    verified: bool
    p99_by_round: tuple[float, ...]


def summarize(runs: Sequence[PhaseRun]) -> list[Summary]:
    """One summary per (proxies, phase), in the order the phases were first run."""
    groups: dict[tuple[int, str], list[PhaseRun]] = {}
    for run in runs:
        groups.setdefault((run.proxies, run.phase), []).append(run)
    result = []
    for (proxies, phase), group in groups.items():
        applies = [r.apply_ms for r in group if r.apply_ms is not None]
        apply_cpus = [r.apply_cpu_s for r in group if r.apply_cpu_s is not None]
        result.append(
            Summary(
                proxies=proxies,
                phase=phase,
                rounds=len(group),
                p50_ms=statistics.median(r.latency.p50_ms for r in group),
                p90_ms=statistics.median(r.latency.p90_ms for r in group),
                p99_ms=statistics.median(r.latency.p99_ms for r in group),
                max_ms=statistics.median(r.latency.max_ms for r in group),
                apply_ms=statistics.median(applies) if applies else None,
                apply_cpu_s=statistics.median(apply_cpus) if apply_cpus else None,
                cpu_s=statistics.median(r.cpu_s for r in group),
                rss_mib=statistics.median(r.rss_bytes for r in group) / _MIB,
                done_min=min(r.done for r in group),
                verified=all(r.verified for r in group),
                p99_by_round=tuple(r.latency.p99_ms for r in group),
            )
        )
    return result


@dataclass(frozen=True, slots=True)
class Goal:
    """The DESIGN.md budget: worst change p99 at >= GOAL_PROXIES proxies."""

    proxies: int | None  # the proxy count judged (None: no run had enough proxies)
    worst_p99_ms: float | None
    all_updated: bool
    target_ms: float = GOAL_P99_MS

    @property
    def met(self) -> bool | None:
        if self.worst_p99_ms is None:
            return None
        return self.all_updated and self.worst_p99_ms <= self.target_ms


def evaluate(summaries: Sequence[Summary], goal_proxies: int = GOAL_PROXIES) -> Goal:
    changes = [s for s in summaries if s.phase != SYNC and s.proxies >= goal_proxies]
    if not changes:
        return Goal(None, None, all_updated=False)
    largest = max(s.proxies for s in changes)
    judged = [s for s in changes if s.proxies == largest]
    return Goal(
        proxies=largest,
        worst_p99_ms=max(s.p99_ms for s in judged),
        all_updated=all(s.done_min == s.proxies for s in judged),
    )


def _ms(value: float) -> str:
    return "timeout" if math.isinf(value) else f"{value:.0f}"


_HEADER = (
    "proxies",
    "phase",
    "rounds",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "apply ms",
    "cp cpu s",
    "cp rss MiB",
    "done",
)


def format_table(summaries: Sequence[Summary]) -> str:
    """A plain aligned table; a phase whose content check failed is marked with "!"."""
    rows = [_HEADER]
    for s in summaries:
        rows.append(
            (
                str(s.proxies),
                s.phase,
                str(s.rounds),
                _ms(s.p50_ms),
                _ms(s.p90_ms),
                _ms(s.p99_ms),
                _ms(s.max_ms),
                "-" if s.apply_ms is None else f"{s.apply_ms:.0f}",
                f"{s.cpu_s:.2f}",
                f"{s.rss_mib:.1f}",
                f"{s.done_min}/{s.proxies}" + ("" if s.verified else " !"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if i == 1 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_goal(goal: Goal) -> str:
    if goal.proxies is None or goal.worst_p99_ms is None:
        return (
            f"goal (DESIGN.md 8): p99 <= {goal.target_ms:g} ms at {GOAL_PROXIES} proxies: "
            "n/a (not measured at that many proxies)"
        )
    verdict = "PASS" if goal.met else "FAIL"
    missing = "" if goal.all_updated else " (some proxies were never updated)"
    return (
        f"goal (DESIGN.md 8): change acknowledged by every proxy, p99 <= {goal.target_ms:g} ms "
        f"at {goal.proxies} proxies: worst p99 {_ms(goal.worst_p99_ms)} ms -> {verdict}{missing}"
    )


def json_safe(value: Any) -> Any:
    """JSON has no infinity: a client that never finished becomes null."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(repo: Path) -> dict[str, object]:
    """What the numbers were measured on."""
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=repo,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "trellis": _version("trellis"),
        "git_commit": commit or "unknown",
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
