"""`bqx demo` end to end: a pair built through Dagster and reported, then built again from the
warehouse `bqx warehouse append` grew; killed mid-way with SIGKILL, resumed to the same training
file; bad requests refused, and a warehouse that does not fit named and left as it was; the
published file's shape read from its footer, locally and in place on GCS."""

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

import dagster as dg
import pyarrow.parquet as pq
import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.gate.profile import load_history, load_profile
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.core.publish import latest_report
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets.core.warehouse.synthetic import DEFAULT_START, ETF_OPEN
from bqx_assets_tests.conftest import Warehouses, every_family

REPO = Path(__file__).resolve().parents[2]
ROWS = 300
"""Enough minutes that each target's null head and tail (a minute each at least) stay under the
gate's 1% null share."""
DEMO_ROWS = 600
"""The demo's warehouse starts at midnight: the ETF's tables have rows from 08:00 on."""
APPENDED = 60
"""Minutes `bqx warehouse append` adds before the second demo."""
ETF_HOURS = DEFAULT_START + timedelta(minutes=ETF_OPEN)
"""From the hour ETF quotes start: the corr tables have rows only while ETFs quote."""


@pytest.fixture(scope="module")
def full_warehouse(warehouses: Warehouses) -> Path:
    """eurusd's whole catalog (668 tables), a few rows each."""
    return warehouses.path(Catalog.load(), pairs=["eurusd"], rows=ROWS, start=ETF_HOURS)


def _project(base: Path, warehouse: Path | None = None, **env: str) -> tuple[Path, dict[str, str]]:
    """A project folder (the instance's dagster.yaml, the warehouse when given) and the
    environment a user's `bqx demo` there has; its own temporary folder (a step measures the
    bytes it holds there)."""
    base.mkdir()
    shutil.copy(REPO / "dagster.yaml", base / "dagster.yaml")
    if warehouse is not None:
        shutil.copy(warehouse, base / "warehouse.duckdb")
    (base / "tmp").mkdir()
    return base, {
        **os.environ,
        "DAGSTER_HOME": str(base),
        "TMPDIR": str(base / "tmp"),
        "BQX_WAREHOUSE_PATH": str(base / "warehouse.duckdb"),
        "BQX_MIN_ROWS": "10",
        **env,
    }


def _demo(cwd: Path, env: dict[str, str], rows: int | None = ROWS) -> subprocess.Popen:
    """`bqx demo --rows ROWS` in `cwd`, or a plain `bqx demo` with `rows=None`."""
    asked = [] if rows is None else ["--rows", str(rows)]
    return subprocess.Popen(
        [sys.executable, "-m", "bqx_assets.cli", "demo", *asked],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, said: list[str] | None = None) -> dict:
    """The demo's last line (JSON); its output lines are added to `said` when given."""
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    if said is not None:
        said += out.splitlines()
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


def _drift(output: LocalStorage) -> dict:
    """The profile_drift outcome of the pair's latest gate report."""
    report = latest_report(output, "eurusd")
    assert report is not None
    return report["checks"]["profile_drift"]


def test_bqx_demo_builds_the_pair_then_builds_it_again_from_the_appended_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first command on a catalog of a table per family (BQX_CATALOG_PATH): the
    warehouse made for it, the shared and the pair's runs in the project's instance, the
    published file's path, shape and checks on the last line. Then `bqx warehouse append` and a
    plain `bqx demo` again in the same folder: the grown warehouse is used as it is, not
    recreated at the default rows, and the published file has the new minutes (issue 29)."""
    catalog = every_family(Catalog.load())
    work, env = _project(tmp_path / "project")
    env["BQX_CATALOG_PATH"] = str(catalog.dump(work / "catalog.json"))
    warehouse = work / "warehouse.duckdb"
    said: list[str] = []
    result = _finish(_demo(work, env, rows=DEMO_ROWS), said)
    published = work / "data" / "output" / "training_eurusd.parquet"
    assert result["training_file"] == str(published) and result["published"] is True
    meta = pq.read_metadata(published)
    assert (result["rows"], result["columns"]) == (meta.num_rows, meta.num_columns)
    assert result["rows"] == DEMO_ROWS and result["columns"] == len(
        catalog.training_columns("eurusd")
    )
    assert result["checks"] == dict.fromkeys(CHECK_NAMES, True)
    assert result["warehouse"] == {"path": str(warehouse), "rows": DEMO_ROWS, "created": True}
    assert f"warehouse {warehouse}: creating {DEMO_ROWS} rows for eurusd" in said
    assert result["seconds"] > 0 and result["peak_rss_bytes"] > 0
    # The runs are in the project's instance, as `dagster dev` there shows them (dagster.yaml's
    # folders are relative to where it runs).
    monkeypatch.chdir(work)
    with dg.DagsterInstance.from_config(str(work)) as instance:
        run = instance.get_run_by_id(result["run_id"])
        assert run is not None and run.is_success
        assert len(instance.get_run_records()) == 2  # the shared checkpoints, then the pair

    output = LocalStorage(work / "data" / "output")
    first = load_profile(output, "eurusd")  # published with the file, by the demo's own run
    assert first is not None and first.rows == DEMO_ROWS
    assert "first build" in json.dumps(_drift(output))

    argv = ["warehouse", "append", "--minutes", str(APPENDED), "--path", str(warehouse)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["rows"] == DEMO_ROWS + APPENDED
    said.clear()
    again = _finish(_demo(work, env, rows=None), said)
    grown = DEMO_ROWS + APPENDED
    assert again["warehouse"] == {"path": str(warehouse), "rows": grown, "created": False}
    assert any(f"warehouse {warehouse}: using it as it is ({grown} rows" in line for line in said)
    assert again["published"] is True and again["rows"] == grown
    assert pq.read_metadata(published).num_rows == grown
    # The second demo's file was judged against the profile the first one published.
    drift = json.dumps(_drift(output))
    assert first.created in drift and "first build" not in drift
    assert [p.rows for p in load_history(output, "eurusd")] == [grown, DEMO_ROWS]
    wh = EmbeddedWarehouse(warehouse)
    try:  # not recreated: made at DEMO_ROWS, grown by the append
        assert (wh.params()["plan_rows"], wh.params()["rows"]) == (str(DEMO_ROWS), str(grown))
    finally:
        wh.close()


def test_bqx_demo_stops_on_a_warehouse_that_does_not_fit_naming_it_and_keeps_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mini: tuple[Catalog, Path],
    warehouses: Warehouses,
) -> None:
    """A warehouse the user named (or the default one) that exists is used as it is or refused
    with one error naming it and the mismatch; never recreated, and the file is left byte for
    byte as it was. Nothing else is written."""
    two = every_family(Catalog.load(), ("eurusd", "gbpusd"))
    catalog_file = two.dump(tmp_path / "catalog.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("BQX_CATALOG_PATH", str(catalog_file))
    wh = warehouses.copy(tmp_path / "eurusd.duckdb", two, pairs=["eurusd"], rows=600)
    # Made from another catalog: the mini one, of other tables.
    small = warehouses.copy(tmp_path / "small.duckdb", mini[0], pairs=["eurusd"], rows=600)
    mini_tables = set(mini[0].tables) | {t.name for t in mini[0].targets.values()}
    lacking = [t.name for t in two.tables_for("eurusd") if t.name not in mini_tables]
    notes = tmp_path / "notes.duckdb"
    notes.write_text("not a warehouse")
    folder = tmp_path / "folder.duckdb"
    folder.mkdir()
    cases = [
        (["--warehouse", str(wh), "--rows", "500"],
         f"warehouse {wh} does not fit this demo: it holds 600 rows, not the 500 of --rows. "
         "An existing warehouse is used as it is, never recreated: leave out --rows"),
        (["--warehouse", str(wh), "--pair", "gbpusd", "--rows", "600"],
         f"warehouse {wh} does not fit this demo: it holds pairs eurusd, not gbpusd. An "
         f"existing warehouse is used as it is, never recreated: replace it with `bqx "
         f"warehouse create --replace --path {wh} --pairs gbpusd --rows N`"),
        (["--warehouse", str(small)],
         f"warehouse {small} does not fit this demo: it lacks {len(lacking)} of the tables "
         f"the catalog gives eurusd (bqx_ml_v3_features_v2.{lacking[0]}, "),
        (["--warehouse", str(notes)], f"{notes} exists and is not an embedded warehouse"),
        (["--warehouse", str(folder)],
         f"{folder} exists and is not an embedded warehouse (a folder)"),
    ]  # fmt: skip
    before = {p: p.read_bytes() for p in (wh, small, notes)}
    for argv, message in cases:
        assert main(["demo", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("bqx demo: error: ") and message in err, (argv, err)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "catalog.json", "eurusd.duckdb", "folder.duckdb", "notes.duckdb", "small.duckdb",
    ]  # fmt: skip


def test_bqx_demo_refuses_an_unknown_pair_and_prod_writing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert main(["demo", "--pair", "xyzabc", "--rows", "10"]) == 1
    assert "xyzabc" in capsys.readouterr().err
    monkeypatch.setenv("BQX_ENV", "prod")
    assert main(["demo", "--rows", "10"]) == 1
    assert "unset BQX_ENV=prod" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_killed_demo_resumes_to_the_same_training_file(
    tmp_path: Path, full_warehouse: Path
) -> None:
    """Slow (a minute: the whole catalog, built twice): the kill must land while the 411
    shared tables are being checkpointed, which a smaller catalog does not give."""
    # One table at a time: slow enough to be killed in the middle.
    reference_dir, env = _project(tmp_path / "reference", full_warehouse, BQX_EXTRACT_THREADS="1")
    reference = _finish(_demo(reference_dir, env))
    assert reference["columns"] == 1 + 49 + 16_988 - 7 and reference["rows"] == ROWS
    assert reference["checks"] == dict.fromkeys(CHECK_NAMES, True)

    work, env = _project(tmp_path / "killed", full_warehouse, BQX_EXTRACT_THREADS="1")
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
    from bqx_assets.core.storage import open_storage

    output = open_storage(f"gs://{gcs_bucket}/output")
    assert published_shape(output, "training_eurusd.parquet") is None
    local = _parquet(tmp_path / "f.parquet")
    output.put_file(local, "training_eurusd.parquet")
    before = output.reads.bytes
    assert published_shape(output, "training_eurusd.parquet") == (2_000, 40)
    assert 0 < output.reads.bytes - before < local.stat().st_size / 4
