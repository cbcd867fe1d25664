"""The training window as the last N trading days: resolved from the targets' partitions, moving
with an appended day, reading and merging only the chunks it overlaps."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.chunks import (
    TrainingWindow,
    chunk_inputs,
    pair_inputs,
    refresh_tables,
    resolve_window,
    stored_window,
)
from bqx_assets.core.errors import ExtractionError, WindowError
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge.join import merge_checkpoints
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse
from bqx_assets.defs.assets import (
    pair_checkpoints,
    pair_sources,
    shared_checkpoints,
    training_file,
)
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.resources import CheckpointStore, EmbeddedWarehouseResource, PipelineSettings
from bqx_assets_tests.conftest import MINI_PAIRS
from bqx_assets_tests.test_refresh import DAY, PAIR, START, CountingWarehouse, _correct_day

JAN = [date(2024, 1, d) for d in (29, 30, 31)]
FEB = [date(2024, 2, d) for d in (1, 2, 4)]
"""Thursday; Friday until the FX weekend (22:00); Sunday from 22:00: trading days appended."""


def _utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@pytest.fixture(scope="module")
def three_days_two_pairs(
    tmp_path_factory: pytest.TempPathFactory, mini: tuple[Catalog, Path]
) -> Path:
    """Both mini pairs (the shared step counts every pair's days), Monday 29 to Wednesday 31
    January 2024."""
    catalog, _ = mini
    path = tmp_path_factory.mktemp("window") / "w.duckdb"
    create_warehouse(path, catalog, pairs=MINI_PAIRS, rows=3 * DAY, start=START).close()
    return path


def _days(table: pa.Table) -> set[date]:
    return {k.date() for k in table.column(KEY).to_pylist()}


def _append_day(path: Path) -> None:
    # The only connection to the file while it is written (every other one is closed).
    wh = EmbeddedWarehouse(path, read_only=False)
    try:
        wh.append(DAY)
    finally:
        wh.close()


def _targets_rows(path: Path, catalog: Catalog, first: date, end: date) -> pa.Table:
    targets = catalog.targets[PAIR]
    wh = EmbeddedWarehouse(path)
    try:
        names = [KEY, *targets.targets]
        return wh.read(targets.dataset, targets.name, names, DateRange(_utc(first), _utc(end))).data
    finally:
        wh.close()


def _merge(catalog: Catalog, storage: LocalStorage, window: TrainingWindow, out: Path) -> pa.Table:
    resolved = stored_window(storage, catalog.targets[PAIR], window)
    inputs = pair_inputs(storage, catalog, PAIR, resolved)
    merge_checkpoints(inputs.spine, inputs.spine_columns, inputs.features, out)
    return pq.read_table(out)


def _same(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names
    for name in a.column_names:
        assert a.column(name).equals(b.column(name)), name


def test_a_rolling_window_reads_and_merges_only_the_chunks_it_overlaps(
    mini: tuple[Catalog, Path], three_days_two_pairs: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    path = tmp_path / "w.duckdb"
    shutil.copyfile(three_days_two_pairs, path)
    sources = [catalog.targets[PAIR], *catalog.tables_for(PAIR)]
    storage = LocalStorage(tmp_path / "ckpt")
    window = TrainingWindow(days=2)

    def refresh() -> tuple[list[tuple[str, DateRange, int]], datetime]:
        wh = CountingWarehouse(path)
        try:
            resolved = resolve_window(wh, [catalog.targets[PAIR]], window)
            refresh_tables(wh, sources, storage, window=resolved, threads=2)
            return wh.reads, resolved.training.start
        finally:
            wh.close()

    # Monday to Wednesday: the last two days are Tuesday and Wednesday. The pair's tables
    # (January is their newest month, cut by day) never read Monday, whose chunk ends where the
    # window starts; shared tables run into February, so their January is a closed month whose
    # chunk holds the window's start and is read whole, to stay whole as the window moves.
    reads, start = refresh()
    assert start == _utc(JAN[1])
    shared = {t.name for t in catalog.shared_tables()}
    assert {w.start for t, w, _ in reads if t not in shared} == {_utc(JAN[1])}
    assert {w.start for t, w, _ in reads if t in shared} == {_utc(JAN[0].replace(day=1))}
    merged = _merge(catalog, storage, window, tmp_path / "a.parquet")
    assert _days(merged) == set(JAN[1:])
    expected = _targets_rows(path, catalog, JAN[1], FEB[0])
    assert merged.column(KEY).to_pylist() == expected.column(KEY).to_pylist()

    # Thursday appended: the window moves to Wednesday and Thursday; Tuesday drops out.
    _append_day(path)
    reads, start = refresh()
    assert start == _utc(JAN[2])
    spine = {w.start for t, w, _ in reads if t == catalog.targets[PAIR].name}
    # One spine read from Wednesday (the append completed its last targets, which look ahead
    # into Thursday) through Thursday; Tuesday's day chunk is neither read nor merged.
    assert spine == {_utc(JAN[2])}
    merged = _merge(catalog, storage, window, tmp_path / "b.parquet")
    assert _days(merged) == {JAN[2], FEB[0]}
    assert merged.num_rows == _targets_rows(path, catalog, JAN[2], FEB[1]).num_rows

    # Friday and Sunday appended: the window is those two days, and January's chunks, which
    # end before it, are neither read nor merged; Thursday's chunks are not read either.
    _append_day(path)
    reads, start = refresh()
    assert start == _utc(FEB[1])
    assert reads and all(w.start >= _utc(FEB[1]) for _, w, _ in reads)
    resolved = stored_window(storage, catalog.targets[PAIR], window)
    inputs = chunk_inputs(storage, sources, resolved, PAIR)
    assert not any("2024-01" in str(p) for parts in inputs.values() for p in parts)
    merged = _merge(catalog, storage, window, tmp_path / "c.parquet")
    assert _days(merged) == set(FEB[1:])

    # The same window from scratch: the same training file.
    scratch = LocalStorage(tmp_path / "scratch")
    wh = EmbeddedWarehouse(path)
    try:
        refresh_tables(
            wh, sources, scratch, window=resolve_window(wh, [catalog.targets[PAIR]], window)
        )
    finally:
        wh.close()
    _same(merged, _merge(catalog, scratch, window, tmp_path / "scratch.parquet"))


def _resources(root: Path, catalog_path: Path, warehouse: Path, **window: object) -> dict:
    return {
        "warehouse": EmbeddedWarehouseResource(path=str(warehouse)),
        "checkpoints": CheckpointStore(root=str(root / "ckpt"), cache_dir=str(root / "cache")),
        "settings": PipelineSettings(
            catalog_path=str(catalog_path), workdir=str(root / "work"), min_rows=100, **window
        ),
        "training_io_manager": TrainingFileIOManager(output_root=str(root / "out")),
    }


def _build(res: dict, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    assert dg.materialize([shared_checkpoints], resources=res, instance=instance).success
    return dg.materialize(
        [pair_checkpoints, training_file], partition_key=PAIR, resources=res, instance=instance
    )


def test_the_training_file_holds_the_last_n_trading_days_and_moves_with_an_append(
    mini: tuple[Catalog, Path], three_days_two_pairs: Path, tmp_path: Path
) -> None:
    catalog, catalog_path = mini
    path = tmp_path / "w.duckdb"
    shutil.copyfile(three_days_two_pairs, path)
    res = _resources(tmp_path, catalog_path, path, window_days=2)
    instance = dg.DagsterInstance.ephemeral()
    published = tmp_path / "out" / f"training_{PAIR}.parquet"

    run = _build(res, instance)
    assert run.success
    data = pq.read_table(published)
    expected = _targets_rows(path, catalog, JAN[1], FEB[0])
    assert _days(data) == set(JAN[1:])
    assert data.column(KEY).to_pylist() == expected.column(KEY).to_pylist()
    target = catalog.targets[PAIR].targets[0]
    assert data.column(target).to_pylist() == expected.column(target).to_pylist()
    made = run.asset_materializations_for_node("pair_checkpoints")
    assert {m.metadata["window_start"].value for m in made} == {_utc(JAN[1]).isoformat()}

    _append_day(path)
    run = _build(res, instance)
    assert run.success
    data = pq.read_table(published)
    assert _days(data) == {JAN[2], FEB[0]}  # Tuesday dropped out, Thursday came in
    expected = _targets_rows(path, catalog, JAN[2], FEB[1])
    assert data.column(KEY).to_pylist() == expected.column(KEY).to_pylist()

    # A from-scratch build of the same window is the same file.
    scratch = tmp_path / "scratch"
    again = _build(_resources(scratch, catalog_path, path, window_days=2), instance)
    assert again.success
    _same(data, pq.read_table(scratch / "out" / f"training_{PAIR}.parquet"))


def test_a_start_and_a_rolling_length_together_are_one_error_and_nothing_is_written(
    mini: tuple[Catalog, Path],
    three_days_two_pairs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(WindowError, match=r"both a start .* and a rolling length \(5 trading"):
        TrainingWindow(start=_utc(JAN[0]), days=5)
    with pytest.raises(WindowError, match="at least 1 day"):
        TrainingWindow(days=0)
    settings = PipelineSettings(window_start="2024-01-30", window_days=2)
    with pytest.raises(WindowError, match="BQX_WINDOW_START or BQX_WINDOW_DAYS"):
        settings.training_window()

    # Set through the environment: refused when the definitions load.
    from bqx_assets.defs.environment import resources_for

    monkeypatch.setenv("BQX_WINDOW_START", "2024-01-30")
    monkeypatch.setenv("BQX_WINDOW_DAYS", "2")
    with pytest.raises(WindowError, match="both a start"):
        resources_for("local")

    # Set on the resource: the step fails before it reads or writes anything.
    _, catalog_path = mini
    res = _resources(
        tmp_path, catalog_path, three_days_two_pairs, window_start="2024-01-30", window_days=2
    )
    run = dg.materialize(
        [pair_checkpoints], partition_key=PAIR, resources=res, raise_on_error=False
    )
    assert not run.success
    failure = next(e for e in run.all_events if e.is_step_failure)
    assert "both a start" in str(failure.step_failure_data.error)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").rglob("*.parquet"))


def test_a_spine_made_for_another_window_is_refused_by_name(
    mini: tuple[Catalog, Path], three_days_two_pairs: Path, tmp_path: Path
) -> None:
    """A spine checkpointed for a fixed window starting at noon does not hold that day on its
    own: the merge names the targets table and the day instead of training on half of it."""
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    wh = EmbeddedWarehouse(three_days_two_pairs)
    try:
        noon = DateRange(_utc(JAN[1]).replace(hour=12))
        refresh_tables(wh, [catalog.targets[PAIR]], storage, window=noon)
    finally:
        wh.close()
    match = rf"targets_{PAIR}: the stored spine chunks do not hold 2024-01-30 of the last 2"
    with pytest.raises(ExtractionError, match=match):
        stored_window(storage, catalog.targets[PAIR], TrainingWindow(days=2))
    with pytest.raises(ExtractionError, match=rf"targets_{PAIR}: no stored spine chunk"):
        stored_window(
            LocalStorage(tmp_path / "empty"), catalog.targets[PAIR], TrainingWindow(days=2)
        )


def test_the_rolling_start_is_the_earliest_of_the_pairs_found_or_one_clear_error(
    mini: tuple[Catalog, Path], three_days_two_pairs: Path
) -> None:
    catalog, _ = mini
    spines = [catalog.targets[p] for p in MINI_PAIRS]
    gone = dataclasses.replace(catalog.targets[PAIR], name="targets_nopair")
    window = TrainingWindow(days=2, end=_utc(JAN[2]))

    class NoPartitions(EmbeddedWarehouse):
        reports_partitions = False

    wh = EmbeddedWarehouse(three_days_two_pairs)
    try:
        # The window's end bounds the days counted: Monday and Tuesday before Wednesday.
        resolved = resolve_window(wh, [*spines, gone], window)
        assert resolved.rolling and resolved.training == DateRange(_utc(JAN[0]), _utc(JAN[2]))
        with pytest.raises(WindowError, match=r"targets_nopair: not found in the warehouse"):
            resolve_window(wh, [gone], window)
        with pytest.raises(WindowError, match=r"no day with rows for the last 2 trading days"):
            resolve_window(wh, spines, TrainingWindow(days=2, end=_utc(JAN[0])))
    finally:
        wh.close()
    flat = NoPartitions(three_days_two_pairs)
    try:
        with pytest.raises(WindowError, match="reports no day partitions"):
            resolve_window(flat, spines, window)
        fixed = TrainingWindow(start=_utc(JAN[1]))
        assert resolve_window(flat, spines, fixed).training == DateRange(_utc(JAN[1]))
    finally:
        flat.close()


def test_observed_versions_follow_the_days_the_rolling_window_reads(
    mini: tuple[Catalog, Path], three_days_two_pairs: Path, tmp_path: Path
) -> None:
    """With the last two days (Tuesday, Wednesday), a corrected Monday of a pair table changes
    no observed version (no chunk of the window holds it), a corrected Tuesday changes its
    family's and no other's."""
    catalog, catalog_path = mini
    path = tmp_path / "w.duckdb"
    shutil.copyfile(three_days_two_pairs, path)
    res = _resources(tmp_path, catalog_path, path, window_days=2)
    job = dg.Definitions(
        assets=[pair_sources],
        jobs=[dg.define_asset_job("observe", dg.AssetSelection.assets(pair_sources))],
        resources=res,
    ).resolve_job_def("observe")

    def versions() -> dict[str, str]:
        run = job.execute_in_process(partition_key=PAIR)
        assert run.success
        return {
            o.asset_key.path[-1]: o.tags["dagster/data_version"]
            for o in run.asset_observations_for_node("pair_sources")
        }

    before = versions()
    assert set(before) >= {"agg", "targets"}
    _correct_day(path, catalog, f"agg_{PAIR}", JAN[0])
    assert versions() == before
    _correct_day(path, catalog, f"agg_{PAIR}", JAN[1])
    after = versions()
    assert {f for f in after if after[f] != before[f]} == {"agg"}
