"""The import rule, checked: the core loads no Dagster, nothing uses Dagster internals."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import bqx_assets
from bqx_assets import core

PACKAGE = Path(bqx_assets.__file__).parent


def test_importing_the_whole_core_loads_no_dagster_module() -> None:
    modules = [f"{core.__name__}.{m.name}" for m in pkgutil.iter_modules(core.__path__)]
    assert len(modules) >= 10
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_core_imports_neither_the_dagster_layer_nor_the_cli() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}: {line.strip()}"
        for path in (PACKAGE / "core").rglob("*.py")
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(("import ", "from "))
        and any(t in line for t in ("bqx_assets.defs", "bqx_assets.cli", "bqx_assets.definitions"))
    ]
    assert offenders == []


def test_the_dagster_layer_does_not_import_the_cli() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in [*(PACKAGE / "defs").rglob("*.py"), PACKAGE / "definitions.py"]
        if "bqx_assets.cli" in path.read_text()
    ]
    assert offenders == []


def test_no_module_imports_dagster_internals() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "dagster._" in path.read_text()
    ]
    assert offenders == []
