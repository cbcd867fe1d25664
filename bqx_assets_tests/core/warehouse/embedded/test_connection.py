"""The embedded warehouse's connections: bounded memory and threads, a wait for a lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.warehouse.embedded import (
    EmbeddedWarehouse,
)
from bqx_assets_tests.conftest import Warehouses


def test_every_connection_has_bounded_memory_and_threads(mini_warehouse: Path) -> None:
    wh = EmbeddedWarehouse(mini_warehouse)
    limit, threads = (
        wh._cursor()
        .execute("SELECT current_setting('memory_limit'), current_setting('threads')")
        .fetchone()
    )
    number, unit = limit.split()
    assert float(number) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit] <= 2**30
    assert int(threads) <= 2


_HOLD = """
import sys, time
from bqx_assets.core.warehouse.embedded import connect
con = connect(sys.argv[1], read_only=sys.argv[2] == "ro")
print("held", flush=True)
time.sleep(float(sys.argv[3]))
con.close()
"""


def _holder(path: Path, mode: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), mode, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_an_append_waits_for_a_run_holding_the_file_or_fails_naming_it(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    """DuckDB lets one process write a file or many read it, never both: an append (as `bqx
    warehouse append` opens it) while another process reads waits for the file, then appends;
    past its wait it fails naming the file and the lock, having changed nothing."""
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=50)
    run = _holder(path, "ro", 30)
    try:
        with pytest.raises(
            WarehouseError, match=r"cannot open embedded warehouse .*w\.duckdb.*lock"
        ):
            EmbeddedWarehouse(path, read_only=False, lock_wait=0.3)
    finally:
        run.kill()
        run.wait()
    run = _holder(path, "ro", 0.5)
    try:
        wh = EmbeddedWarehouse(path, read_only=False, lock_wait=30)
        wh.append(10)
        wh.close()
    finally:
        run.wait()
    assert EmbeddedWarehouse(path).state(small.features_dataset, "agg_eurusd").rows == 60
