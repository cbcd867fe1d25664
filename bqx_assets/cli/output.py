"""What every `bqx` command prints last: one JSON object on a line of its own."""

from __future__ import annotations

import json
import sys
from typing import Any


def emit(result: dict[str, Any]) -> None:
    """Print a command's result as its last line: one JSON object."""
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)
