"""The CLI's config and proxy-status commands must not slow down or bloat `trellis proxy`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = (
    "rich", "httpx", "fastapi", "starlette", "pydantic", "uvicorn", "yaml",
    "trellis.api", "trellis.controlplane",
)  # fmt: skip

PROBE = """
import json, sys
from trellis.cli.main import cli
try:
    cli(["proxy", "--help"])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def test_proxy_command_does_not_import_cli_dependencies() -> None:
    # In this process: an optimized `trellis proxy` would replace it (see trellis.cli.entry).
    environ = {**os.environ, "TRELLIS_PROXY_OPTIMIZE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=environ,
    )
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = [name for name in modules if name.split(".")[0] in HEAVY or name.startswith(HEAVY)]
    assert loaded == []
    assert "trellis.cli.config_commands" in modules  # registered, so imported, but light
