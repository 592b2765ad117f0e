"""How `trellis proxy` is started: `python -OO -m trellis.proxy ARGS`.

Optimized, the sidecar's modules keep neither docstrings nor `assert`
statements, and it holds ~1.5 MiB less of its memory budget (DESIGN.md §8;
measured in bench/README.md). The asserts dropped only restate what the code
already ensures for the type checker; none checks input. Set
`TRELLIS_PROXY_OPTIMIZE=0` to run it unoptimized.
"""

from __future__ import annotations

from collections.abc import Mapping

OPTIMIZE_ENV = "TRELLIS_PROXY_OPTIMIZE"
OPTIMIZE_FLAG = "-OO"


def optimized(environ: Mapping[str, str]) -> bool:
    """Whether the proxy should run optimized (unless `TRELLIS_PROXY_OPTIMIZE=0`)."""
    return environ.get(OPTIMIZE_ENV) != "0"


def proxy_command(python: str, environ: Mapping[str, str]) -> list[str]:
    """The command that runs the proxy with `python`; its arguments follow."""
    flags = [OPTIMIZE_FLAG] if optimized(environ) else []
    return [python, *flags, "-m", "trellis.proxy"]
