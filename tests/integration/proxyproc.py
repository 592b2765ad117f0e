"""Run `trellis proxy` as a real subprocess and talk to its admin listener."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .bootstrap import Json

READY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class ProxyStartError(AssertionError):
    """The proxy exited or never became ready; carries its stderr."""


def proxy_command(bootstrap_path: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "trellis.cli.main", "proxy", "--bootstrap", str(bootstrap_path)]
    level = os.environ.get("TRELLIS_TEST_PROXY_LOG_LEVEL")
    if level:
        cmd += ["--log-level", level]
    return [*cmd, *extra]


class ProxyProcess:
    """One proxy subprocess: its bootstrap, ports, output files and admin helpers."""

    def __init__(self, config: Json, workdir: Path, name: str = "proxy") -> None:
        self.config = config
        self.workdir = workdir
        self.bootstrap_path = workdir / f"{name}-bootstrap.json"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.admin_port: int = config["admin"]["address"]["socket_address"]["port_value"]
        self.expect_traceback = False
        self.expect_exit = False
        self._proc: subprocess.Popen[bytes] | None = None

    def listener_port(self, name: str) -> int:
        """The port of the bootstrap listener called `name`."""
        for listener in self.config["static_resources"]["listeners"]:
            if listener["name"] == name:
                port: int = listener["address"]["socket_address"]["port_value"]
                return port
        raise KeyError(name)

    # --- lifecycle -----------------------------------------------------------------

    def start(self, *, wait_ready: bool = True) -> ProxyProcess:
        self.bootstrap_path.write_text(json.dumps(self.config, indent=1))
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(
                proxy_command(self.bootstrap_path), stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        if wait_ready:
            self.wait_ready()
        return self

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "proxy not started"
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self, tail: int = 6000) -> str:
        rc = self.proc.poll()
        return f"proxy pid={self.pid} rc={rc}\n--- proxy stderr (tail) ---\n{self.stderr()[-tail:]}"

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProxyStartError(f"proxy exited before ready\n{self.describe()}")
            try:
                status, body = self.admin("GET", "/ready", timeout=1.0)
                if status == 200:
                    return
                last = f"{status} {body[:200]!r}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise ProxyStartError(f"proxy not ready after {timeout}s (last: {last})\n{self.describe()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit status."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.wait()

    def crash_report(self) -> str | None:
        """A reason if the process misbehaved (traceback in stderr), else None."""
        err = self.stderr()
        if "Traceback (most recent call last)" in err and not self.expect_traceback:
            return f"Python traceback in proxy stderr\n{self.describe(12000)}"
        return None

    # --- admin ---------------------------------------------------------------------

    def admin(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", errors="replace")
        finally:
            conn.close()

    def admin_json(self, path: str) -> Any:
        status, body = self.admin("GET", path)
        assert status == 200, f"GET {path} -> {status}: {body[:500]}"
        return json.loads(body)

    def metrics_text(self) -> str:
        status, body = self.admin("GET", "/stats/prometheus")
        assert status == 200, f"/stats/prometheus -> {status}: {body[:500]}"
        return body

    def samples(self) -> list[Sample]:
        text = self.metrics_text()
        out: list[Sample] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.append(Sample(s.name, dict(s.labels), float(s.value)))
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        return metric_sum(self.samples(), name, **labels)


def metric_sum(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def flags_of(samples: list[Sample], name: str, **labels: str) -> dict[str, float]:
    """response_flags value -> summed count, for samples matching `labels`."""
    out: dict[str, float] = {}
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            flag = s.labels.get("response_flags", "")
            out[flag] = out.get(flag, 0.0) + s.value
    return out


def delta(before: list[Sample], after: list[Sample], name: str, **labels: str) -> float:
    """How much a (summed) metric grew between two scrapes."""
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)
