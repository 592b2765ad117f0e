"""The `trellis` console script: `trellis proxy` skips click (see `trellis.proxy.cli`)."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["proxy"]:
        from trellis.proxy.cli import main as proxy_main  # noqa: PLC0415

        sys.exit(proxy_main(sys.argv[2:]))
    from trellis.cli.main import main as cli_main  # noqa: PLC0415

    cli_main()
