"""Benchmark results: per-run records, medians, the plain-text table, targets, machine info."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from _wrk import WrkResult

TARGET_RPS_RATIO = 0.5  # trellis rps / nginx rps, one core each
TARGET_CPU_MS_PER_1K = 100.0  # proxy CPU milliseconds per 1000 requests
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Run:
    """One measured wrk run against one scenario; proxy fields are None for `direct`."""

    scenario: str
    round: int
    wrk: WrkResult
    proxy_cpu_ms: float | None
    proxy_rss_bytes: int | None

    @property
    def cpu_ms_per_1k(self) -> float | None:
        """Proxy CPU milliseconds spent per 1000 requests."""
        if self.proxy_cpu_ms is None or self.wrk.requests == 0:
            return None
        return self.proxy_cpu_ms / self.wrk.requests * 1000.0

    @property
    def cpu_percent(self) -> float | None:
        """Proxy CPU time as a percentage of one core over the run."""
        if self.proxy_cpu_ms is None or self.wrk.duration_s <= 0:
            return None
        return self.proxy_cpu_ms / (self.wrk.duration_s * 1000.0) * 100.0


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians over the rounds of one scenario; `errors` is the total."""

    scenario: str
    runs: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_ms_per_1k: float | None
    cpu_percent: float | None
    rss_mib: float | None
    errors: int
    rps_by_round: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Targets:
    """The budgets of DESIGN.md section 8 that this benchmark checks."""

    trellis_vs_nginx_rps: float | None
    trellis_cpu_ms_per_1k: float | None
    rps_ratio_target: float = TARGET_RPS_RATIO
    cpu_ms_per_1k_target: float = TARGET_CPU_MS_PER_1K

    @property
    def rps_ratio_met(self) -> bool | None:
        ratio = self.trellis_vs_nginx_rps
        return None if ratio is None else ratio >= self.rps_ratio_target

    @property
    def cpu_met(self) -> bool | None:
        cpu = self.trellis_cpu_ms_per_1k
        return None if cpu is None else cpu <= self.cpu_ms_per_1k_target

    @property
    def missed(self) -> bool:
        return self.rps_ratio_met is False or self.cpu_met is False


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _float_or_none(value: int | None) -> float | None:
    return None if value is None else float(value)


def summarize(scenario: str, runs: list[Run]) -> Summary:
    """Medians of one scenario's runs (which must not be empty)."""
    rss = _median_or_none([_float_or_none(r.proxy_rss_bytes) for r in runs])
    return Summary(
        scenario=scenario,
        runs=len(runs),
        rps=statistics.median(r.wrk.rps for r in runs),
        p50_ms=statistics.median(r.wrk.p50_ms for r in runs),
        p90_ms=statistics.median(r.wrk.p90_ms for r in runs),
        p99_ms=statistics.median(r.wrk.p99_ms for r in runs),
        cpu_ms_per_1k=_median_or_none([r.cpu_ms_per_1k for r in runs]),
        cpu_percent=_median_or_none([r.cpu_percent for r in runs]),
        rss_mib=None if rss is None else rss / _MIB,
        errors=sum(r.wrk.errors for r in runs),
        rps_by_round=tuple(r.wrk.rps for r in runs),
    )


def evaluate(by_name: dict[str, Summary]) -> Targets:
    """Compare trellis with nginx and with the CPU budget."""
    trellis, nginx = by_name.get("trellis"), by_name.get("nginx")
    ratio = trellis.rps / nginx.rps if trellis and nginx and nginx.rps > 0 else None
    return Targets(ratio, trellis.cpu_ms_per_1k if trellis else None)


def cell(value: float | None, fmt: str) -> str:
    """`value` formatted, or "-" when absent."""
    return "-" if value is None else format(value, fmt)


_HEADER = ("scenario", "rps", "p50 ms", "p90 ms", "p99 ms", "cpu ms/1k", "cpu %", "rss MiB")


def format_table(summaries: list[Summary]) -> str:
    """A plain aligned table; runs with errors are marked with "!"."""
    rows = [(*_HEADER, "errors")]
    for s in summaries:
        rows.append(
            (
                s.scenario,
                f"{s.rps:.0f}",
                f"{s.p50_ms:.2f}",
                f"{s.p90_ms:.2f}",
                f"{s.p99_ms:.2f}",
                cell(s.cpu_ms_per_1k, ".1f"),
                cell(s.cpu_percent, ".0f"),
                cell(s.rss_mib, ".1f"),
                f"{s.errors} !" if s.errors else "0",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        first, *rest = zip(row, widths, strict=True)
        cells = [first[0].ljust(first[1]), *(c.rjust(w) for c, w in rest)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_targets(targets: Targets) -> str:
    """Two lines: the rps ratio and the CPU cost against their targets."""

    def verdict(met: bool | None) -> str:
        return "n/a" if met is None else ("met" if met else "MISSED")

    ratio, cpu = targets.trellis_vs_nginx_rps, targets.trellis_cpu_ms_per_1k
    return (
        f"trellis/nginx rps: {cell(ratio, '.2f')} "
        f"(target >= {targets.rps_ratio_target:g}: {verdict(targets.rps_ratio_met)})\n"
        f"trellis CPU ms per 1000 requests: {cell(cpu, '.1f')} "
        f"(target <= {targets.cpu_ms_per_1k_target:g}: {verdict(targets.cpu_met)})"
    )


def _first_line(argv: list[str], cwd: Path) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def machine_info(repo: Path, nginx_version: str) -> dict[str, object]:
    """What the numbers were measured on."""
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    try:
        trellis_version = importlib.metadata.version("trellis")
    except importlib.metadata.PackageNotFoundError:
        trellis_version = "not installed"
    return {
        "nproc": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": nginx_version,
        "wrk": _first_line(["wrk", "-v"], repo).split(" Copyright")[0],
        "trellis": trellis_version,
        "git_commit": _first_line(["git", "rev-parse", "--short", "HEAD"], repo),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
