"""`LaunchSettings`: everything `trellis run` was told, for `trellis.platform.launcher`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trellis.core.proxy_command import proxy_command
from trellis.platform.netns import NetworkSettings
from trellis.platform.spec import WorkloadSpec


@dataclass(frozen=True, slots=True)
class LaunchSettings:
    """Everything `trellis run` was told."""

    workload: WorkloadSpec
    command: tuple[str, ...]
    server: str = "http://127.0.0.1:8080"
    token: str | None = None
    xds: str = "127.0.0.1:15010"
    ready_timeout: float = 30.0
    """Bound on the sidecar's start (its certificate, first config, listeners)."""
    stop_timeout: float = 10.0
    """How long the application gets after SIGTERM before SIGKILL (when the launcher stops it)."""
    drain_time: float = 5.0
    """The sidecar's drain bound on SIGTERM (`trellis proxy --drain-time-s`)."""
    sidecar_log: Path | None = None
    """Keep the sidecar's log here (default: in the run directory, removed at the end)."""
    sidecar_log_level: str = "info"
    token_ttl_seconds: int = 3600
    """Lifetime of each join token; a new one is written at half-life."""
    proxy_command: tuple[str, ...] = field(
        default_factory=lambda: tuple(proxy_command(sys.executable, os.environ))
    )
    """The command (before the arguments) that runs `trellis proxy`."""
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    runtime_dir: Path | None = None
    """The per-user base directory (default: `paths.runtime_base`)."""
    capture: str = "explicit"
    """`explicit` (HTTP_PROXY) or `transparent` (a network namespace and iptables)."""
    network: NetworkSettings | None = None
    """Transparent capture: the bridge, subnet and rules (default: from the environment,
    `NetworkSettings.from_environ`)."""
