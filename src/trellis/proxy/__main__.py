"""`python -m trellis.proxy ARGS`: what `trellis proxy ARGS` runs (see `trellis.cli.entry`)."""

import sys

from trellis.proxy.cli import main

sys.exit(main(sys.argv[1:]))
