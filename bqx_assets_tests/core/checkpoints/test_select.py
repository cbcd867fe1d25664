"""The stored chunks a merge reads: each table's current, verified chunks inside the window; the
window a pair's stored spine was made for."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import refresh_tables
from bqx_assets.core.checkpoints.select import (
    current_chunks,
    require_chunks,
    stored_window,
)
from bqx_assets.core.checkpoints.window import (
    ALL_TIME,
    ResolvedWindow,
    TrainingWindow,
    table_window,
)
from bqx_assets.core.errors import ExtractionError, MergeError
from bqx_assets.core.merge import InputTable, merge_checkpoints, pair_inputs
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.core.checkpoints.conftest import PAIR, pair_sources, utc

JAN = [date(2024, 1, d) for d in (29, 30, 31)]


@pytest.fixture(scope="module")
def refreshed(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path_factory: pytest.TempPathFactory
) -> LocalStorage:
    """The pair's chunks (a day chunk per day of the pair's tables, whose newest month is
    January; the shared tables' January month and 1 February), made once for the module: read
    only; a test that changes them takes a private copy."""
    storage = LocalStorage(tmp_path_factory.mktemp("select") / "ckpt")
    wh = EmbeddedWarehouse(three_days)
    try:
        refresh_tables(wh, pair_sources(mini[0]), storage, threads=2)
    finally:
        wh.close()
    return storage


def _private(storage: LocalStorage, tmp_path: Path) -> LocalStorage:
    shutil.copytree(storage.root, tmp_path / "ckpt")
    return LocalStorage(tmp_path / "ckpt")


# -- current_chunks ---------------------------------------------------------------------------
def test_a_table_s_chunks_inside_the_window_in_key_order(
    mini: tuple[Catalog, Path], refreshed: LocalStorage
) -> None:
    catalog, _ = mini
    table = catalog.table(f"agg_{PAIR}")
    chosen = current_chunks(refreshed, table, ALL_TIME)
    assert [m.first for _, m in chosen] == [d.isoformat() for d in JAN]
    assert [k for k, _ in chosen] == [f"{PAIR}/{table.name}/{d}_{d}.parquet" for d in JAN]
    # Only the chunks inside the window; those ending at or before `after` are left out.
    tuesday = DateRange(utc(JAN[1]), utc(JAN[2]))
    assert [m.first for _, m in current_chunks(refreshed, table, tuesday)] == ["2024-01-30"]
    after = current_chunks(refreshed, table, ALL_TIME, after=utc(JAN[1]))
    assert [m.first for _, m in after] == ["2024-01-30", "2024-01-31"]
    with pytest.raises(ExtractionError, match=rf"agg_{PAIR}: no verified chunk in the window"):
        current_chunks(refreshed, table, DateRange(start=utc(date(2024, 3, 1))))
    with pytest.raises(ExtractionError, match=rf"agg_{PAIR}: no verified chunk"):
        current_chunks(LocalStorage(refreshed.root.parent / "empty"), table, ALL_TIME)


def test_a_chunk_that_differs_from_its_manifest_is_refused_by_name(
    mini: tuple[Catalog, Path], refreshed: LocalStorage, tmp_path: Path
) -> None:
    catalog, _ = mini
    table = catalog.table(f"tmp_{PAIR}")
    storage = _private(refreshed, tmp_path)
    key = f"{PAIR}/{table.name}/2024-01-30_2024-01-30.parquet"
    path = storage.root / key
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(
        ExtractionError,
        match=rf"tmp_{PAIR}: chunk .*{key} does not match its manifest .* re-run its checkpoint",
    ):
        current_chunks(storage, table, ALL_TIME)
    # Outside the window it is not read, so not refused.
    monday = DateRange(utc(JAN[0]), utc(JAN[1]))
    assert len(current_chunks(storage, table, monday)) == 1
    path.unlink()
    with pytest.raises(ExtractionError, match="does not match its manifest"):
        current_chunks(storage, table, ALL_TIME)


def test_overlapping_chunks_are_refused_by_name(
    mini: tuple[Catalog, Path], refreshed: LocalStorage, tmp_path: Path
) -> None:
    """Two chunks holding the same day would repeat its rows in the merge."""
    catalog, _ = mini
    table = catalog.table(f"tmp_{PAIR}")
    storage = _private(refreshed, tmp_path)
    folder = storage.root / PAIR / table.name
    (folder / "2024-01-30_2024-01-31.parquet").write_bytes(
        (folder / "2024-01-30_2024-01-30.parquet").read_bytes()
    )
    record = json.loads((folder / "2024-01-30_2024-01-30.manifest.json").read_bytes())
    record["last"] = "2024-01-31"
    record["window"][1] = utc(date(2024, 2, 1)).isoformat()
    (folder / "2024-01-30_2024-01-31.manifest.json").write_text(json.dumps(record))
    with pytest.raises(ExtractionError, match=rf"tmp_{PAIR}: chunks .* overlap; re-run"):
        current_chunks(storage, table, ALL_TIME)


# -- require_chunks ---------------------------------------------------------------------------
def test_every_table_needs_verified_chunks_and_those_without_are_named(
    mini: tuple[Catalog, Path], refreshed: LocalStorage, tmp_path: Path
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    chosen = require_chunks(refreshed, sources, ALL_TIME, f"pair {PAIR}")
    assert list(chosen) == [s.name for s in sources]
    shared = {t.name for t in catalog.shared_tables()}
    assert {n: len(c) for n, c in chosen.items()} == {
        s.name: 2 if s.name in shared else 3 for s in sources
    }
    with pytest.raises(ExtractionError, match=f"pair {PAIR}: the catalog lists no tables"):
        require_chunks(refreshed, [], ALL_TIME, f"pair {PAIR}")
    storage = _private(refreshed, tmp_path)
    for name in (f"agg_{PAIR}", "mkt_sentiment"):
        owner = "shared" if name == "mkt_sentiment" else PAIR
        for path in (storage.root / owner / name).iterdir():
            path.unlink()
    with pytest.raises(
        ExtractionError,
        match=rf"pair {PAIR}: 2 of 15 tables have no verified checkpoint: agg_{PAIR}, "
        rf"mkt_sentiment \(first: .*agg_{PAIR}: no verified chunk",
    ):
        require_chunks(storage, sources, ALL_TIME, f"pair {PAIR}")


def test_a_rolling_window_takes_each_table_s_chunks_for_its_own_window(
    mini: tuple[Catalog, Path], refreshed: LocalStorage
) -> None:
    """The spine's day chunks from the window's first day; a feature table's chunks from the
    start of the chunk holding it (the month's start), those ending before it left out."""
    catalog, _ = mini
    window = ResolvedWindow(DateRange(utc(JAN[1])), rolling=True)
    sources = pair_sources(catalog)
    chosen = require_chunks(refreshed, sources, window, f"pair {PAIR}")
    shared = {t.name for t in catalog.shared_tables()}
    # The shared tables run 10 minutes into February: January is a closed month for them.
    assert {n: [m.first for _, m in c] for n, c in chosen.items()} == {
        s.name: ["2024-01-01", "2024-02-01"] if s.name in shared else ["2024-01-30", "2024-01-31"]
        for s in sources
    }
    assert table_window(window, catalog.table(f"agg_{PAIR}")).after == utc(JAN[1])


# -- stored_window ----------------------------------------------------------------------------
def test_the_window_of_a_training_file_is_the_one_its_spine_was_made_for(
    mini: tuple[Catalog, Path], refreshed: LocalStorage
) -> None:
    catalog, _ = mini
    spine = catalog.targets[PAIR]
    fixed = TrainingWindow(start=utc(JAN[1]))
    assert stored_window(refreshed, spine, fixed) == ResolvedWindow(DateRange(utc(JAN[1])))
    assert stored_window(refreshed, spine, TrainingWindow(days=2)) == ResolvedWindow(
        DateRange(utc(JAN[1])), rolling=True
    )
    ending = TrainingWindow(days=1, end=utc(JAN[2]))
    assert stored_window(refreshed, spine, ending).training == DateRange(utc(JAN[1]), utc(JAN[2]))


def test_a_spine_made_for_another_window_is_refused_by_name(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    """A spine checkpointed for a fixed window starting at noon does not hold that day on its
    own: the merge names the targets table and the day instead of training on half of it."""
    catalog, _ = mini
    spine = catalog.targets[PAIR]
    storage = LocalStorage(tmp_path / "ckpt")
    wh = EmbeddedWarehouse(three_days)
    try:
        noon = DateRange(utc(JAN[1]) + timedelta(hours=12))
        refresh_tables(wh, [spine], storage, window=noon)
    finally:
        wh.close()
    match = rf"targets_{PAIR}: the stored spine chunks do not hold 2024-01-30 of the last 2"
    with pytest.raises(ExtractionError, match=match):
        stored_window(storage, spine, TrainingWindow(days=2))
    with pytest.raises(ExtractionError, match=rf"targets_{PAIR}: no stored spine chunk"):
        stored_window(LocalStorage(tmp_path / "empty"), spine, TrainingWindow(days=2))


def test_a_chunk_listed_twice_is_refused_by_the_merge_naming_the_table(
    mini: tuple[Catalog, Path], refreshed: LocalStorage, tmp_path: Path
) -> None:
    """Keys repeated across a table's chunks would repeat spine rows: the merge names the
    table, and nothing is written."""
    catalog, _ = mini
    inputs = pair_inputs(refreshed, catalog, PAIR, ALL_TIME)
    table = next(t for t in inputs.tables if t.name == f"tmp_{PAIR}")
    twice = InputTable(table.name, (*table.chunks, table.chunks[-1]), table.columns, table.dtypes)
    out = LocalStorage(tmp_path / "out")
    with pytest.raises(MergeError, match=rf"table tmp_{PAIR}.*duplicate"):
        merge_checkpoints(inputs.spine, [twice], out.stage("out.parquet"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
