"""Run wrk and parse its `--latency` report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.MULTILINE)


class WrkError(Exception):
    """wrk failed or printed something we cannot read."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. Latencies are in milliseconds."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx_3xx: int = 0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0

    @property
    def errors(self) -> int:
        """Every failed request or socket error wrk counted."""
        return (
            self.non_2xx_3xx
            + self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
        )


def _to_ms(value: str, unit: str) -> float:
    return round(float(value) * _TIME_UNITS[unit], 6)


def parse_wrk_output(text: str) -> WrkResult:
    """Read requests, rate, latency percentiles and errors from wrk's text report."""
    percentiles = {m.group(1): _to_ms(m.group(2), m.group(3)) for m in _PERCENTILE.finditer(text)}
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    missing = [p for p in ("50", "75", "90", "99") if p not in percentiles]
    if requests is None or rps is None or missing:
        raise WrkError("unexpected wrk output (was --latency given?):\n" + text)
    socket_errors = _SOCKET_ERRORS.search(text)
    connect, read, write, timeout = (
        (int(group) for group in socket_errors.groups()) if socket_errors else (0, 0, 0, 0)
    )
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=_to_ms(requests.group(2), requests.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
    )


def wrk_argv(url: str, *, threads: int, connections: int, duration_s: int) -> list[str]:
    """The wrk command line for one measured run."""
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        url,
    ]


def run_wrk(argv: list[str], timeout_s: float) -> tuple[WrkResult, str]:
    """Run wrk (argv may start with taskset); return the parsed result and the raw text."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise WrkError(f"wrk did not finish within {timeout_s:.0f}s") from error
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-500:]
        raise WrkError(f"wrk exited with {done.returncode}: {output}")
    return parse_wrk_output(done.stdout), done.stdout
