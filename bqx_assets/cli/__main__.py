"""`python -m bqx_assets.cli`: the `bqx` command without its script."""

import sys

from bqx_assets.cli import main

sys.exit(main())
