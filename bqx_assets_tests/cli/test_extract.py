"""`bqx extract`: a pair's chunked checkpoints refreshed from the warehouse, in the layout the
Dagster assets write and `bqx merge --checkpoints` reads; nothing else under the root touched,
and a refused extraction or a failed merge leaves what was there byte for byte."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.layout import KEY
from bqx_assets.defs.assets import training_file
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses
from bqx_assets_tests.core.checkpoints.conftest import START, assert_same, days_of, utc
from bqx_assets_tests.defs.pipeline import DAY, PAIR, resources

JAN = [date(2024, 1, d) for d in (29, 30, 31)]
"""The warehouse's days: Monday to Wednesday."""


def bqx(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    """`bqx *argv`: its exit code, its last line (JSON) when it succeeded, and its stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 else {}, captured.err


def three_days(warehouses: Warehouses, catalog: Catalog, dest: Path | None = None) -> Path:
    """Both mini pairs, Monday 29 to Wednesday 31 January 2024: the session's read-only
    warehouse, or a private copy at `dest`."""
    spec = {"pairs": MINI_PAIRS, "rows": 3 * DAY, "start": START}
    return warehouses.copy(dest, catalog, **spec) if dest else warehouses.path(catalog, **spec)


def test_bqx_extract_and_merge_build_the_file_dagster_builds_from_the_same_checkpoints(
    mini: tuple[Catalog, Path],
    warehouses: Warehouses,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalog, catalog_path = mini
    path = three_days(warehouses, catalog, tmp_path / "w.duckdb")
    root = tmp_path / "ckpt"
    common = ["--pair", PAIR, "--catalog", str(catalog_path), "--window-days", "2"]
    extract = ["extract", "--warehouse", str(path), "--checkpoints", str(root), *common]

    code, first, _ = bqx(capsys, *extract, "--threads", "2")
    assert code == 0
    assert first["window_start"] == utc(JAN[1]).isoformat()
    assert first["chunks_extracted"] > 0 and first["bytes_read"] > 0
    # Nothing changed: every chunk reused, nothing read.
    code, again, _ = bqx(capsys, *extract)
    assert code == 0 and again["chunks_extracted"] == again["bytes_read"] == 0
    assert again["chunks_reused"] == first["chunks_extracted"]

    out = tmp_path / "cli.parquet"
    merge = ["merge", "--checkpoints", str(root), *common, "--out", str(out)]
    code, merged, _ = bqx(capsys, *merge)
    assert code == 0 and merged["rows"] == 2 * DAY
    data = pq.read_table(out)
    assert days_of(data) == set(JAN[1:]) and data.column_names[0] == KEY
    assert (merged["row_groups"], merged["row_groups_reused"]) == (1, 0)  # one week
    # Merged again into the same file: the newest week's row group is encoded again (it holds
    # the newest day, whose nulls the gate counts), and the file comes out the same.
    before = out.read_bytes()
    code, remerged, _ = bqx(capsys, *merge)
    assert code == 0 and remerged["row_groups_reused"] == 0
    assert out.read_bytes() == before

    # The training_file asset reads the same checkpoints (no extraction of its own here) and
    # writes the same file.
    res = resources(tmp_path, catalog_path, path, window_days=2)
    assert dg.materialize([training_file], partition_key=PAIR, resources=res).success
    assert_same(data, pq.read_table(tmp_path / "out" / f"training_{PAIR}.parquet"))

    # A merge that fails (a table's chunk gone) leaves the training file at --out as it was.
    next(root.glob(f"{PAIR}/*/*.parquet")).unlink()
    code, _, err = bqx(capsys, *merge)
    assert code == 1 and "have no verified checkpoint" in err
    assert out.read_bytes() == before and list(tmp_path.glob(".*.tmp")) == []


def test_bqx_extract_refuses_bad_windows_and_pairs_leaving_the_root_as_it_was(
    mini: tuple[Catalog, Path],
    warehouses: Warehouses,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalog, catalog_path = mini
    root = tmp_path / "ckpt"
    extract = ["extract", "--warehouse", str(three_days(warehouses, catalog))]
    extract += ["--checkpoints", str(root), "--catalog", str(catalog_path)]
    # An earlier extraction, and a file of the user's under the root that is no checkpoint.
    assert bqx(capsys, *extract, "--pair", PAIR, "--window-days", "1")[0] == 0
    (root / "notes.txt").write_text("mine")
    (root / PAIR / "notes.txt").write_text("mine too")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    both = ["--window-start", "2024-01-30", "--window-days", "2"]
    code, _, err = bqx(capsys, *extract, "--pair", PAIR, *both)
    assert code == 1 and "bqx extract: error:" in err and "both a start" in err
    code, _, err = bqx(capsys, *extract, "--pair", PAIR, "--window-end", "Tuesday")
    assert code == 1 and "window end 'Tuesday' is not an ISO date" in err
    code, _, err = bqx(capsys, *extract, "--pair", "usdjpy")  # not in the mini catalog
    assert code == 1 and "usdjpy" in err
    code, _, err = bqx(
        capsys, "extract", "--pair", PAIR, "--warehouse", str(tmp_path / "missing.duckdb"),
        "--checkpoints", str(root), "--catalog", str(catalog_path),
    )  # fmt: skip
    assert code == 1 and "missing.duckdb" in err
    code, _, err = bqx(
        capsys, "extract", "--pair", PAIR, "--checkpoints", str(root / "notes.txt"),
        "--catalog", str(catalog_path),
    )  # fmt: skip
    assert code == 1 and f"--checkpoints {root / 'notes.txt'} is a file, not a folder" in err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    # Extracted again, for another window: the user's files are left alone.
    assert bqx(capsys, *extract, "--pair", PAIR, "--window-days", "2")[0] == 0
    assert (root / "notes.txt").read_text() == "mine"
    assert (root / PAIR / "notes.txt").read_text() == "mine too"
