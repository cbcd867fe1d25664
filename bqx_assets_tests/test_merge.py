"""The merge engine: left-join semantics, names, keys, dtypes, bad inputs, the `bqx merge` CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog, Column, Table, TargetsTable
from bqx_assets.core.errors import MergeError, StorageError
from bqx_assets.core.keys import keys_us
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge.join import FeatureSource, PartFacts, merge_checkpoints, sources_for_pair
from bqx_assets.core.publish import TrainingFile, publish_training_file
from bqx_assets.core.storage import StoredFile, file_crc32c
from bqx_assets.core.storage.gcs import SEGMENTS_FOLDER, GCSStorage
from bqx_assets_tests.emulators import gcs as gcs_fixtures

START = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
TARGETS = ["target_a", "target_b"]


def minutes(values: Sequence[int], unit: str = "us", tz: str | None = "UTC") -> pa.Array:
    """Keys `START + m minutes` as timestamps of the given unit and zone."""
    stamps = [START + timedelta(minutes=int(m)) for m in values]
    return pa.array(stamps, pa.timestamp("us", tz="UTC")).cast(pa.timestamp(unit, tz=tz))


def write(path: Path, columns: dict[str, pa.Array | list], *, row_group_size: int = 4) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
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


def spine_minutes(spine: Path) -> list[int]:
    keys = pq.read_table(spine, columns=[KEY]).column(0).to_pylist()
    return [int((k - START).total_seconds() // 60) for k in keys]


def feature(tmp_path: Path, name: str, keys: Sequence[int], **kwargs) -> Path:
    """A float table whose value is 10 x the minute (so alignment is checkable) and an int."""
    columns: dict = {
        KEY: minutes(keys),
        "x": [10.0 * k for k in keys],
        "n": pa.array([int(k) for k in keys], pa.int64()),
    }
    return write(tmp_path / f"{name}.parquet", columns, **kwargs)


def merge(spine: Path, sources: Sequence[FeatureSource], out: Path, **kwargs) -> pl.DataFrame:
    merge_checkpoints(spine, TARGETS, sources, out, **kwargs)
    return pl.read_parquet(out)


def naive(spine: Path, sources: Sequence[FeatureSource]) -> pl.DataFrame:
    """The first team's iterative Polars left join, the reference for contents."""
    frame = pl.read_parquet(spine, columns=[KEY, *TARGETS])
    for source in sources:
        table = pl.read_parquet(source.path)
        table = table.rename({c: f"{source.table}__{c}" for c in table.columns if c != KEY})
        frame = frame.join(table, on=KEY, how="left", maintain_order="left")
    return frame


# -- rows -------------------------------------------------------------------------------------
def test_rows_are_the_spine_rows_in_spine_order(tmp_path: Path, spine: Path) -> None:
    shuffled = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]
    src = FeatureSource("f", feature(tmp_path, "f", shuffled))
    out = merge(spine, [src], tmp_path / "out.parquet")
    order = spine_minutes(spine)
    assert out.height == 10
    assert out[KEY].to_list() == [START + timedelta(minutes=m) for m in order]
    assert out["f__x"].to_list() == [10.0 * m for m in order]
    assert out["target_a"].to_list() == [float(m) for m in order]


def test_extra_keys_are_dropped_and_missing_keys_are_null(tmp_path: Path, spine: Path) -> None:
    keys = [-5, -1, 0, 2, 4, 6, 8, 11, 500]  # odd spine minutes missing, some keys outside it
    src = FeatureSource("f", feature(tmp_path, "f", keys))
    out = merge(spine, [src], tmp_path / "out.parquet")
    order = spine_minutes(spine)
    assert out.height == 10
    assert out["f__x"].to_list() == [10.0 * m if m % 2 == 0 else None for m in order]
    assert out["f__n"].to_list() == [m if m % 2 == 0 else None for m in order]


def test_a_table_with_no_spine_keys_gives_null_columns(tmp_path: Path, spine: Path) -> None:
    src = FeatureSource("f", feature(tmp_path, "f", [100, 101, 102]))
    out = merge(spine, [src], tmp_path / "out.parquet")
    assert out.height == 10
    assert out["f__x"].null_count() == 10
    assert out.schema["f__x"] == pl.Float64 and out.schema["f__n"] == pl.Int64


def test_duplicate_keys_in_a_feature_table_are_an_error(tmp_path: Path, spine: Path) -> None:
    path = feature(tmp_path, "corr_etf_idx_eurusd_spy", [0, 1, 2, 2, 3, 5, 5, 5, 6])
    out = tmp_path / "out.parquet"
    with pytest.raises(MergeError) as info:
        merge_checkpoints(spine, TARGETS, [FeatureSource("corr_etf_idx_eurusd_spy", path)], out)
    message = str(info.value)
    assert "corr_etf_idx_eurusd_spy" in message and str(path) in message
    assert "2024-03-04T00:02:00" in message and "2024-03-04T00:05:00" in message
    assert not out.exists()


def _facts(path: Path) -> PartFacts:
    """A part's facts as extraction records them, through their JSON form."""
    keys = keys_us(pq.read_table(path, columns=[KEY]).column(0), str(path))
    facts = PartFacts.from_json(
        json.loads(
            json.dumps(PartFacts.of(pq.read_metadata(path), pq.read_table(path), keys).to_json())
        )
    )
    assert facts is not None
    return facts


def test_a_table_planned_from_its_parts_facts_merges_as_when_its_files_are_read(
    tmp_path: Path, spine: Path
) -> None:
    a = feature(tmp_path, "a", [7, 2, 9, -1, 3])  # not in key order, a key outside the spine
    b = feature(tmp_path, "b", [0, 5, 100])
    declared = {"columns": (("x", "f__x"), ("n", "f__n")), "dtypes": {"x": "FLOAT64", "n": "INT64"}}
    read = merge_checkpoints(
        spine, TARGETS, [FeatureSource("f", (a, b), **declared)], tmp_path / "read.parquet"
    )
    planned = merge_checkpoints(
        spine,
        TARGETS,
        [FeatureSource("f", (a, b), facts=(_facts(a), _facts(b)), **declared)],
        tmp_path / "planned.parquet",
    )
    # From scratch every row group is encoded, so both parts are opened either way.
    assert read.parts_opened == planned.parts_opened == planned.parts == 2
    assert (tmp_path / "read.parquet").read_bytes() == (tmp_path / "planned.parquet").read_bytes()
    assert planned.coverage == read.coverage

    # A key in two parts is found from the facts alone.
    c = feature(tmp_path, "c", [5, 6])
    facts = (_facts(a), _facts(b), _facts(c))
    with pytest.raises(MergeError, match=r"table f .* duplicate interval_time .*00:05:00"):
        merge_checkpoints(
            spine,
            TARGETS,
            [FeatureSource("f", (a, b, c), facts=facts, **declared)],
            tmp_path / "duplicate.parquet",
        )
    assert not (tmp_path / "duplicate.parquet").exists()

    # A record that is not one is not used; one whose keys are not what its row groups say
    # is found when the table is planned: its parts are then opened, as without facts.
    assert PartFacts.from_json({"rows": [1]}) is None
    claims_more = PartFacts.from_json({**_facts(a).to_json(), "rows": [6]})  # five keys packed
    assert claims_more is not None
    with pytest.raises(ValueError, match="packed keys"):
        claims_more.keys()
    opened = merge_checkpoints(
        spine,
        TARGETS,
        [FeatureSource("f", (a, b), facts=(claims_more, _facts(b)), **declared)],
        tmp_path / "opened.parquet",
    )
    assert opened.coverage == read.coverage
    assert (tmp_path / "opened.parquet").read_bytes() == (tmp_path / "read.parquet").read_bytes()


def test_duplicate_keys_in_the_spine_are_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "targets.parquet",
        {KEY: minutes([0, 1, 1]), "target_a": [1.0, 2.0, 3.0], "target_b": [1.0, 2.0, 3.0]},
    )
    with pytest.raises(MergeError, match=r"targets\.parquet.*duplicate.*2024-03-04T00:01:00"):
        merge_checkpoints(path, TARGETS, [], tmp_path / "out.parquet")


# -- columns ----------------------------------------------------------------------------------
def test_columns_are_key_then_spine_columns_then_features_in_order(
    tmp_path: Path, spine: Path
) -> None:
    b = FeatureSource(
        "b", feature(tmp_path, "b", range(10)), columns=(("n", "b__n"), ("x", "b__x"))
    )
    a = FeatureSource("a", feature(tmp_path, "a", range(10)))
    merge_checkpoints(spine, ["target_b", "target_a"], [b, a], tmp_path / "out.parquet")
    names = pq.read_schema(tmp_path / "out.parquet").names
    assert names == [KEY, "target_b", "target_a", "b__n", "b__x", "a__x", "a__n"]


def test_a_name_collision_is_an_error_naming_both_sources(tmp_path: Path, spine: Path) -> None:
    one = FeatureSource("agg_bqx_eurusd", feature(tmp_path, "one", range(10)), (("x", "agg__x"),))
    two = FeatureSource("agg_idx_eurusd", feature(tmp_path, "two", range(10)), (("x", "agg__x"),))
    with pytest.raises(MergeError, match=r"agg__x.*agg_bqx_eurusd\.x.*agg_idx_eurusd\.x"):
        merge_checkpoints(spine, TARGETS, [one, two], tmp_path / "out.parquet")
    clash = FeatureSource("f", feature(tmp_path, "f", range(10)), (("x", "target_a"),))
    with pytest.raises(MergeError, match=r"target_a.*targets\.parquet.*f\.x"):
        merge_checkpoints(spine, TARGETS, [clash], tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


# -- keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("unit", "tz"),
    [("ns", "UTC"), ("ms", "UTC"), ("s", "UTC"), ("us", None), ("ns", "America/New_York")],
)
def test_keys_of_any_unit_and_zone_are_normalised(
    tmp_path: Path, spine: Path, unit: str, tz: str | None
) -> None:
    keys = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    path = write(
        tmp_path / "f.parquet", {KEY: minutes(keys, unit, tz), "x": [10.0 * k for k in keys]}
    )
    out = merge(spine, [FeatureSource("f", path)], tmp_path / "out.parquet")
    assert pq.read_schema(tmp_path / "out.parquet").field(KEY).type == pa.timestamp("us", tz="UTC")
    assert out["f__x"].to_list() == [10.0 * m for m in spine_minutes(spine)]  # no 1970 keys
    assert {k.year for k in out[KEY].to_list()} == {2024}


def test_a_nanosecond_spine_is_written_as_microseconds_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path / "targets.parquet",
        {KEY: minutes([0, 1, 2], "ns"), "target_a": [1.0, 2.0, 3.0], "target_b": [0.0, 0.0, 0.0]},
    )
    src = FeatureSource("f", feature(tmp_path, "f", [0, 1, 2]))
    out = merge(path, [src], tmp_path / "out.parquet")
    assert out[KEY].to_list() == [START + timedelta(minutes=m) for m in (0, 1, 2)]
    assert out["f__x"].to_list() == [0.0, 10.0, 20.0]


@pytest.mark.parametrize("row_group_size", [1, 3, 1000])
def test_unsorted_feature_files_of_any_row_group_size(
    tmp_path: Path, spine: Path, row_group_size: int
) -> None:
    keys = [9, 3, 14, 0, 7, -2, 1, 8, 5]
    src = FeatureSource("f", feature(tmp_path, "f", keys, row_group_size=row_group_size))
    for rows in (None, 3):
        out = merge(spine, [src], tmp_path / "out.parquet", row_group_rows=rows)
        expected = [10.0 * m if m in keys else None for m in spine_minutes(spine)]
        assert out["f__x"].to_list() == expected


# -- dtypes and schema ------------------------------------------------------------------------
def typed(tmp_path: Path, keys: Sequence[int], *, string: pa.DataType | None = None) -> Path:
    n = len(keys)
    return write(
        tmp_path / "typed.parquet",
        {
            KEY: minutes(keys),
            "f": pa.array([k + 0.25 for k in keys], pa.float64()),
            "i": pa.array([2**40 + k for k in keys], pa.int64()),
            "b": pa.array([k % 2 == 0 for k in keys], pa.bool_()),
            "s": pa.array(["eurusd"] * n, string or pa.string()),
        },
    )


DTYPES = {"f": "FLOAT64", "i": "INT64", "b": "BOOL", "s": "STRING"}


@pytest.mark.parametrize("string", [pa.string(), pa.large_string()])
def test_dtypes_are_kept(tmp_path: Path, spine: Path, string: pa.DataType) -> None:
    src = FeatureSource(
        "t", typed(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7], string=string), dtypes=DTYPES
    )
    merge_checkpoints(spine, TARGETS, [src], tmp_path / "out.parquet")
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert [schema.field(f"t__{c}").type for c in "fibs"] == [
        pa.float64(),
        pa.int64(),
        pa.bool_(),
        pa.string(),
    ]
    out = pl.read_parquet(tmp_path / "out.parquet")
    order = spine_minutes(spine)
    assert out["t__i"].to_list() == [2**40 + m if m < 8 else None for m in order]
    assert out["t__b"].to_list() == [m % 2 == 0 if m < 8 else None for m in order]
    assert out["t__s"].to_list() == ["eurusd" if m < 8 else None for m in order]


def test_output_is_deterministic(tmp_path: Path, spine: Path) -> None:
    sources = [
        FeatureSource("t", typed(tmp_path, range(10)), dtypes=DTYPES),
        FeatureSource("f", feature(tmp_path, "f", [5, 1, 3])),
    ]
    merge_checkpoints(spine, TARGETS, sources, tmp_path / "one.parquet")
    merge_checkpoints(spine, TARGETS, sources, tmp_path / "two.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()


def test_footer_has_row_groups_and_null_counts(tmp_path: Path, spine: Path) -> None:
    src = FeatureSource("f", feature(tmp_path, "f", [0, 2, 4, 6, 8]))
    report = merge_checkpoints(spine, TARGETS, [src], tmp_path / "out.parquet", row_group_rows=4)
    meta = pq.read_metadata(tmp_path / "out.parquet")
    assert (
        (report.rows, report.columns, report.row_groups)
        == (10, 5, 3)
        == (
            meta.num_rows,
            meta.num_columns,
            meta.num_row_groups,
        )
    )
    assert report.bytes_written == (tmp_path / "out.parquet").stat().st_size
    names = pq.read_schema(tmp_path / "out.parquet").names
    frame = pl.read_parquet(tmp_path / "out.parquet")
    for column in ("f__x", "target_b"):
        i = names.index(column)
        nulls = sum(meta.row_group(g).column(i).statistics.null_count for g in range(3))
        assert nulls == frame[column].null_count()


# -- the naive join as reference ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("row_group_rows", "piece_bytes"), [(None, None), (1, None), (4, None), (7, None), (None, 1)]
)
def test_output_equals_the_naive_polars_join(
    tmp_path: Path,
    spine: Path,
    monkeypatch: pytest.MonkeyPatch,
    row_group_rows: int | None,
    piece_bytes: int | None,
) -> None:
    if piece_bytes:  # one column per piece: every table is cut and stitched back
        monkeypatch.setattr("bqx_assets.core.merge.PIECE_BYTES", piece_bytes)
    rng = np.random.default_rng(3)
    sources = []
    for t in range(6):
        keys = rng.choice(np.arange(-3, 14), size=int(rng.integers(1, 15)), replace=False)
        columns: dict = {KEY: minutes(keys)}
        for c in range(int(rng.integers(1, 5))):
            values = rng.standard_normal(len(keys))
            columns[f"c{c}"] = pa.array(values, mask=rng.random(len(keys)) < 0.3)
        columns["flag"] = pa.array(rng.random(len(keys)) < 0.5)
        columns["label"] = pa.array([f"l{k % 3}" for k in keys])
        path = write(tmp_path / f"t{t}.parquet", columns, row_group_size=int(rng.integers(1, 6)))
        sources.append(FeatureSource(f"t{t}", path))
    ours = merge(spine, sources, tmp_path / "out.parquet", row_group_rows=row_group_rows)
    reference = naive(spine, sources)
    assert ours.columns == reference.columns
    for name in reference.columns:
        assert ours[name].equals(reference[name], check_names=True), name


# -- bad input --------------------------------------------------------------------------------
def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = 4
    end = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[start:end] = b"\xff" * (end - start)  # footer intact, every page unreadable
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing key", "has no interval_time column"),
        ("not parquet", "not a readable parquet file"),
        ("truncated", "not a readable parquet file"),
        ("corrupt pages", "not a readable parquet file"),
        ("empty", "has no rows"),
        ("wrong dtype", r"schema differs from the catalog: x is double, expected INT64"),
        ("missing expected column", r"missing expected columns \['y'\]"),
        ("missing column", r"missing columns \['y'\]"),
        ("no file", "does not exist"),
        ("key not a timestamp", "key column interval_time has type int64"),
    ],
)
def test_bad_input_is_one_clear_error_and_out_is_untouched(
    tmp_path: Path, spine: Path, case: str, expected: str
) -> None:
    good = FeatureSource("good", feature(tmp_path, "good", range(10)))
    path = feature(tmp_path, "bad_table", range(10))
    source = FeatureSource("bad_table", path)
    if case == "missing key":
        write(path, {"x": [1.0]})
    elif case == "not parquet":
        path.write_text("this is not parquet")
    elif case == "truncated":
        truncated(path)
    elif case == "corrupt pages":
        corrupt_pages(path)
    elif case == "empty":
        write(path, {KEY: minutes([]), "x": pa.array([], pa.float64())})
    elif case == "wrong dtype":
        source = FeatureSource("bad_table", path, dtypes={"x": "INT64"})
    elif case == "missing expected column":
        source = FeatureSource("bad_table", path, dtypes={"x": "FLOAT64", "y": "FLOAT64"})
    elif case == "missing column":
        source = FeatureSource("bad_table", path, columns=(("x", "bad__x"), ("y", "bad__y")))
    elif case == "no file":
        path.unlink()
    elif case == "key not a timestamp":
        write(path, {KEY: pa.array([1, 2], pa.int64()), "x": [1.0, 2.0]})
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the previous training file")
    with pytest.raises(MergeError, match=expected) as info:
        merge_checkpoints(spine, TARGETS, [good, source], out)
    assert "bad_table" in str(info.value) and str(path) in str(info.value)
    assert out.read_bytes() == b"the previous training file"
    assert [p.name for p in out.parent.iterdir()] == ["training.parquet"]  # no temp file left


def test_a_bad_spine_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path / "targets.parquet", {KEY: minutes([0, 1]), "target_a": [1.0, 2.0]})
    with pytest.raises(MergeError, match=r"targets\.parquet: missing columns \['target_b'\]"):
        merge_checkpoints(path, TARGETS, [], tmp_path / "out.parquet")
    write(path, {KEY: minutes([]), "target_a": pa.array([], pa.float64()), "target_b": []})
    with pytest.raises(MergeError, match=r"targets\.parquet: has no rows"):
        merge_checkpoints(path, TARGETS, [], tmp_path / "out.parquet")


# -- catalog order and names ------------------------------------------------------------------
def tiny_catalog() -> Catalog:
    def table(name: str, family: str, columns: dict[str, str]) -> Table:
        cols = tuple(Column(c, d) for c, d in columns.items())
        return Table(name, "features", family, "pair", ("eurusd",), cols)

    tables = [
        table("agg_bqx_eurusd", "agg", {"agg_mean_45": "FLOAT64", "agg_n": "INT64"}),
        table("base_bqx_eurusd", "base", {"bqx_45": "FLOAT64", "target_45": "FLOAT64"}),
    ]
    targets = TargetsTable(
        "targets_eurusd", "analytics", "eurusd", tuple(Column(t, "FLOAT64") for t in TARGETS)
    )
    return Catalog(
        "p", "features", "analytics", ("eurusd",), {t.name: t for t in tables}, {"eurusd": targets}
    )


def test_sources_for_pair_follow_the_catalog(tmp_path: Path, spine: Path) -> None:
    catalog = tiny_catalog()
    keys = minutes(range(10))
    write(
        tmp_path / "agg_bqx_eurusd.parquet",
        {KEY: keys, "agg_mean_45": [1.0] * 10, "agg_n": list(range(10))},
    )
    write(
        tmp_path / "base_bqx_eurusd.parquet",
        {KEY: keys, "bqx_45": [2.0] * 10, "target_45": [3.0] * 10},
    )
    sources = sources_for_pair(catalog, "eurusd", lambda t: tmp_path / f"{t.name}.parquet")
    assert [s.table for s in sources] == ["agg_bqx_eurusd", "base_bqx_eurusd"]
    assert sources[1].columns == (("bqx_45", "base_bqx__bqx_45"),)  # the leak is not written
    assert sources[0].dtypes == {"agg_mean_45": "FLOAT64", "agg_n": "INT64"}
    merge_checkpoints(spine, catalog.targets["eurusd"].targets, sources, tmp_path / "out.parquet")
    assert tuple(pq.read_schema(tmp_path / "out.parquet").names) == catalog.training_columns(
        "eurusd"
    )


def test_sources_for_pair_on_the_production_catalog() -> None:
    catalog = Catalog.load()
    sources = sources_for_pair(catalog, "eurusd", lambda t: Path(f"{t.name}.parquet"))
    assert [s.table for s in sources] == [t.name for t in catalog.tables_for("eurusd")]
    names = [n for s in sources for _, n in s.columns or ()]
    assert names == [f.name for f in catalog.feature_columns("eurusd")]


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_merges_a_folder_and_prints_json_last(
    tmp_path: Path, spine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    feature(folder, "b_table", range(10))
    feature(folder, "a_table", [1, 2, 3])
    out = tmp_path / "out.parquet"
    code = main(["merge", "--targets", str(spine), "--features", str(folder), "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) > 1
    result = json.loads(lines[-1])
    assert result["rows"] == 10 and result["columns"] == 7
    assert result["seconds"] >= 0 and result["peak_rss_bytes"] > 0
    assert pq.read_schema(out).names == [
        KEY,
        *TARGETS,
        "a_table__x",
        "a_table__n",
        "b_table__x",
        "b_table__n",
    ]


def test_cli_reports_bad_input_and_exits_non_zero(
    tmp_path: Path, spine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    feature(folder, "dup_table", [0, 1, 1])
    out = tmp_path / "out.parquet"
    code = main(["merge", "--targets", str(spine), "--features", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "bqx merge: error:" in err and "dup_table" in err and "duplicate" in err
    assert not out.exists()


# -- checkpoints read in place from GCS, output streamed to GCS --------------------------------
gcs_emulator = gcs_fixtures.gcs_emulator
gcs_bucket = gcs_fixtures.gcs_bucket
STREAM_CHUNK = 256 * 1024  # the smallest resumable-upload chunk: several chunks per test file


def wide(tmp_path: Path, name: str, keys: Sequence[int], columns: int, seed: int) -> Path:
    """A float table of random values (incompressible: the output spans many upload chunks),
    in several row groups, with a string column (dictionary pages)."""
    rng = np.random.default_rng(seed)
    data: dict = {KEY: minutes(keys)}
    for c in range(columns):
        values = rng.normal(size=len(keys))
        data[f"v{c}"] = pa.array(values, mask=values > 1.5)
    data["label"] = ["up" if k % 3 else "down" for k in keys]
    return write(tmp_path / f"{name}.parquet", data, row_group_size=max(1, len(keys) // 3))


def stored_inputs(
    storage: GCSStorage, spine: Path, features: Sequence[FeatureSource]
) -> tuple[StoredFile, list[FeatureSource]]:
    """The same files uploaded to `storage` and opened in place, checked against their
    stored size and CRC32C as the asset checks them against their manifests."""

    def upload(path: Path) -> StoredFile:
        info = storage.put_file(path, path.name)
        return storage.open_stored(path.name, size=info.size, crc32c=info.crc32c)

    return upload(spine), [replace(f, path=upload(Path(f.path))) for f in features]


def local_set(
    tmp_path: Path, rows: int = 3000, tables: int = 6
) -> tuple[Path, list[FeatureSource]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    order = list(range(rows))
    spine = write(
        tmp_path / "targets.parquet",
        {
            KEY: minutes(order),
            "target_a": [float(m) for m in order],
            "target_b": [None if m % 7 == 0 else -float(m) for m in order],
        },
        row_group_size=rows // 2,
    )
    features = [
        FeatureSource(f"t{i}", wide(tmp_path, f"t{i}", range(i * 10, rows + i * 10), 8, seed=i))
        for i in range(tables)
    ]
    return spine, features


@pytest.mark.emulator
def test_stored_checkpoints_merge_to_the_same_file_as_local_ones(
    gcs_bucket: str, tmp_path: Path
) -> None:
    spine, features = local_set(tmp_path / "local")
    local_out = tmp_path / "local_out" / "training.parquet"
    merge_checkpoints(spine, TARGETS, features, local_out)

    storage = GCSStorage(gcs_bucket, "ckpt", chunk_size=STREAM_CHUNK)
    stored_spine, stored = stored_inputs(storage, spine, features)
    before = storage.reads.requests
    from_gcs = tmp_path / "gcs_out" / "training.parquet"
    merge_checkpoints(stored_spine, TARGETS, stored, from_gcs)
    assert from_gcs.read_bytes() == local_out.read_bytes()
    assert storage.reads.requests > before  # read by ranges, not through a local copy

    output = GCSStorage(gcs_bucket, "out", chunk_size=STREAM_CHUNK)
    report = merge_checkpoints(stored_spine, TARGETS, stored, output.stage("training.parquet"))
    assert report.staged is not None
    assert report.staged.info.size > 3 * STREAM_CHUNK  # streamed in several chunks
    assert (report.staged.info.size, report.staged.info.crc32c) == (
        local_out.stat().st_size,
        file_crc32c(local_out),
    )
    # Column by column, too: the file read back from the object equals the local one.
    back = pq.ParquetFile(report.staged.file.open()).read()
    assert back.equals(pq.read_table(local_out))
    output.discard(report.staged)
    # What stays: the segments the object was composed from (its magic and its row groups),
    # for a later upload of training.parquet to compose from instead of sending their bytes.
    left = list(output.list())
    assert left and all(k.startswith(f"{SEGMENTS_FOLDER}/training.parquet/") for k in left)
    assert sum(output.stat(k).size for k in left) < report.staged.info.size  # not the footer


@pytest.mark.emulator
def test_a_checkpoint_replaced_while_merging_is_an_error_naming_it(
    gcs_emulator: gcs_fixtures.GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    spine, features = local_set(tmp_path / "local")
    storage = GCSStorage(gcs_bucket, "ckpt", chunk_size=STREAM_CHUNK)
    stored_spine, stored = stored_inputs(storage, spine, features)
    output = GCSStorage(gcs_bucket, "out", chunk_size=STREAM_CHUNK)
    published = output.write_bytes("training.parquet", b"the previous version")

    def replace_t3(line: str) -> None:
        if line.startswith("inputs checked"):  # after its footer and keys were read
            storage.put_file(Path(features[0].path), "t3.parquet")  # another file, new generation

    with pytest.raises(MergeError, match=r"table t3 \(gs://.*t3\.parquet\).*generation"):
        merge_checkpoints(
            stored_spine, TARGETS, stored, output.stage("training.parquet"), progress=replace_t3
        )
    names = sorted(b.name for b in gcs_emulator.client().list_blobs(gcs_bucket, prefix="out/"))
    assert names == ["out/training.parquet"]  # no temporary object left
    assert output.read_bytes("training.parquet") == b"the previous version"
    assert output.stat("training.parquet") == published

    # Checked against its manifest when opened: a changed object is refused before any read.
    t3 = Path(features[3].path)
    with pytest.raises(StorageError, match="changed since it was checked"):
        storage.open_stored("t3.parquet", size=t3.stat().st_size, crc32c=file_crc32c(t3))


_KILLED_MERGE = """
import sys, time
from pathlib import Path
from bqx_assets.core.storage.gcs import GCSStorage
from bqx_assets.core.merge.join import FeatureSource, merge_checkpoints

bucket, spine, marker, *tables = sys.argv[1:]
storage = GCSStorage(bucket, "out", chunk_size=256 * 1024)
upload = storage.stage("training_eurusd.parquet")

def stall(line):
    # Some chunks are on the server, the upload is not finished: the test kills us here.
    if line.startswith("merged") and upload.tell() > 2 * 1024 * 1024:
        time.sleep(0.5)
        # Written whole, then renamed: the test kills us as soon as the marker exists.
        Path(marker + ".part").write_text(str(upload.tell()))
        Path(marker + ".part").replace(marker)
        time.sleep(3600)

features = [FeatureSource(Path(t).stem, Path(t)) for t in tables]
merge_checkpoints(Path(spine), ["target_a", "target_b"], features, upload, progress=stall)
"""


@pytest.mark.emulator
def test_a_merge_killed_while_streaming_leaves_nothing_and_a_rerun_publishes(
    gcs_emulator: gcs_fixtures.GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    spine, features = local_set(tmp_path / "local", rows=4000, tables=12)
    expected = tmp_path / "expected.parquet"
    merge_checkpoints(spine, TARGETS, features, expected)
    output = GCSStorage(gcs_bucket, "out", chunk_size=STREAM_CHUNK)
    previous = output.write_bytes("training_eurusd.parquet", b"the previous version")
    marker = tmp_path / "sent"
    args = [gcs_bucket, str(spine), str(marker), *(str(f.path) for f in features)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MERGE, *args],
        env=gcs_emulator.env(),
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert int(marker.read_text()) > 2 * 1024 * 1024
    every = sorted(b.name for b in gcs_emulator.client().list_blobs(gcs_bucket))
    # Nothing half-written and no temporary object: the previous file, and the segments the
    # killed writer finished (whole objects, each checked as it was stored).
    segments = f"out/{SEGMENTS_FOLDER}/training_eurusd.parquet/"
    assert [n for n in every if not n.startswith(segments)] == ["out/training_eurusd.parquet"]
    assert output.stat("training_eurusd.parquet") == previous

    report = merge_checkpoints(spine, TARGETS, features, output.stage("training_eurusd.parquet"))
    assert report.staged is not None
    result = publish_training_file(
        output, TrainingFile("eurusd", None, passed=True, staged=report.staged)
    )
    assert result.published and result.previous_uri is not None
    published = output.stat("training_eurusd.parquet")
    assert published is not None
    assert (published.size, published.crc32c) == (expected.stat().st_size, file_crc32c(expected))
    every = sorted(b.name for b in gcs_emulator.client().list_blobs(gcs_bucket))
    assert not [n for n in every if n.endswith(".tmp")]
    # The dead writer's segments are gone but those the published file was composed from (its
    # magic and its row groups: fewer bytes than the file, which has a footer too).
    kept = [b for b in gcs_emulator.client().list_blobs(gcs_bucket) if b.name.startswith(segments)]
    meta = pq.ParquetFile(output.open_stored(
        "training_eurusd.parquet", size=published.size, crc32c=published.crc32c
    ).open()).metadata  # fmt: skip
    assert len(kept) == 1 + meta.num_row_groups
    assert sum(b.size for b in kept) < published.size
