"""`bqx catalog refresh` (the deployment's warehouse's INFORMATION_SCHEMA to a catalog file) and
`bqx catalog show` (a pair's shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog


def test_refresh_writes_the_catalog_of_the_deployments_warehouse(
    mini: tuple[Catalog, Path],
    mini_warehouse: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The local deployment's warehouse is the one BQX_WAREHOUSE_PATH names (read when the
    command runs, not its name)."""
    catalog, _ = mini
    monkeypatch.delenv("BQX_ENV", raising=False)
    monkeypatch.setenv("BQX_WAREHOUSE_PATH", str(mini_warehouse))
    out = tmp_path / "made" / "catalog.json"
    assert main(["catalog", "refresh", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Catalog.load(out).to_dict() == catalog.to_dict()
    assert result["catalog"] == str(out) and result["pairs"] == list(catalog.pairs)
    assert result["tables_per_pair"] == {p: len(catalog.tables_for(p)) for p in catalog.pairs}
    assert result["tables"] == len(catalog.tables)


def test_refresh_of_a_missing_warehouse_is_an_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BQX_ENV", raising=False)
    monkeypatch.setenv("BQX_WAREHOUSE_PATH", str(tmp_path / "missing.duckdb"))
    out = tmp_path / "catalog.json"
    assert main(["catalog", "refresh", "--out", str(out)]) == 1
    assert "missing.duckdb" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "missing.duckdb").exists()


def test_show_prints_each_family_and_the_pairs_shape(
    mini: tuple[Catalog, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    catalog, path = mini
    assert main(["catalog", "show", "--catalog", str(path), "--pair", "gbpusd"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == list(catalog.families())
    result = json.loads(lines[-1])
    assert result == {
        "pair": "gbpusd",
        "tables": len(catalog.tables_for("gbpusd")),
        "feature_columns": sum(len(t.columns) for t in catalog.tables_for("gbpusd")),
        "training_columns": len(catalog.training_columns("gbpusd")),
    }


def test_show_of_a_pair_not_in_the_catalog_names_it(
    mini: tuple[Catalog, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = mini
    assert main(["catalog", "show", "--catalog", str(path), "--pair", "usdjpy"]) == 1
    assert "usdjpy" in capsys.readouterr().err
