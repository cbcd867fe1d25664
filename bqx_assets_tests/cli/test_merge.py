"""`bqx merge`: a targets file and a folder of feature files, or a pair's chunked checkpoints,
merged into one training file; bad arguments and bad inputs refused, the output untouched; an
earlier training file at --out replaced (and said), anything else there only when asked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.layout import KEY

START = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
TARGETS = ["target_a", "target_b"]
PAIR = "eurusd"


def minutes(values: Sequence[int]) -> pa.Array:
    return pa.array([START + timedelta(minutes=m) for m in values], pa.timestamp("us", tz="UTC"))


def write(path: Path, columns: dict[str, pa.Array | list]) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=4)
    return path


@pytest.fixture
def spine(tmp_path: Path) -> Path:
    """Ten spine rows, not in key order, with columns the merge must leave out."""
    order = [3, 0, 1, 2, 9, 8, 4, 5, 6, 7]
    return write(
        tmp_path / "targets.parquet",
        {
            KEY: minutes(order),
            "pair": ["eurusd"] * 10,
            "bqx_45": [0.5] * 10,
            "target_a": [float(m) for m in order],
            "target_b": [None if m == 9 else -float(m) for m in order],
        },
    )


def feature(folder: Path, name: str, keys: Sequence[int]) -> Path:
    """A float column worth 10 x the minute and an int column."""
    columns = {
        KEY: minutes(keys),
        "x": [10.0 * k for k in keys],
        "n": pa.array([int(k) for k in keys], pa.int64()),
    }
    return write(folder / f"{name}.parquet", columns)


def bqx(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def test_cli_merges_a_folder_and_prints_json_last(
    tmp_path: Path, spine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    feature(folder, "b_table", range(10))
    feature(folder, "a_table", [1, 2, 3])
    out = tmp_path / "out.parquet"
    code, lines, _ = bqx(
        capsys, "merge", "--targets", str(spine), "--features", str(folder), "--out", str(out)
    )
    assert code == 0 and len(lines) > 1
    result = json.loads(lines[-1])
    assert result["rows"] == 10 and result["columns"] == 7 and result["replaced"] is False
    assert result["seconds"] >= 0 and result["peak_rss_bytes"] > 0
    assert result["out"] == str(out) and result["bytes_written"] == out.stat().st_size
    assert pq.read_schema(out).names == [
        KEY,
        *TARGETS,
        "a_table__x",
        "a_table__n",
        "b_table__x",
        "b_table__n",
    ]
    data = pq.read_table(out)
    # The spine's rows in the spine's order; a table without a key's row gives nulls there.
    assert data.column(KEY).equals(pq.read_table(spine).column(KEY))
    assert data.column("a_table__x").to_pylist() == [30.0, None, 10.0, 20.0, *[None] * 6]
    assert list(out.parent.glob(".*.tmp")) == []


def test_cli_reports_bad_input_and_exits_non_zero(
    tmp_path: Path, spine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    feature(folder, "dup_table", [0, 1, 1])
    out = tmp_path / "out.parquet"
    code, _, err = bqx(
        capsys, "merge", "--targets", str(spine), "--features", str(folder), "--out", str(out)
    )
    assert code == 1
    assert "bqx merge: error:" in err and "dup_table" in err and "duplicate" in err
    assert not out.exists() and list(tmp_path.glob(".*.tmp")) == []


def test_a_failed_merge_leaves_an_earlier_output_as_it_was(
    tmp_path: Path, spine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    feature(folder, "a_table", range(10))
    out = tmp_path / "out.parquet"
    argv = ["merge", "--targets", str(spine), "--features", str(folder), "--out", str(out)]
    assert bqx(capsys, *argv)[0] == 0
    before = out.read_bytes()
    feature(folder, "dup_table", [0, 1, 1])
    code, _, err = bqx(capsys, *argv)
    assert code == 1 and "dup_table" in err
    assert out.read_bytes() == before and list(tmp_path.glob(".*.tmp")) == []


def test_bad_arguments_and_inputs_are_refused_by_name(
    tmp_path: Path, spine: Path, mini: tuple[Catalog, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, catalog_path = mini
    out = tmp_path / "out.parquet"
    root = tmp_path / "ckpt"
    folder = tmp_path / "features"
    folder.mkdir()
    refusals = [
        (["--checkpoints", str(root)], "--checkpoints takes --pair"),
        (["--checkpoints", str(root), "--pair", PAIR, "--targets", str(spine)],
         "--checkpoints takes --pair, not --targets or --features"),
        (["--pair", PAIR], "give --targets and --features, or --checkpoints and --pair"),
        (["--targets", str(spine), "--features", str(folder), "--window-days", "2"],
         "--window-days choose --checkpoints' chunks"),
        (["--targets", str(spine), "--features", str(tmp_path / "nowhere")],
         f"feature folder {tmp_path / 'nowhere'} does not exist"),
        (["--targets", str(spine), "--features", str(folder)], "holds no .parquet files"),
        # A pair's checkpoints that were never extracted.
        (["--checkpoints", str(root), "--pair", PAIR, "--catalog", str(catalog_path)],
         f"pair {PAIR}: 15 of 15 tables have no verified checkpoint"),
    ]  # fmt: skip
    for argv, message in refusals:
        code, _, err = bqx(capsys, "merge", *argv, "--out", str(out))
        assert code == 1 and "bqx merge: error:" in err and message in err, (argv, err)
    feature(folder, "a_table", [1])
    code, _, err = bqx(
        capsys, "merge", "--targets", str(tmp_path / "no.parquet"), "--features", str(folder),
        "--out", str(out),
    )  # fmt: skip
    assert code == 1 and "no.parquet: file does not exist" in err
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    code, _, err = bqx(
        capsys, "merge", "--targets", str(tmp_path / "bad.parquet"), "--features", str(folder),
        "--out", str(out),
    )  # fmt: skip
    assert code == 1 and "bad.parquet: not a readable parquet file" in err
    assert not out.exists() and not root.exists()


def test_an_earlier_training_file_at_out_is_replaced_and_said_anything_else_only_when_asked(
    tmp_path: Path, spine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    feature(folder, "a_table", range(10))
    merge = ["merge", "--targets", str(spine), "--features", str(folder)]
    out = tmp_path / "out.parquet"
    assert bqx(capsys, *merge, "--out", str(out))[0] == 0
    code, lines, _ = bqx(capsys, *merge, "--out", str(out))  # what a merge wrote: replaced
    assert code == 0 and json.loads(lines[-1])["replaced"] is True
    said = f"{out}: replacing the training file there (10 rows x 5 columns) once the merge is"
    assert f"{said} complete" in lines

    notes = tmp_path / "notes.parquet"
    notes.write_text("not parquet")
    other = write(tmp_path / "other.parquet", {"a": [1, 2]})  # parquet that no merge wrote
    folder_out = tmp_path / "folder.parquet"
    folder_out.mkdir()
    refusals = [
        (notes, f"{notes} exists and is not a training file (not a readable parquet file: "),
        (other, f"{other} exists and is not a training file (a parquet file no merge wrote): "
                "not replaced; add --replace to replace it, or choose another --out"),
        (folder_out, f"--out {folder_out} is a folder: name the training file to write"),
    ]  # fmt: skip
    before = {notes: notes.read_bytes(), other: other.read_bytes()}
    for path, message in refusals:
        code, _, err = bqx(capsys, *merge, "--out", str(path))
        assert code == 1 and "bqx merge: error:" in err and message in err, (path, err)
    assert {p: p.read_bytes() for p in before} == before and list(folder_out.iterdir()) == []
    code, _, err = bqx(capsys, *merge, "--out", str(folder_out), "--replace")
    assert code == 1 and "is a folder" in err  # never, even when asked
    code, lines, _ = bqx(capsys, *merge, "--out", str(other), "--replace")
    assert code == 0 and json.loads(lines[-1])["replaced"] is True
    assert any(line.startswith(f"{other}: replacing what is there (a parquet") for line in lines)
    assert pq.read_table(other).equals(pq.read_table(out))
    assert list(tmp_path.glob(".*.tmp")) == []
