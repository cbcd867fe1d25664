"""The footer walk: null counts and ranges summed over row groups; footers too large to parse in
bounded memory and nested columns are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.stats import check_footer_size, fill_missing_nulls, footer_stats
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.layout import KEY
from bqx_assets_tests.core.gate.handmade import ROW_GROUP, ROWS, build, good_columns, run, write


def test_null_counts_and_ranges_are_summed_over_every_row_group(tmp_path: Path) -> None:
    values = np.arange(ROWS, dtype=np.float64)
    mask = np.arange(ROWS) % 10 == 0  # nulls in every row group
    columns = {"x": pa.array(values, mask=mask), "s": pa.array(["a"] * ROWS)}
    path = write(tmp_path / "t.parquet", columns)
    pf = pq.ParquetFile(path)
    stats = footer_stats(pf, path, want_minmax={0})
    assert stats.names == ["x", "s"] and pf.metadata.num_row_groups == 4
    assert stats.nulls.tolist() == [20, 0]
    assert stats.last_group_rows == ROWS - 3 * ROW_GROUP
    assert stats.last_group_nulls.tolist() == [int(mask[3 * ROW_GROUP :].sum()), 0]
    assert (stats.mins[0], stats.maxs[0]) == (1.0, ROWS - 1.0)  # row 0 is null
    assert np.isnan(stats.mins[1])  # not numeric: no range
    # The leak check's ranges: the middle row group's, of float columns asked for.
    middle = slice(stats.sample_group * ROW_GROUP, (stats.sample_group + 1) * ROW_GROUP)
    kept = values[middle][~mask[middle]]
    assert stats.minmax == {0: (kept.min(), kept.max())}


def test_columns_without_statistics_are_counted_from_their_data(tmp_path: Path) -> None:
    values = pa.array(np.ones(ROWS), mask=np.arange(ROWS) < 7)
    path = write(tmp_path / "t.parquet", {KEY: pa.array(np.arange(ROWS)), "x": values},
                 write_statistics=[KEY])  # fmt: skip
    pf = pq.ParquetFile(path)
    stats = footer_stats(pf, path, set())
    assert stats.nulls.tolist() == [0, -1]
    assert fill_missing_nulls(pf, stats) == 1
    assert stats.nulls.tolist() == [0, 7]


def test_nested_columns_raise_naming_the_file(tmp_path: Path, expectation: Expectation) -> None:
    cols = good_columns(expectation)
    cols["agg_bqx__agg_mean_45"] = pa.array([{"a": 1.0, "b": 2.0}] * ROWS)
    path = write(tmp_path / "nested.parquet", cols)
    with pytest.raises(ValidationError, match=r"nested\.parquet.*flat columns"):
        run(path, expectation)


def test_a_footer_too_large_to_parse_in_bounded_memory_is_refused(
    tmp_path: Path, expectation: Expectation
) -> None:
    path = build(tmp_path, expectation)
    with pytest.raises(ValidationError, match=r"eurusd.*footer.*fewer row groups"):
        run(path, expectation, Thresholds(min_rows=1, max_footer_bytes=1_000))
    footer = int.from_bytes(path.read_bytes()[-8:-4], "little")
    check_footer_size(path, "eurusd", footer)  # at the limit: accepted
    with pytest.raises(ValidationError, match="max_footer_bytes"):
        check_footer_size(path, "eurusd", footer - 1)


def test_what_is_not_parquet_is_left_to_the_parquet_reader(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"PAR1")
    text = tmp_path / "text"
    text.write_bytes(b"x" * 100)
    for path in (short, text):
        check_footer_size(path, "eurusd", 1)  # no footer length to judge
