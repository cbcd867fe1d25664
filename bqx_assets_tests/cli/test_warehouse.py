"""`bqx warehouse create|append`: the embedded warehouse made or grown from the command line, one
JSON line last; a bad request exits 1 and leaves the warehouse it named as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_create_makes_a_warehouse_and_append_grows_it(
    tmp_path: Path, mini: tuple[Catalog, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, catalog_file = mini
    path = tmp_path / "w.duckdb"
    argv = ["warehouse", "create", "--rows", "300", "--pairs", "eurusd", "--path", str(path),
            "--catalog", str(catalog_file), "--fault", "stale:tmp_eurusd"]  # fmt: skip
    assert main(argv) == 0
    made = _last_json(capsys)
    assert (made["rows"], made["pairs"], made["faults"]) == (300, ["eurusd"], ["stale:tmp_eurusd"])
    assert main(["warehouse", "append", "--minutes", "60", "--path", str(path)]) == 0
    grown = _last_json(capsys)
    assert grown["rows"] == 360 and grown["rows_added"] > 0
    wh = EmbeddedWarehouse(path)
    assert wh.params()["rows"] == "360"
    wh.close()


def test_a_bad_fault_exits_1_and_leaves_the_named_warehouse_as_it_was(
    tmp_path: Path,
    mini: tuple[Catalog, Path],
    warehouses: Warehouses,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalog, catalog_file = mini
    path = warehouses.copy(tmp_path / "w.duckdb", catalog, pairs=MINI_PAIRS, rows=600)
    before = path.read_bytes()
    argv = ["warehouse", "create", "--rows", "50", "--path", str(path),
            "--catalog", str(catalog_file), "--fault", "stale=x:agg_eurusd"]  # fmt: skip
    assert main(argv) == 1
    assert "fault stale: value 'x' is not a number" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert not path.with_name(path.name + ".tmp").exists()
