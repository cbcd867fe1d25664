"""Subcommands of `bqx`: each module has `register(subparsers)` that adds one command."""

from __future__ import annotations

import json
import sys
from typing import Any


def emit(result: dict[str, Any]) -> None:
    """Print a command's result as its last line: one JSON object."""
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)
