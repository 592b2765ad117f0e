"""The `trellis` console script: `trellis proxy` skips click (see `trellis.proxy.cli`)
and runs optimized: it replaces itself, same PID, with `python -OO -X no_debug_ranges
-m trellis.proxy` (see `trellis.core.proxy_command`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from trellis.core.proxy_command import optimized, proxy_command, runs_optimized


def main() -> None:
    if sys.argv[1:2] == ["proxy"]:
        run_proxy(sys.argv[2:])
    from trellis.cli.main import main as cli_main  # noqa: PLC0415

    cli_main()


def run_proxy(args: Sequence[str]) -> None:
    """Run `trellis proxy ARGS`; does not return."""
    running = runs_optimized(sys.flags.optimize, sys._xoptions)
    if not running and sys.executable and optimized(os.environ):
        python, *rest = proxy_command(sys.executable, os.environ)
        options = [f"-W{option}" for option in sys.warnoptions]
        for key, value in sys._xoptions.items():  # e.g. -X importtime
            options.append(f"-X{key}" if value is True else f"-X{key}={value}")
        os.execv(python, [python, *options, *rest, *args])
    from trellis.proxy.cli import main as proxy_main  # noqa: PLC0415

    sys.exit(proxy_main(args))
