"""The embedded warehouse: the catalog's tables, per-day states, appends, bounded memory."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bqx_assets.core.catalog import Catalog, catalog_from_schema
from bqx_assets.core.checkpoints.schema import expected_schema
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.warehouse import Cut, DateRange, embedded
from bqx_assets.core.warehouse.embedded import (
    REVISED_ROWS,
    EmbeddedWarehouse,
    create_warehouse,
    warehouse_params,
)
from bqx_assets.core.warehouse.synthetic import (
    DEFAULT_SEED,
    DEFAULT_START,
    Series,
    feature_table_data,
    targets_table_data,
)
from bqx_assets_tests.conftest import Warehouses


def test_information_schema_refreshes_to_the_same_catalog(
    mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    catalog, _ = mini
    wh = EmbeddedWarehouse(mini_warehouse)
    refreshed = catalog_from_schema(
        wh.information_schema(),
        project=catalog.project,
        features_dataset=catalog.features_dataset,
        targets_dataset=catalog.targets_dataset,
        pairs=catalog.pairs,
    )
    assert refreshed.to_dict() == catalog.to_dict()


def test_read_applies_window_order_and_types(
    mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    catalog, _ = mini
    wh = EmbeddedWarehouse(mini_warehouse)
    table = catalog.table("div_bqx_eurusd")
    start = datetime(2024, 1, 1, 2, 0, tzinfo=UTC)
    end = datetime(2024, 1, 1, 3, 0, tzinfo=UTC)
    read = wh.read(table.dataset, table.name, expected_schema(table).names, DateRange(start, end))
    assert read.data.num_rows == 60
    assert read.data.schema.field("interval_time").type == pa.timestamp("us", tz="UTC")
    assert read.data.schema.field("div_short_leading").type == pa.bool_()
    assert read.data.column(0)[0].as_py() == start
    assert read.bytes_read == 60 * (8 + 1 + 8 * 5)


def test_append_changes_the_source_state(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=50)
    wh = EmbeddedWarehouse(path, read_only=False)
    before = wh.state(small.features_dataset, "agg_eurusd")
    after = wh.append_minutes(small.features_dataset, "agg_eurusd", 5)
    assert after.rows == before.rows + 5 and after.last_modified > before.last_modified
    assert wh.state(small.features_dataset, "tmp_eurusd").rows == 50


def test_append_to_a_read_only_warehouse_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = warehouses.copy(tmp_path / "warehouse.duckdb", small, pairs=["eurusd"], rows=50)
    wh = EmbeddedWarehouse(path)
    with pytest.raises(
        WarehouseError, match=r"cannot append: .*warehouse\.duckdb is open read-only"
    ):
        wh.append(10)
    with pytest.raises(WarehouseError, match=r"cannot append to .*agg_eurusd: .* read-only"):
        wh.append_minutes(small.features_dataset, "agg_eurusd", 10)
    assert wh.params()["rows"] == "50"
    assert wh.state(small.features_dataset, "agg_eurusd").rows == 50


def test_append_minutes_to_a_targets_table_fills_its_old_look_ahead(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=1_000)
    wh = EmbeddedWarehouse(path, read_only=False)
    targets = small.targets["eurusd"].name
    assert wh.append_minutes(small.targets_dataset, targets, 30).rows == 1_030
    expected = targets_table_data(small.targets["eurusd"], wh.series().grown(30))
    stored = _stored(wh, small.targets_dataset, targets)
    for column in expected.schema.names:
        want = expected.column(column).cast(stored.schema.field(column).type)
        assert stored.column(column).equals(want), column


def test_every_connection_has_bounded_memory_and_threads(mini_warehouse: Path) -> None:
    wh = EmbeddedWarehouse(mini_warehouse)
    limit, threads = (
        wh._cursor()
        .execute("SELECT current_setting('memory_limit'), current_setting('threads')")
        .fetchone()
    )
    number, unit = limit.split()
    assert float(number) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit] <= 2**30
    assert int(threads) <= 2


def test_per_day_partition_states(mini: tuple[Catalog, Path], mini_warehouse: Path) -> None:
    catalog, _ = mini
    wh = EmbeddedWarehouse(mini_warehouse)
    days = wh.partitions(catalog.features_dataset, "agg_eurusd")
    assert [str(d.day) for d in days] == ["2024-01-01"]  # 600 minutes from Monday 00:00
    assert sum(d.rows for d in days) == wh.state(catalog.features_dataset, "agg_eurusd").rows


def test_append_adds_the_next_minutes_everywhere_and_updates_only_their_days(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    path = warehouses.copy(
        tmp_path / "w.duckdb", catalog, pairs=["eurusd"], rows=1_500, faults=["stale:tmp_eurusd"]
    )
    before = EmbeddedWarehouse(path)
    old_states = before.states(catalog.features_dataset, ["agg_eurusd", "tmp_eurusd"])
    old_days = before.partitions(catalog.features_dataset, "agg_eurusd")
    old_rows = before.read(
        catalog.features_dataset, "agg_eurusd", ["interval_time", "agg_mean_45"], DateRange()
    ).data
    before.close()
    writer = EmbeddedWarehouse(path, read_only=False)
    added = writer.append(120)
    writer.close()
    assert added["agg_eurusd"] == 120 and added["tmp_eurusd"] == 0  # a stale source stays
    wh = EmbeddedWarehouse(path)
    assert wh.params()["rows"] == "1620"
    agg = wh.state(catalog.features_dataset, "agg_eurusd")
    assert agg.rows == 1_620 and agg.last_modified > old_states["agg_eurusd"].last_modified
    assert wh.state(catalog.features_dataset, "tmp_eurusd") == old_states["tmp_eurusd"]
    assert wh.state(catalog.targets_dataset, "targets_eurusd").rows == 1_620
    days = wh.partitions(catalog.features_dataset, "agg_eurusd")
    # 1,500 minutes from Monday 00:00 end on Tuesday at 01:00: the append adds to Tuesday only.
    assert [(str(d.day), d.rows) for d in days] == [("2024-01-01", 1440), ("2024-01-02", 180)]
    assert days[0] == old_days[0]
    assert days[-1].last_modified > old_days[-1].last_modified
    # The series continues: the old rows are unchanged, the new ones follow on.
    rows = wh.read(
        catalog.features_dataset, "agg_eurusd", ["interval_time", "agg_mean_45"], DateRange()
    ).data
    assert rows.slice(0, old_rows.num_rows).equals(old_rows)
    step = np.abs(np.diff(rows.column("agg_mean_45").to_numpy()[1_490:1_510])).max()
    assert step < 0.01
    assert warehouse_params(path)["plan_rows"] == "1500"


def test_missing_warehouse_and_table_are_clear_errors(tmp_path: Path, mini_warehouse: Path) -> None:
    with pytest.raises(WarehouseError, match="bqx warehouse create"):
        EmbeddedWarehouse(tmp_path / "none.duckdb")
    wh = EmbeddedWarehouse(mini_warehouse)
    with pytest.raises(WarehouseError, match=r"bqx_ml_v3_features_v2\.agg_usdjpy does not exist"):
        wh.state("bqx_ml_v3_features_v2", "agg_usdjpy")
    with pytest.raises(WarehouseError, match=r"cannot read bqx_ml_v3_features_v2\.agg_usdjpy"):
        wh.read("bqx_ml_v3_features_v2", "agg_usdjpy", ["interval_time"], DateRange())


# Peaks from VmHWM (metrics.peak_rss_bytes): ru_maxrss would carry pytest's own high-water mark
# into the child across fork and exec.
_MEASURE = """
import sys
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.metrics import peak_rss_bytes
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse
from bqx_assets.core.warehouse import DateRange, embedded
catalog = Catalog.load()
create_warehouse(sys.argv[1], catalog, pairs=["eurusd"], rows=int(sys.argv[2])).close()
created = peak_rss_bytes()
wh = EmbeddedWarehouse(sys.argv[1])
for table in catalog.tables_for("eurusd"):
    wh.read(table.dataset, table.name, ["interval_time", *(c.name for c in table.columns)],
            DateRange())
print(created, peak_rss_bytes())
"""


@pytest.mark.slow
def test_creation_and_reads_stay_in_bounded_memory(tmp_path: Path) -> None:
    """A whole pair (668 tables) at 20,000 rows: creation, then reading every table back, stay
    under 2 GiB: DuckDB's capped buffer pool, a commit batch and the table at hand (1.46 GiB
    measured here; 1.84 GiB for a pair at 177,748 rows)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "w.duckdb"), "20000"],
        capture_output=True, text=True, check=True, timeout=1_800,
    )  # fmt: skip
    created, read = map(int, done.stdout.split()[-2:])
    assert created < 2 * 2**30 and read < 2 * 2**30, (created, read)


def test_a_bad_start_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bqx_assets.cli import main

    path = tmp_path / "w.duckdb"
    argv = ["warehouse", "create", "--rows", "20", "--path", str(path), "--start", "Monday"]
    assert main(argv) == 1
    assert "--start 'Monday' is not an ISO 8601 date and time" in capsys.readouterr().err
    assert not path.exists() and list(tmp_path.iterdir()) == []


def _generated(catalog: Catalog, name: str, series: Series) -> pa.Table:
    for targets in catalog.targets.values():
        if targets.name == name:
            return targets_table_data(targets, series)
    return feature_table_data(catalog.table(name), series)


def _stored(wh: EmbeddedWarehouse, dataset: str, name: str) -> pa.Table:
    sql = f'SELECT * FROM "{dataset}"."{name}" ORDER BY interval_time'
    return wh._cursor().execute(sql).to_arrow_table()


def test_an_appended_warehouse_equals_one_generated_at_the_grown_length(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    """Every table after create(N) + append(M) holds exactly the generator's rows at N + M
    (values and nulls): the targets' look-ahead nulls of the old tail are filled. The creation
    size stays N, as it fixes the null model (warm-ups, late starts, outages), so the reference
    is the generator at Series(plan_rows=N, rows=N + M), not a warehouse created at N + M."""
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    # 2,940 minutes from Monday 00:00 end on Wednesday at 01:00: the targets' old tail (the last
    # 105 rows) spans Tuesday's end and Wednesday; Monday is not touched.
    rows, minutes = 2_940, 300
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=rows)
    targets = small.targets["eurusd"].name
    before = EmbeddedWarehouse(path)
    old_days = {d.day: d for d in before.partitions(small.targets_dataset, targets)}
    old_tail = _stored(before, small.targets_dataset, targets).slice(rows - REVISED_ROWS)
    before.close()
    late = "target_bqx45_h105"
    assert old_tail.column(late).null_count > 0  # look-ahead: the minutes after were unknown

    wh = EmbeddedWarehouse(path, read_only=False)
    added = wh.append(minutes)
    grown = Series(DEFAULT_START, rows, rows + minutes, DEFAULT_SEED)
    assert wh.series() == grown and added[targets] == minutes
    tables = [(small.targets_dataset, targets)]
    tables += [(t.dataset, t.name) for t in small.tables_for("eurusd")]
    for dataset, name in tables:
        stored = _stored(wh, dataset, name)
        expected = _generated(small, name, grown)
        assert stored.schema.names == expected.schema.names, name
        for column in expected.schema.names:
            want = expected.column(column).cast(stored.schema.field(column).type)
            assert stored.column(column).equals(want), (name, column)
        assert sum(d.rows for d in wh.partitions(dataset, name)) == stored.num_rows, name
        assert wh.state(dataset, name).rows == stored.num_rows, name
    filled = _stored(wh, small.targets_dataset, targets).slice(rows - REVISED_ROWS, REVISED_ROWS)
    assert filled.column(late).null_count == 0
    # The days of the rewritten rows changed (a refresh re-reads them); Monday did not.
    days = {d.day: d for d in wh.partitions(small.targets_dataset, targets)}
    monday, tuesday, wednesday = sorted(old_days)
    assert days[monday] == old_days[monday]
    for day in (tuesday, wednesday):
        assert days[day].last_modified > old_days[day].last_modified
    assert [days[d].rows for d in sorted(days)] == [1440, 1440, 60 + minutes]


def test_tables_made_ahead_on_threads_are_written_exactly_as_generated(
    tmp_path: Path, mini: tuple[Catalog, Path]
) -> None:
    """Creation generates tables on a thread pool ahead of the writer: every table of the
    warehouse (two pairs, so pair, cov and shared tables) still equals the generator's output
    for it, in the same order of rows, values and nulls, with the seed it was given."""
    catalog, _ = mini
    rows, seed = 1_500, 11
    path = tmp_path / "w.duckdb"
    create_warehouse(path, catalog, pairs=["eurusd", "gbpusd"], rows=rows, seed=seed).close()
    wh = EmbeddedWarehouse(path)
    series = Series(DEFAULT_START, rows, rows, seed)
    subset = catalog.subset(["eurusd", "gbpusd"])
    tables = {(subset.targets_dataset, t.name) for t in subset.targets.values()}
    tables |= {(t.dataset, t.name) for p in subset.pairs for t in subset.tables_for(p)}
    for dataset, name in sorted(tables):
        stored = _stored(wh, dataset, name)
        expected = _generated(subset, name, series)
        assert stored.schema.names == expected.schema.names, name
        for column in expected.schema.names:
            want = expected.column(column).cast(stored.schema.field(column).type)
            assert stored.column(column).equals(want), (name, column)


def test_tables_made_ahead_come_in_order_within_the_byte_bound_and_stop_at_an_error() -> None:
    started: list[int] = []
    outstanding: list[int] = []  # sizes started and not yet taken, at each start
    taken: set[int] = set()
    sizes = [10, 30, 10, 10, 50, 10, 10]
    lock = threading.Lock()

    def maker(i: int) -> Callable[[], pa.Table]:
        def make() -> pa.Table:
            with lock:
                started.append(i)
                outstanding.append(sum(sizes[j] for j in started if j not in taken))
            time.sleep(0.01 * (len(sizes) - i))  # later tables are ready sooner
            if i == 5:
                raise WarehouseError("table 5 failed")
            return pa.table({"i": [i]})

        return make

    made = embedded._made_in_order(
        [maker(i) for i in range(len(sizes))], sizes, threads=3, ahead_bytes=40
    )
    got = []
    with pytest.raises(WarehouseError, match="table 5 failed"):
        for table in made:
            got.append(table.column("i")[0].as_py())
            taken.add(got[-1])
    assert got == [0, 1, 2, 3, 4]
    assert max(outstanding) <= 50  # 40, or one larger table started alone
    count = len(started)
    time.sleep(0.1)
    assert len(started) == count  # nothing starts once the error is raised


# -- as of a cut -----------------------------------------------------------------------------
def _everything(wh: EmbeddedWarehouse, catalog: Catalog, cut: Cut | None = None) -> dict:
    """Every table's rows (all columns, whole table) and day states, as of `cut`."""
    out = {}
    tables = [(catalog.targets_dataset, catalog.targets["eurusd"].name)]
    tables += [(t.dataset, t.name) for t in catalog.tables_for("eurusd")]
    for dataset, name in tables:
        columns = [c for c in _stored(wh, dataset, name).schema.names]
        data = wh.read(dataset, name, columns, DateRange(), cut=cut).data
        days = wh.partition_states(dataset, [name], cut=cut)[name]
        out[name] = (data, days)
    return out


def test_reads_and_day_states_as_of_a_cut_ignore_appends_committed_after_it(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    """A cut taken before two appends (one of every table, one of a single table) reads every
    table, and its day states, exactly as they were at the cut: no new minute, a new day left
    out, and the targets' look-ahead rows that the appends rewrote as they were (nulls); a cut
    after the first append sees it and not the second; no cut reads the warehouse as it is."""
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    # 2,940 minutes end on Wednesday at 01:00: the appends rewrite Tuesday's last rows and
    # add Wednesday's (a day the cut before has 60 minutes of) and no new day, then Thursday.
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=2_940)
    wh = EmbeddedWarehouse(path, read_only=False)
    before, first = _everything(wh, small), wh.cut()
    wh.append(300)
    middle, second = _everything(wh, small), wh.cut()
    targets = small.targets["eurusd"].name
    wh.append_minutes(small.targets_dataset, targets, 1_500)  # into Thursday
    now = _everything(wh, small)
    assert now[targets][0].num_rows == 2_940 + 300 + 1_500
    assert len(now[targets][1]) == len(before[targets][1]) + 1
    for name, (data, days) in _everything(wh, small, first).items():
        assert data.equals(before[name][0]), name
        assert days == before[name][1], name
    for name, (data, days) in _everything(wh, small, second).items():
        assert data.equals(middle[name][0]), name
        assert days == middle[name][1], name
    assert _everything(wh, small) == now
    # A window within the rewritten rows takes only those of them in it, as they were.
    late = DateRange(datetime(2024, 1, 2, 23, tzinfo=UTC), datetime(2024, 1, 3, 0, 50, tzinfo=UTC))
    columns = ["interval_time", "target_bqx45_h105"]
    at_cut = wh.read(small.targets_dataset, targets, columns, late, cut=first).data
    whole = before[targets][0].select(columns)
    keys = whole.column("interval_time").cast(pa.int64()).to_numpy()
    lo, hi = np.searchsorted(keys, [_us(late.start), _us(late.end)])
    assert at_cut.equals(whole.slice(lo, hi - lo)) and at_cut.num_rows == 110
    assert at_cut.column(1).null_count > 0


def _us(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


_HOLD = """
import sys, time
from bqx_assets.core.warehouse.embedded import connect
con = connect(sys.argv[1], read_only=sys.argv[2] == "ro")
print("held", flush=True)
time.sleep(float(sys.argv[3]))
con.close()
"""


def _holder(path: Path, mode: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), mode, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_an_append_waits_for_a_run_holding_the_file_or_fails_naming_it(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    """DuckDB lets one process write a file or many read it, never both: an append (as `bqx
    warehouse append` opens it) while another process reads waits for the file, then appends;
    past its wait it fails naming the file and the lock, having changed nothing."""
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=50)
    run = _holder(path, "ro", 30)
    try:
        with pytest.raises(
            WarehouseError, match=r"cannot open embedded warehouse .*w\.duckdb.*lock"
        ):
            EmbeddedWarehouse(path, read_only=False, lock_wait=0.3)
    finally:
        run.kill()
        run.wait()
    run = _holder(path, "ro", 0.5)
    try:
        wh = EmbeddedWarehouse(path, read_only=False, lock_wait=30)
        wh.append(10)
        wh.close()
    finally:
        run.wait()
    assert EmbeddedWarehouse(path).state(small.features_dataset, "agg_eurusd").rows == 60
