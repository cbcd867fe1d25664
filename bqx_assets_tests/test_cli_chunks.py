"""`bqx extract` and `bqx merge --checkpoints`: the CLI writes and reads the chunked checkpoint
layout of the Dagster assets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.layout import KEY
from bqx_assets.defs.assets import training_file
from bqx_assets_tests.test_chunks_window import (
    JAN,
    _days,
    _resources,
    _same,
    _utc,
    three_days_two_pairs,  # noqa: F401 - the module fixture
)
from bqx_assets_tests.test_refresh import PAIR


def _bqx(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 else {}, captured.err


def test_bqx_extract_and_merge_build_the_file_dagster_builds_from_the_same_checkpoints(
    mini: tuple[Catalog, Path],
    three_days_two_pairs: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, catalog_path = mini
    path = tmp_path / "w.duckdb"
    shutil.copyfile(three_days_two_pairs, path)
    root = tmp_path / "ckpt"
    common = ["--pair", PAIR, "--catalog", str(catalog_path), "--window-days", "2"]
    extract = ["extract", "--warehouse", str(path), "--checkpoints", str(root), *common]

    code, first, _ = _bqx(capsys, *extract, "--threads", "2")
    assert code == 0
    assert first["window_start"] == _utc(JAN[1]).isoformat()
    assert first["chunks_extracted"] > 0 and first["bytes_read"] > 0
    # Nothing changed: every chunk reused, nothing read.
    code, again, _ = _bqx(capsys, *extract)
    assert code == 0 and again["chunks_extracted"] == again["bytes_read"] == 0
    assert again["chunks_reused"] == first["chunks_extracted"]

    out = tmp_path / "cli.parquet"
    merge = ["merge", "--checkpoints", str(root), *common, "--out", str(out)]
    code, merged, _ = _bqx(capsys, *merge)
    assert code == 0 and merged["rows"] == 2 * 1440
    data = pq.read_table(out)
    assert _days(data) == set(JAN[1:]) and data.column_names[0] == KEY
    assert (merged["row_groups"], merged["row_groups_reused"]) == (1, 0)  # one week
    # Merged again into the same file: the newest week's row group is encoded again (it holds
    # the newest day, whose nulls the gate counts), and the file comes out the same.
    before = out.read_bytes()
    code, remerged, _ = _bqx(capsys, *merge)
    assert code == 0 and remerged["row_groups_reused"] == 0
    assert out.read_bytes() == before

    # The training_file asset reads the same checkpoints (no extraction of its own here) and
    # writes the same file.
    res = _resources(tmp_path, catalog_path, path, window_days=2)
    assert dg.materialize([training_file], partition_key=PAIR, resources=res).success
    _same(data, pq.read_table(tmp_path / "out" / f"training_{PAIR}.parquet"))


def test_bqx_extract_and_merge_refuse_bad_windows_and_arguments_writing_nothing(
    mini: tuple[Catalog, Path],
    three_days_two_pairs: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, catalog_path = mini
    root = tmp_path / "ckpt"
    both = ["--window-start", "2024-01-30", "--window-days", "2"]
    code, _, err = _bqx(
        capsys, "extract", "--pair", PAIR, "--warehouse", str(three_days_two_pairs),
        "--checkpoints", str(root), "--catalog", str(catalog_path), *both,
    )  # fmt: skip
    assert code == 1 and "bqx extract: error:" in err and "both a start" in err
    assert not root.exists()
    code, _, err = _bqx(
        capsys, "extract", "--pair", PAIR, "--warehouse", str(three_days_two_pairs),
        "--checkpoints", str(root), "--catalog", str(catalog_path), "--window-end", "Tuesday",
    )  # fmt: skip
    assert code == 1 and "window end 'Tuesday' is not an ISO date" in err
    out = tmp_path / "out.parquet"
    code, _, err = _bqx(capsys, "merge", "--checkpoints", str(root), "--out", str(out))
    assert code == 1 and "--checkpoints takes --pair" in err
    code, _, err = _bqx(capsys, "merge", "--pair", PAIR, "--out", str(out))
    assert code == 1 and "give --targets and --features, or --checkpoints and --pair" in err
    code, _, err = _bqx(
        capsys, "merge", "--checkpoints", str(root), "--pair", PAIR,
        "--catalog", str(catalog_path), "--out", str(out),
    )  # fmt: skip
    assert code == 1 and f"targets_{PAIR}" in err and "no verified" in err
    assert not out.exists()
