"""`bqx preflight` on the deployment's warehouse (the embedded one): clean, a defect named in
one line with exit code 1, and a catalog file with an unsafe name refused before any look-up."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog


def _bqx(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["preflight", *argv])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch, mini_warehouse: Path) -> None:
    monkeypatch.delenv("BQX_ENV", raising=False)
    monkeypatch.setenv("BQX_WAREHOUSE_PATH", str(mini_warehouse))


@pytest.mark.usefixtures("deployment")
def test_bqx_preflight_of_a_clean_warehouse_exits_0_with_the_reads_in_json(
    mini: tuple[Catalog, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    catalog, path = mini
    code, lines, _ = _bqx(capsys, "--catalog", str(path))
    assert code == 0
    result = json.loads(lines[-1])
    assert result["ok"] is True and result["defects"] == []
    assert result["warehouse"] == "embedded"
    assert result["tables"] == len(catalog.tables) + len(catalog.targets)
    assert result["full_build"]["bytes"] > 0 and set(result["pairs"]) == set(catalog.pairs)
    assert lines[-3].startswith("full build: reads ")


@pytest.mark.usefixtures("deployment")
def test_bqx_preflight_names_each_defect_and_exits_1(
    mini: tuple[Catalog, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = mini[0]
    absent = dataclasses.replace(catalog.tables["tmp_eurusd"], name="tmp_eurusd_absent")
    edited = dataclasses.replace(catalog, tables={**catalog.tables, absent.name: absent})
    code, lines, _ = _bqx(capsys, "--catalog", str(edited.dump(tmp_path / "c.json")))
    assert code == 1
    line = f"table {catalog.features_dataset}.tmp_eurusd_absent: does not exist"
    assert lines[0] == line
    assert json.loads(lines[-1])["defects"] == [line]


@pytest.mark.usefixtures("deployment")
def test_bqx_preflight_refuses_a_catalog_file_with_a_path_for_a_table_name(
    mini: tuple[Catalog, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(mini[1].read_text())
    data["tables"][0]["name"] = "../x"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    code, lines, err = _bqx(capsys, "--catalog", str(path))
    assert code == 1 and lines == []
    assert (
        "bqx preflight: error: catalog entries that are not safe BigQuery names: table '../x'"
        in err
    )
