"""`bqx demo` end to end: killed mid-way with SIGKILL, resumed, same training file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.gate.validation import CHECK_NAMES
from bqx_assets.core.warehouse.embedded import create_warehouse
from bqx_assets.core.warehouse.synthetic import DEFAULT_START, ETF_OPEN
from bqx_assets_tests.emulators import gcs as gcs_fixtures

gcs_emulator = gcs_fixtures.gcs_emulator
gcs_bucket = gcs_fixtures.gcs_bucket

ROOT = Path(__file__).resolve().parents[1]
ROWS = 300
"""Enough minutes that each target's null head and tail (a minute each at least) stay under the
gate's 1% null share."""


@pytest.fixture(scope="module")
def full_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """eurusd's whole catalog (668 tables), a few rows each, from the hour ETF quotes start
    (the corr tables have rows only while ETFs quote)."""
    path = tmp_path_factory.mktemp("full") / "warehouse.duckdb"
    start = DEFAULT_START + timedelta(minutes=ETF_OPEN)
    create_warehouse(path, Catalog.load(), pairs=["eurusd"], rows=ROWS, start=start).close()
    return path


def _project(base: Path, warehouse: Path) -> tuple[Path, dict[str, str]]:
    base.mkdir()
    shutil.copy(ROOT / "dagster.yaml", base / "dagster.yaml")
    shutil.copy(warehouse, base / "warehouse.duckdb")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(base),
        "BQX_WAREHOUSE_PATH": str(base / "warehouse.duckdb"),
        "BQX_EXTRACT_THREADS": "1",  # slow enough to be killed in the middle
        "BQX_MIN_ROWS": "10",
    }
    return base, env


def _demo(cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bqx_assets.cli", "demo", "--rows", str(ROWS)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _checkpoints(folder: Path) -> dict[str, int]:
    """Complete checkpoints under `folder` (those with a manifest) -> newest write time of their
    parquet files, by table: a table's checkpoint is `{table}.parquet` or a `{table}/` folder of
    chunks, each beside its manifest."""
    tables: dict[str, int] = {}
    for manifest in folder.rglob("*.manifest.json"):
        data = manifest.with_name(manifest.name.removesuffix(".manifest.json") + ".parquet")
        if not data.exists():
            continue
        table = manifest.relative_to(folder).parts[0].removesuffix(".manifest.json")
        tables[table] = max(tables.get(table, 0), data.stat().st_mtime_ns)
    return tables


def test_killed_demo_resumes_to_the_same_training_file(
    tmp_path: Path, full_warehouse: Path
) -> None:
    reference_dir, env = _project(tmp_path / "reference", full_warehouse)
    reference = _finish(_demo(reference_dir, env))
    assert reference["columns"] == 1 + 49 + 16_988 - 7 and reference["rows"] == ROWS
    assert reference["checks"] == dict.fromkeys(CHECK_NAMES, True)

    work, env = _project(tmp_path / "killed", full_warehouse)
    shared = work / "data" / "checkpoints" / "shared"
    proc = _demo(work, env)
    deadline = time.monotonic() + 300
    while len(_checkpoints(shared)) < 100:
        assert proc.poll() is None, "the demo ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _checkpoints(shared)
    assert 100 <= len(before) < 411
    assert not (work / "data" / "output" / "training_eurusd.parquet").exists()

    resumed = _finish(_demo(work, env))
    after = _checkpoints(shared)
    # Every checkpoint that was complete before the kill was verified and reused, not rewritten.
    unchanged = [n for n, t in before.items() if after.get(n) == t]
    assert len(unchanged) >= len(before) - 1  # the one being written at the kill may be redone
    assert len(after) == 411 + 180  # every shared table and the pair's cov tables
    assert resumed["rows"] == reference["rows"] and resumed["columns"] == reference["columns"]
    assert all(resumed["checks"].values())
    ours = pq.read_table(resumed["training_file"])
    theirs = pq.read_table(reference["training_file"])
    assert ours.equals(theirs)


def _parquet(path: Path, rows: int = 2_000, columns: int = 40) -> Path:
    import numpy as np
    import pyarrow as pa

    data = np.random.default_rng(0).random((columns, rows))
    pq.write_table(pa.table({f"c{i}": data[i] for i in range(columns)}), path)
    return path


def test_published_shape_of_a_local_file(tmp_path: Path) -> None:
    from bqx_assets.cli.commands.demo import published_shape
    from bqx_assets.core.storage import open_storage

    output = open_storage(tmp_path / "out")
    assert published_shape(output, "training_eurusd.parquet") is None
    output.put_file(_parquet(tmp_path / "f.parquet"), "training_eurusd.parquet")
    assert published_shape(output, "training_eurusd.parquet") == (2_000, 40)


@pytest.mark.emulator
def test_published_shape_of_a_gcs_object_reads_only_its_footer(
    tmp_path: Path, gcs_bucket: str
) -> None:
    """`bqx demo` with BQX_OUTPUT_ROOT=gs://... reports the published file's shape from its
    footer, read in place by byte ranges: not a download of the file."""
    from bqx_assets.cli.commands.demo import published_shape
    from bqx_assets.core.storage import ObjectStorage, open_storage

    output = open_storage(f"gs://{gcs_bucket}/output")
    assert isinstance(output, ObjectStorage)
    assert published_shape(output, "training_eurusd.parquet") is None
    local = _parquet(tmp_path / "f.parquet")
    output.put_file(local, "training_eurusd.parquet")
    before = output.reads.bytes
    assert published_shape(output, "training_eurusd.parquet") == (2_000, 40)
    assert 0 < output.reads.bytes - before < local.stat().st_size / 4
