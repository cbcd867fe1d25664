"""`bqx warehouse create|append`: the embedded warehouse made or grown from the command line, one
JSON line last; a bad request exits 1 and leaves the warehouse it named as it was; an existing
warehouse is replaced only when asked, and nothing that is not one ever."""

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
    argv = ["warehouse", "create", "--rows", "50", "--path", str(path), "--replace",
            "--catalog", str(catalog_file), "--fault", "stale=x:agg_eurusd"]  # fmt: skip
    assert main(argv) == 1
    assert "fault stale: value 'x' is not a number" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert not path.with_name(path.name + ".tmp").exists()


def test_create_replaces_an_existing_warehouse_only_when_asked(
    tmp_path: Path,
    mini: tuple[Catalog, Path],
    warehouses: Warehouses,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalog, catalog_file = mini
    path = warehouses.copy(tmp_path / "w.duckdb", catalog, pairs=MINI_PAIRS, rows=600)
    before = path.read_bytes()
    argv = ["warehouse", "create", "--rows", "50", "--path", str(path), "--catalog",
            str(catalog_file)]  # fmt: skip
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"bqx warehouse: error: warehouse {path} already exists (600 rows, pairs "
        "eurusd,gbpusd): not replaced; add --replace to replace it, or grow it with `bqx "
        f"warehouse append --minutes N --path {path}`\n"
    )
    assert path.read_bytes() == before
    assert main([*argv, "--replace"]) == 0
    out = capsys.readouterr().out
    assert f"warehouse {path}: replacing the warehouse there (600 rows, pairs eurusd,gbpusd)" in out
    made = json.loads(out.strip().splitlines()[-1])
    assert (made["rows"], made["pairs"], made["replaced"]) == (50, ["eurusd"], True)


def test_neither_command_writes_over_or_creates_what_is_not_a_warehouse(
    tmp_path: Path, mini: tuple[Catalog, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A path that holds something else (a typo for another file, a folder) is never replaced,
    even with --replace; `append` to a path with nothing there creates nothing."""
    _, catalog_file = mini
    notes = tmp_path / "notes.duckdb"
    notes.write_text("not a warehouse")
    folder = tmp_path / "folder"
    folder.mkdir()
    missing = tmp_path / "missing.duckdb"
    create = ["warehouse", "create", "--rows", "50", "--replace", "--catalog", str(catalog_file)]
    refusals = [
        ([*create, "--path", str(notes)], f"{notes} exists and is not an embedded warehouse ("),
        ([*create, "--path", str(folder)],
         f"{folder} exists and is not an embedded warehouse (a folder)"),
        (["warehouse", "append", "--minutes", "5", "--path", str(notes)],
         f"{notes} exists and is not an embedded warehouse ("),
        (["warehouse", "append", "--minutes", "5", "--path", str(missing)],
         f"embedded warehouse {missing} does not exist: create it with `bqx warehouse create "
         f"--rows N --path {missing}`"),
    ]  # fmt: skip
    for argv, message in refusals:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("bqx warehouse: error: ") and message in err, (argv, err)
    assert notes.read_text() == "not a warehouse" and list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "notes.duckdb"]
