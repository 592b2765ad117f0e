"""`make demo`: the shop on the Trellis mesh, with a live table of every edge.

    python examples/shop/demo.py [--duration S] [--users N] [--capture MODE]   (or DURATION=S)

1. starts `trellis control-plane` (temporary data directory, free loopback ports);
2. applies examples/shop/mesh.yaml: STRICT mTLS, the 90/10 payment canary with
   retries, the policies;
3. starts db, catalog, cart, payment v1 and v2 and web with `trellis run` and
   waits until all are registered, serving and in sync. Capture is transparent
   when it can be (root on Linux: each program in a network namespace of its
   own, its TCP sent to its sidecar by iptables), else explicit (each program
   gets HTTP_PROXY pointing at its sidecar); the first line says which and why;
4. runs the shopper as a mesh workload too (`trellis run --name shopper`);
5. shows a table per edge every 2 s from the sidecars' /stats/prometheus;
6. after a third of the run, makes payment v1 fail 20% of payments: the
   retries keep checkouts succeeding while the web → payment-v1 edge shows
   the failures;
7. runs until Ctrl-C or the duration, stops everything in reverse order and
   prints the shopper's summary and the table of the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from meshrun import (
    MESH_YAML,
    ControlPlane,
    Launcher,
    ShopError,
    admin_addresses,
    clean_environment,
    scrape,
    set_faults,
    shopper,
    start_shop,
    still_running,
    tail,
    wait_serving,
)
from meshstats import Snapshot, caller_window, snapshot, window
from meshview import Faults, Screen, canary_line, clock, edge_table
from rich.console import Console
from rich.live import Live
from rich.text import Text

from trellis.platform.netns import transparent_unavailable

EXPLICIT_NOTE = (
    "capture: explicit (each program's HTTP_PROXY is its sidecar; peers reach it through its "
    "sidecar's inbound port)"
)
TRANSPARENT_NOTE = (
    "capture: transparent (each program in a network namespace of its own on bridge trellis0; "
    "service names resolve to virtual IPs and iptables sends its TCP to its sidecar)"
)
LOG_EVERY = 10.0
"""Without a terminal (a log), the screen is printed this often instead of redrawn."""
START_TIMEOUT = 90.0
SHOPPER_GRACE = 20.0
UNBOUNDED = 86_400.0
_PROGRESS = re.compile(r"shopper: (\d+) s, (\d+) requests, (\d+) paid")


@dataclass(frozen=True, slots=True)
class Options:
    duration: float | None
    users: int
    refresh: float
    faults_after: float
    fail_rate: float
    keep_logs: bool
    capture: str


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description="The shop on the Trellis mesh, live.")
    parser.add_argument(
        "--duration", type=float, default=None,
        help="seconds of traffic (default: $DURATION, else until Ctrl-C)",
    )  # fmt: skip
    parser.add_argument("--users", type=int, default=5, help="simulated shoppers (default 5)")
    parser.add_argument("--refresh", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument(
        "--faults-after", type=float, default=None,
        help="when payment v1 starts failing (default: a third of the duration, else 20 s)",
    )  # fmt: skip
    parser.add_argument("--fail-rate", type=float, default=0.2, help="payment v1's failures")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs directory")
    parser.add_argument(
        "--capture", choices=("auto", "explicit", "transparent"), default="auto",
        help="how programs reach their sidecars (default: transparent when root on Linux)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    duration = args.duration
    if duration is None and os.environ.get("DURATION"):
        try:
            duration = float(os.environ["DURATION"])
        except ValueError:
            parser.error(f"DURATION must be a number of seconds, not {os.environ['DURATION']!r}")
    if duration is not None and not 1 <= duration <= UNBOUNDED:
        parser.error("the duration must be 1-86400 seconds")
    if not 1 <= args.users <= 50 or not 0.5 <= args.refresh <= 60:
        parser.error("--users must be 1-50 and --refresh 0.5-60 seconds")
    if not 0 <= args.fail_rate <= 1:
        parser.error("--fail-rate must be 0-1")
    faults_after = args.faults_after
    if faults_after is None:
        faults_after = duration / 3 if duration else 20.0
    return Options(
        duration,
        args.users,
        args.refresh,
        faults_after,
        args.fail_rate,
        args.keep_logs,
        args.capture,
    )


def choose_capture(asked: str) -> tuple[str, str]:
    """The capture mode to run with, and a line that says which and why."""
    why_not = transparent_unavailable() if asked != "explicit" else None
    if asked == "explicit":
        return "explicit", f"{EXPLICIT_NOTE}; asked for"
    if why_not is None:
        return "transparent", TRANSPARENT_NOTE
    if asked == "transparent":
        raise ShopError(why_not)
    return "explicit", f"{EXPLICIT_NOTE}; not transparent: {why_not}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _trellis_command() -> str:
    """How the user can type `trellis` here: the venv's script, relative when it can be."""
    script = Path(sys.executable).parent / "trellis"
    if not script.exists():
        return "trellis"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


class Demo:
    """One run of the demo: what it started, what it saw."""

    def __init__(self, options: Options, console: Console, work: Path, capture: str) -> None:
        self.options = options
        self.capture = capture
        self.console = console
        self.logs = work / "logs"
        self.logs.mkdir()
        self.env = clean_environment(os.environ)
        self.plane = ControlPlane(
            work / "control-plane-data", self.logs / "control-plane.log", self.env
        )
        self.services: list[Launcher] = []
        self.shopper: Launcher | None = None
        self.started = 0.0
        self.faults: tuple[float, int, Snapshot] | None = None

    def say(self, step: str, text: str) -> None:
        self.console.print(Text.assemble((f"[{step}] ", "bold"), text))

    def start(self) -> None:
        began = time.monotonic()
        self.plane.start()
        self.say(
            "1/5",
            f"control plane on {self.plane.server} (xDS {self.plane.xds}), temporary data",
        )
        applied = self.plane.apply(MESH_YAML, force=True)  # the services register in step 3
        names = ", ".join(f"{r['kind']} {r['namespace']}/{r['name']}" for r in applied)
        self.say("2/5", f"applied {MESH_YAML.name}: {names}")
        self.services = start_shop(self.plane, self.logs, self.env, self.capture)
        wait_serving(self.plane, self.services, START_TIMEOUT)
        self.say(
            "3/5",
            f"{', '.join(s.name for s in self.services)} run with `trellis run` in namespace shop: "
            f"registered, serving, every sidecar in sync ({time.monotonic() - began:.1f} s so far)",
        )
        self.say("4/5", self._policy_check())
        duration = self.options.duration or UNBOUNDED
        args = ["--users", str(self.options.users), "--duration", f"{duration:g}"]
        args += ["--progress", "2"]
        self.shopper = Launcher(
            self.plane, shopper(*args), self.logs, self.env, self.capture
        ).start()
        deadline = time.monotonic() + 30
        while self.shopper.sidecar() is None:
            if not self.shopper.running or time.monotonic() > deadline:
                raise ShopError(f"the shopper did not start:\n{self.shopper.describe()}")
            time.sleep(0.1)
        self.started = time.monotonic()
        until = f"for {duration:g} s" if self.options.duration else "until Ctrl-C"
        self.say("5/5", f"shopper: {self.options.users} users through its own sidecar, {until}")

    def _policy_check(self) -> str:
        """web → db through web's own sidecar: the AuthorizationPolicy db-only-from-cart says no."""
        web = self._service("web").sidecar()
        assert web is not None
        status, body = web.send("http://db/carts")
        if status != 403:
            return f"policy check: web → http://db/carts answered {status} (expected 403!)"
        return (
            f"policy check: web → http://db/carts through web's sidecar: {status} "
            f"{body.decode(errors='replace').strip()!r} (only cart may call db)"
        )

    def _service(self, name: str) -> Launcher:
        return next(s for s in self.services if s.name == name)

    def take_snapshot(self) -> Snapshot:
        return snapshot(scrape(admin_addresses(self.plane).values()), time.monotonic())

    def screen(self, before: Snapshot | None, after: Snapshot) -> Screen:
        elapsed = after.taken - self.started
        planned = f" / {clock(self.options.duration)}" if self.options.duration else ""
        found = (
            _PROGRESS.findall(self.shopper.log.read_text(errors="replace")) if self.shopper else []
        )
        shopped = f"{found[-1][1]} requests, {found[-1][2]} paid" if found else "starting"
        coming = ""
        if self.faults is None:
            coming = f" · payment-v1 starts failing at {clock(self.options.faults_after)}"
        progress = Text.assemble(
            ("elapsed ", "bold"), f"{clock(elapsed)}{planned} · ", ("shopper ", "bold"), shopped,
            coming, " · Ctrl-C to stop" if not self.options.duration else "",
        )  # fmt: skip
        return Screen(
            header=[Text(f"Trellis: the shop on the mesh · capture: {self.capture_label}", "bold")],
            progress=progress,
            current=window(before, after) if before is not None else {},
            total=window(Snapshot(self.started), after),
            refresh=self.options.refresh,
            faults=self.faults_view(after),
            next_steps=self.next_steps(),
        )

    @property
    def capture_label(self) -> str:
        if self.capture == "transparent":
            return "transparent (network namespaces, iptables)"
        return "explicit (HTTP_PROXY)"

    def faults_view(self, after: Snapshot) -> Faults | None:
        """The faults, and what the mesh made of them up to `after`."""
        if self.faults is None:
            return None
        since, port, at = self.faults
        seen = window(at, after)
        at_v1 = next((s for e, s in seen.items() if e.destination == "payment-v1"), None)
        callers = caller_window(at, after, "web", "payment")
        return Faults(since - self.started, self.options.fail_rate, port, callers, at_v1)

    def next_steps(self) -> list[str]:
        cli, server = _trellis_command(), self.plane.server
        web = self._service("web").sidecar()
        admin = web.admin if web else "WEB_ADMIN"
        return [
            f"dashboard: {server}/dashboard   (service graph, golden signals, traces, config)",
            f"{cli} top -n shop -s {server}   (live per-edge table)",
            f"{cli} proxy-status -s {server}",
            f"{cli} get virtualservices,destinationrules,authorizationpolicies -n shop -s {server}",
            f"{cli} proxy-config web.shop routes -s {server}   (or listeners, clusters, ...)",
            f"curl -s http://{admin}/stats/prometheus | grep ^istio_requests   (web's sidecar)",
            f"logs: {self.logs}",
        ]

    def inject_faults(self) -> None:
        payment = self._service("payment-v1").sidecar()
        assert payment is not None
        at = self.take_snapshot()
        set_faults(payment, self.options.fail_rate)
        self.faults = (at.taken, payment.app, at)

    def loop(self) -> None:
        """Refresh until the shopper ends (the duration) or Ctrl-C."""
        live = Live(console=self.console, auto_refresh=False) if self.console.is_terminal else None
        previous: Snapshot | None = None
        printed = self.started
        with live or contextlib.nullcontext():
            for _ in range(int(UNBOUNDED * 10)):
                now = time.monotonic()
                if self.faults is None and now - self.started >= self.options.faults_after:
                    self.inject_faults()
                current = self.take_snapshot()
                rendered = self.screen(previous, current).render()
                if live is not None:
                    live.update(rendered, refresh=True)
                elif now - printed >= LOG_EVERY:
                    self.console.print(rendered)
                    printed = now
                previous = current
                if self.shopper is None or not self.shopper.running:
                    return
                time.sleep(max(0.0, self.options.refresh - (time.monotonic() - now)))

    def finish_shopper(self, interrupted: bool) -> bool:
        """Let the shopper end: by itself at its deadline, or on SIGINT (after a Ctrl-C), which
        its launcher passes on; either way it prints its summary. False if it failed."""
        if self.shopper is None or self.shopper.proc is None:
            return True
        if interrupted:
            self.shopper.send(signal.SIGINT)
        try:
            self.shopper.proc.wait(SHOPPER_GRACE)
        except subprocess.TimeoutExpired:
            self.shopper.stop(signal.SIGTERM, 10)
        status = self.shopper.proc.returncode
        if status != 0:
            self.console.print(f"the shopper ended with status {status}:")
            self.console.print(self.shopper.describe(), markup=False, highlight=False)
        return status == 0

    def stop(self) -> list[int]:
        """Stop the services in reverse order, then the control plane; the pids left running."""
        launchers = list(reversed(self.services))
        everyone = [*launchers, self.shopper] if self.shopper else launchers
        pids = [pid for launcher in everyone for pid in launcher.pids()]
        if self.plane.proc is not None:
            pids.append(self.plane.proc.pid)
        stopped = []
        if self.shopper is not None and self.shopper.proc is not None:
            stopped.append(f"shopper ({self.shopper.proc.returncode})")
        try:
            for launcher in launchers:
                status = launcher.stop()
                stopped.append(f"{launcher.name} ({status})")
            self.plane.stop()
            stopped.append(
                f"control plane ({self.plane.proc.returncode if self.plane.proc else '-'})"
            )
        except KeyboardInterrupt:
            self.console.print("interrupted again: killing what is left", style="red")
            for launcher in launchers:
                if launcher.running and launcher.proc is not None:
                    launcher.proc.kill()
            if self.plane.proc is not None and self.plane.proc.poll() is None:
                self.plane.proc.kill()
        self.console.print(f"stopped, in this order (exit status): {', '.join(stopped)}")
        deadline = time.monotonic() + 5
        while still_running(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = still_running(pids)
        if not left:
            self.console.print(
                f"no process left behind: all {len(pids)} ended (launchers, sidecars, "
                "programs, control plane)"
            )
        return left


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=130)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT: even if ignored
        signal.signal(signum, _interrupt)
    try:
        capture, note = choose_capture(options.capture)
    except ShopError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 1
    work = Path(tempfile.mkdtemp(prefix="trellis-shop-"))
    demo = Demo(options, console, work, capture)
    console.print(Text("Trellis: the shop on the mesh", style="bold"))
    console.print(note, style="dim")
    failed = interrupted = False
    try:
        demo.start()
        demo.loop()
    except KeyboardInterrupt:
        interrupted = True
        console.print("stopping...")
    except ShopError as exc:
        failed = True
        console.print(f"error: {exc}", style="red", markup=False)
    final = None
    try:
        failed = not demo.finish_shopper(interrupted) or failed
        if demo.started and not failed:
            final = demo.take_snapshot()
    except KeyboardInterrupt:
        interrupted = True
    left = demo.stop()
    summary = tail(demo.shopper.out, 40) if demo.shopper else ""
    if summary.strip():
        console.print(Text("\nshopper's summary:", style="bold"))
        console.print(summary, markup=False, highlight=False)
    if final is not None:
        total = window(Snapshot(demo.started), final)
        title = f"the whole run ({clock(final.taken - demo.started)} of traffic)"
        console.print(edge_table(None, total, title))
        console.print(canary_line(total))
        faults = demo.faults_view(final)
        for line in faults.lines() if faults else []:
            console.print(line)
    if left:
        console.print(f"still running after the stop: pids {left}", style="red")
    shutil.rmtree(work / "control-plane-data", ignore_errors=True)
    if failed or left or options.keep_logs:
        console.print(f"logs kept in {demo.logs}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
