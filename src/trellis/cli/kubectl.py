"""Running kubectl for `trellis install`: is a cluster reachable, then apply.

Every call has a timeout; kubectl's own diagnostics are passed on in the error,
never the manifests (they may hold the CA's private key).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from trellis.errors import TrellisError

VERSION_TIMEOUT = 30.0
APPLY_TIMEOUT = 300.0
REQUEST_TIMEOUT = "10s"
FIELD_MANAGER = "trellis-install"
_TAIL_LINES = 5


class KubectlError(TrellisError):
    """kubectl is missing, no cluster answers, or an apply failed."""


@dataclass(frozen=True, slots=True)
class Kubectl:
    """One kubectl binary, with the global flags every call gets (`--context`)."""

    path: str
    context: str | None = None

    @classmethod
    def find(cls, name: str, context: str | None = None) -> Kubectl:
        """`name` as given if it holds a `/`, else looked up on PATH."""
        found = name if os.sep in name else shutil.which(name)
        if found is None or not os.access(found, os.X_OK):
            raise KubectlError(
                f"--kubectl: {name!r} was not found or is not executable; install kubectl, "
                "or print the manifests with `trellis install --render`"
            )
        return cls(found, context)

    def command(self, *args: str) -> list[str]:
        """The full command line for `kubectl ARGS`."""
        context = ["--context", self.context] if self.context else []
        return [self.path, *context, "--request-timeout", REQUEST_TIMEOUT, *args]

    def server_version(self) -> tuple[int, int]:
        """(major, minor) of the API server; KubectlError when none is reachable."""
        done = self._run(self.command("version", "--output", "json"), None, VERSION_TIMEOUT)
        if done.returncode != 0:
            raise KubectlError(
                "no Kubernetes cluster is reachable with kubectl "
                f"({_tail(done.stderr) or 'exit status ' + str(done.returncode)}); check the "
                "kubeconfig or --context, or print the manifests with `trellis install --render`"
            )
        return parse_server_version(done.stdout)

    def apply(self, manifests: str) -> str:
        """`kubectl apply --server-side -f -` with `manifests` on stdin; kubectl's output."""
        command = self.command(
            "apply", "--server-side", "--field-manager", FIELD_MANAGER, "--filename", "-"
        )
        done = self._run(command, manifests, APPLY_TIMEOUT)
        if done.returncode != 0:
            raise KubectlError(
                f"kubectl apply failed (exit status {done.returncode}): "
                f"{_tail(done.stderr) or _tail(done.stdout)}"
            )
        return done.stdout

    @staticmethod
    def _run(
        command: Sequence[str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                command,
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise KubectlError(f"{command[0]} did not finish within {timeout:g}s") from None
        except OSError as exc:
            raise KubectlError(f"cannot run {command[0]}: {exc.strerror or exc}") from None


def parse_server_version(text: str) -> tuple[int, int]:
    """(major, minor) from `kubectl version -o json` ("minor": "29+" on some clusters)."""
    try:
        server = json.loads(text)["serverVersion"]
        major = int(str(server["major"]).rstrip("+"))
        minor = int(str(server["minor"]).rstrip("+"))
    except (ValueError, KeyError, TypeError):
        raise KubectlError(
            "kubectl version printed no server version; is a cluster reachable?"
        ) from None
    return major, minor


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-_TAIL_LINES:])
