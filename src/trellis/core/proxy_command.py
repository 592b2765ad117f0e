"""How `trellis proxy` is started: `python -OO -X no_debug_ranges -m trellis.proxy ARGS`.

Optimized, the sidecar's modules keep no docstrings, no `assert` statements and
no column positions (tracebacks still name files and lines, without the `^^^`
marks), and it holds ~2 MiB less of its memory budget (DESIGN.md §8; measured
in bench/README.md). The asserts dropped only restate what the code already
ensures for the type checker; none checks input. Set `TRELLIS_PROXY_OPTIMIZE=0`
to run it unoptimized.
"""

from __future__ import annotations

from collections.abc import Mapping

OPTIMIZE_ENV = "TRELLIS_PROXY_OPTIMIZE"
OPTIMIZE_FLAGS = ("-OO", "-X", "no_debug_ranges")


def optimized(environ: Mapping[str, str]) -> bool:
    """Whether the proxy should run optimized (unless `TRELLIS_PROXY_OPTIMIZE=0`)."""
    return environ.get(OPTIMIZE_ENV) != "0"


def runs_optimized(optimize: int, xoptions: Mapping[str, object]) -> bool:
    """Whether an interpreter with these `sys.flags.optimize` and `sys._xoptions` does."""
    return optimize >= 2 and "no_debug_ranges" in xoptions


def proxy_command(python: str, environ: Mapping[str, str]) -> list[str]:
    """The command that runs the proxy with `python`; its arguments follow."""
    flags = list(OPTIMIZE_FLAGS) if optimized(environ) else []
    return [python, *flags, "-m", "trellis.proxy"]
