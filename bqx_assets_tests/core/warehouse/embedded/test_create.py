"""Creating the embedded warehouse: bounded memory, clear errors, tables made ahead on threads
written exactly as generated."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.warehouse.embedded import (
    EmbeddedWarehouse,
    create_warehouse,
)
from bqx_assets.core.warehouse.embedded.create import made_in_order
from bqx_assets.core.warehouse.synthetic import (
    DEFAULT_START,
    Series,
)
from bqx_assets_tests.core.warehouse.embedded.helpers import as_generated, as_stored

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
        stored = as_stored(wh, dataset, name)
        expected = as_generated(subset, name, series)
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

    made = made_in_order([maker(i) for i in range(len(sizes))], sizes, threads=3, ahead_bytes=40)
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
