"""The command-line options the wrk benchmarks share (proxy_bench, mesh_bench)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class CommonOptions:
    """What every wrk benchmark takes; each script's `Options` adds its own fields."""

    rounds: int
    duration_s: int
    warmup_s: int
    connections: int
    body_size: int
    scenarios: tuple[str, ...]
    proxy_cpus: str
    load_cpus: str
    pin: bool
    json_out: Path | None
    log_level: str
    check: bool


def add_common(parser: argparse.ArgumentParser, scenarios: Sequence[str], result: str) -> None:
    """Rounds, durations, load shape, pinning, output; `result` names the JSON file."""
    add = parser.add_argument
    add("--rounds", type=int, default=3, help="interleaved rounds per scenario (3)")
    add("--duration", type=int, default=10, help="seconds per measured run (10)")
    add("--warmup", type=int, default=2, help="unmeasured warm-up seconds per scenario (2)")
    add("--connections", type=int, default=50, help="wrk connections (50)")
    add("--body-size", type=int, default=1024, help="upstream response body bytes (1024)")
    add("--scenarios", default=",".join(scenarios), help="comma-separated subset")
    add("--proxy-cpus", default="1", help="taskset CPU list for the proxies under test (1)")
    add("--load-cpus", default="0", help="taskset CPU list for wrk and the upstream (0)")
    add("--no-pin", action="store_true", help="do not pin processes to CPUs")
    add("--json-out", type=Path, help=f"JSON file (default bench/results/{result}-<UTC>.json)")
    add("--log-level", default="warning", help="trellis proxy --log-level (warning)")
    add("--check", action="store_true", help="exit 1 when a goal is missed")
    add("--quick", action="store_true", help="smoke run: 1 round of 2 s, 1 s warm-up")


def common_values(
    parser: argparse.ArgumentParser, args: argparse.Namespace, scenarios: Sequence[str]
) -> dict[str, Any]:
    """The validated shared options, as keyword arguments of an `Options` dataclass;
    scenarios keep their canonical order."""
    chosen = tuple(s for s in args.scenarios.split(",") if s)
    unknown = [s for s in chosen if s not in scenarios]
    if unknown or not chosen:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(scenarios)}")
    if min(args.rounds, args.connections, args.body_size) < 1:
        parser.error("--rounds, --connections and --body-size must be >= 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    return {
        "rounds": 1 if args.quick else args.rounds,
        "duration_s": 2 if args.quick else args.duration,
        "warmup_s": 1 if args.quick else args.warmup,
        "connections": args.connections,
        "body_size": args.body_size,
        "scenarios": tuple(s for s in scenarios if s in chosen),
        "proxy_cpus": args.proxy_cpus,
        "load_cpus": args.load_cpus,
        "pin": not args.no_pin,
        "json_out": args.json_out,
        "log_level": args.log_level,
        "check": args.check,
    }
