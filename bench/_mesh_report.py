"""Mesh benchmark results: runs, medians, latency added by the sidecars, goals, tables."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from _report import cell
from _wrk import WrkResult

SIDECARS = ("client", "server")
PHASES = ("max", "rate")  # closed-loop saturation; paced at a fixed rate
DIRECT = "direct"
MTLS = "sidecars"

GOAL_CPU_MS_PER_1K = 100.0  # per sidecar: 0.10 vCPU per 1000 rps
GOAL_ADDED_P90_MS = 0.5
GOAL_ADDED_P99_MS = 1.0
GOAL_RSS_MIB = 40.0
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SidecarSample:
    """One sidecar over one run: CPU used during the run, and memory after it."""

    name: str
    cpu_ms: float
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class MeshRun:
    """One wrk run against one scenario in one phase; `sidecars` is empty for `direct`."""

    scenario: str
    phase: str
    round: int
    wrk: WrkResult
    sidecars: tuple[SidecarSample, ...]

    def cpu_ms_per_1k(self, sidecar: str) -> float | None:
        """CPU milliseconds the named sidecar spent per 1000 requests."""
        for sample in self.sidecars:
            if sample.name == sidecar and self.wrk.requests > 0:
                return sample.cpu_ms / self.wrk.requests * 1000.0
        return None

    def cpu_percent(self, sidecar: str) -> float | None:
        """The named sidecar's CPU time as a share of one core over the run."""
        for sample in self.sidecars:
            if sample.name == sidecar and self.wrk.duration_s > 0:
                return sample.cpu_ms / (self.wrk.duration_s * 1000.0) * 100.0
        return None

    def rss_mib(self, sidecar: str) -> float | None:
        for sample in self.sidecars:
            if sample.name == sidecar:
                return sample.rss_bytes / _MIB
        return None


@dataclass(frozen=True, slots=True)
class SidecarSummary:
    """Medians over the rounds for one sidecar; `rss_max_mib` is the largest after any run."""

    name: str
    cpu_ms_per_1k: float
    cpu_percent: float
    rss_mib: float
    rss_max_mib: float


@dataclass(frozen=True, slots=True)
class MeshSummary:
    """Medians over the rounds of one scenario in one phase; `errors` is the total."""

    scenario: str
    phase: str
    runs: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    rps_by_round: tuple[float, ...]
    sidecars: tuple[SidecarSummary, ...]

    def sidecar(self, name: str) -> SidecarSummary | None:
        return next((s for s in self.sidecars if s.name == name), None)


@dataclass(frozen=True, slots=True)
class AddedLatency:
    """Latency a scenario adds over `direct` at the fixed rate: median of per-round differences."""

    scenario: str
    rounds: int
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class Goals:
    """DESIGN.md section 8 budgets, judged on the mTLS pair (`sidecars`); None = not measured."""

    cpu_ms_per_1k: dict[str, float]  # per sidecar, at the fixed rate
    added: AddedLatency | None
    rss_max_mib: dict[str, float]  # per sidecar, largest after any run
    cpu_target: float = GOAL_CPU_MS_PER_1K
    p90_target: float = GOAL_ADDED_P90_MS
    p99_target: float = GOAL_ADDED_P99_MS
    rss_target: float = GOAL_RSS_MIB

    def verdicts(self) -> dict[str, bool | None]:
        """Each goal: met (True), missed (False) or not measured (None)."""
        cpu = self.cpu_ms_per_1k
        rss = self.rss_max_mib
        added = self.added
        return {
            "cpu": max(cpu.values()) <= self.cpu_target if cpu else None,
            "p90": None if added is None else added.p90_ms <= self.p90_target,
            "p99": None if added is None else added.p99_ms <= self.p99_target,
            "rss": max(rss.values()) <= self.rss_target if rss else None,
        }

    @property
    def missed(self) -> bool:
        return any(v is False for v in self.verdicts().values())


def summarize(scenario: str, phase: str, runs: Sequence[MeshRun]) -> MeshSummary:
    """Medians of one scenario's runs in one phase (which must not be empty)."""
    sidecars = []
    for name in SIDECARS:
        cpu = [v for r in runs if (v := r.cpu_ms_per_1k(name)) is not None]
        pct = [v for r in runs if (v := r.cpu_percent(name)) is not None]
        rss = [v for r in runs if (v := r.rss_mib(name)) is not None]
        if cpu and pct and rss:
            sidecars.append(
                SidecarSummary(
                    name,
                    cpu_ms_per_1k=statistics.median(cpu),
                    cpu_percent=statistics.median(pct),
                    rss_mib=statistics.median(rss),
                    rss_max_mib=max(rss),
                )
            )
    return MeshSummary(
        scenario=scenario,
        phase=phase,
        runs=len(runs),
        rps=statistics.median(r.wrk.rps for r in runs),
        p50_ms=statistics.median(r.wrk.p50_ms for r in runs),
        p90_ms=statistics.median(r.wrk.p90_ms for r in runs),
        p99_ms=statistics.median(r.wrk.p99_ms for r in runs),
        errors=sum(r.wrk.errors for r in runs),
        rps_by_round=tuple(r.wrk.rps for r in runs),
        sidecars=tuple(sidecars),
    )


def summarize_all(runs: Sequence[MeshRun], scenarios: Sequence[str]) -> list[MeshSummary]:
    """One summary per (phase, scenario) that has runs, phases first, in the given order."""
    summaries = []
    for phase in PHASES:
        for scenario in scenarios:
            mine = [r for r in runs if r.phase == phase and r.scenario == scenario]
            if mine:
                summaries.append(summarize(scenario, phase, mine))
    return summaries


def added_latency(runs: Sequence[MeshRun], scenario: str) -> AddedLatency | None:
    """`scenario` minus `direct` at the fixed rate, paired by round (both ran back to back)."""
    direct = {r.round: r.wrk for r in runs if r.phase == "rate" and r.scenario == DIRECT}
    mine = {r.round: r.wrk for r in runs if r.phase == "rate" and r.scenario == scenario}
    rounds = sorted(direct.keys() & mine.keys())
    if not rounds:
        return None

    def median_diff(pick: Callable[[WrkResult], float]) -> float:
        return round(statistics.median(pick(mine[n]) - pick(direct[n]) for n in rounds), 6)

    return AddedLatency(
        scenario,
        len(rounds),
        p50_ms=median_diff(lambda w: w.p50_ms),
        p90_ms=median_diff(lambda w: w.p90_ms),
        p99_ms=median_diff(lambda w: w.p99_ms),
    )


def evaluate(summaries: Sequence[MeshSummary], added: AddedLatency | None) -> Goals:
    """Judge the mTLS pair against the budgets."""
    paced = next((s for s in summaries if s.scenario == MTLS and s.phase == "rate"), None)
    cpu = {s.name: s.cpu_ms_per_1k for s in paced.sidecars} if paced else {}
    rss: dict[str, float] = {}
    for summary in summaries:
        if summary.scenario != MTLS:
            continue
        for sidecar in summary.sidecars:
            rss[sidecar.name] = max(rss.get(sidecar.name, 0.0), sidecar.rss_max_mib)
    return Goals(cpu_ms_per_1k=cpu, added=added if added and added.scenario == MTLS else None,
                 rss_max_mib=rss)  # fmt: skip


def render(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An aligned plain-text table, header first; the first `left` columns are left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_HEADER = ("phase", "scenario", "rps", "p50 ms", "p90 ms", "p99 ms")
_SIDECAR_HEADER = ("cli ms/1k", "srv ms/1k", "cli %", "srv %", "cli MiB", "srv MiB", "errors")


def format_table(summaries: Sequence[MeshSummary]) -> str:
    """One row per phase and scenario; runs with errors are marked with "!"."""
    rows: list[tuple[str, ...]] = [(*_HEADER, *_SIDECAR_HEADER)]
    for s in summaries:
        client, server = s.sidecar("client"), s.sidecar("server")
        rows.append(
            (
                s.phase,
                s.scenario,
                f"{s.rps:.0f}",
                f"{s.p50_ms:.3f}",
                f"{s.p90_ms:.3f}",
                f"{s.p99_ms:.3f}",
                cell(client.cpu_ms_per_1k if client else None, ".1f"),
                cell(server.cpu_ms_per_1k if server else None, ".1f"),
                cell(client.cpu_percent if client else None, ".0f"),
                cell(server.cpu_percent if server else None, ".0f"),
                cell(client.rss_mib if client else None, ".1f"),
                cell(server.rss_mib if server else None, ".1f"),
                f"{s.errors} !" if s.errors else "0",
            )
        )
    return render(rows, left=2)


def format_added(added: Sequence[AddedLatency], rate_rps: dict[str, float]) -> str:
    """Added latency at the fixed rate, one row per scenario through sidecars."""
    rows: list[tuple[str, ...]] = [("scenario", "rate rps", "+p50 ms", "+p90 ms", "+p99 ms")]
    for a in added:
        rows.append(
            (
                a.scenario,
                cell(rate_rps.get(a.scenario), ".0f"),
                f"{a.p50_ms:+.3f}",
                f"{a.p90_ms:+.3f}",
                f"{a.p99_ms:+.3f}",
            )
        )
    return render(rows)


def format_goals(goals: Goals) -> str:
    """One line per budget, with the measured value and the verdict."""

    def verdict(met: bool | None) -> str:
        return "n/a" if met is None else ("met" if met else "MISSED")

    def per_sidecar(values: dict[str, float], fmt: str) -> str:
        return ", ".join(f"{k} {format(v, fmt)}" for k, v in values.items()) or "-"

    v = goals.verdicts()
    added = goals.added
    return "\n".join(
        [
            f"CPU ms per 1000 requests per sidecar at the fixed rate: "
            f"{per_sidecar(goals.cpu_ms_per_1k, '.1f')} "
            f"(goal <= {goals.cpu_target:g}: {verdict(v['cpu'])})",
            f"added p90 at the fixed rate: {cell(added.p90_ms if added else None, '.3f')} ms "
            f"(goal <= {goals.p90_target:g} ms: {verdict(v['p90'])})",
            f"added p99 at the fixed rate: {cell(added.p99_ms if added else None, '.3f')} ms "
            f"(goal <= {goals.p99_target:g} ms: {verdict(v['p99'])})",
            f"RSS per sidecar, largest after any run: {per_sidecar(goals.rss_max_mib, '.1f')} MiB "
            f"(goal <= {goals.rss_target:g} MiB: {verdict(v['rss'])})",
        ]
    )
