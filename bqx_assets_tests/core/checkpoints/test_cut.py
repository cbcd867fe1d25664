"""A consistent cut: every table of a checkpoint step read as of one moment, so that a warehouse
appended while the step extracts yields the training file of the cut, equal to a from-scratch
build of the warehouse as it was then, with no row-count error and no false gate failure.

The append happens in the run's own process, between two tables' reads (the warehouse's read
hook appends every table's next minutes through the same DuckDB database): deterministic, and
the only way a DuckDB file can be written while a process reads it (another process's append
waits for the file: test_embedded.py shows that wait).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bqx_assets.core.build import TrainingBuild, build_training_file
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.manifest import stored_manifests
from bqx_assets.core.checkpoints.refresh import CheckpointStep, refresh_checkpoints
from bqx_assets.core.checkpoints.window import TrainingWindow
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.publish import publish_training_file
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets.core.warehouse.synthetic import SHARED_OVERRUN
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses
from bqx_assets_tests.core.gate.listings import listed
from emulators.upstream import AppendingWarehouse

PAIR = "eurusd"
ROWS = 3_000
"""From Monday 00:00 to Wednesday 01:59 (as the gate's fault tests): an append of a few minutes
grows Wednesday, the newest day, whose chunk the step reads last."""
GATE = Thresholds(min_rows=100)
"""The local deployment's gate: production's thresholds, rows bounded for a small warehouse."""


@dataclass(frozen=True)
class Run:
    step: CheckpointStep
    built: TrainingBuild
    file: Path


def pair_run(root: Path, catalog: Catalog, wh: EmbeddedWarehouse) -> Run:
    """The pair's checkpoint step (its tables, the shared ones it uses, its targets; one table
    at a time, so that the hook falls between two tables' reads), then its file built, gated
    and published, as its job does."""
    checkpoints = LocalStorage(root / "ckpt", durable=False)
    targets = catalog.targets[PAIR]
    step = refresh_checkpoints(
        wh, checkpoints, [targets, *catalog.tables_for(PAIR)], [targets], TrainingWindow(),
        f"pair {PAIR}", workdir=root / "work", threads=1,
    )  # fmt: skip
    output = LocalStorage(root / "out")
    built = build_training_file(checkpoints, output, catalog, PAIR, TrainingWindow(), GATE)
    publish_training_file(output, built.training_file)
    return Run(step, built, root / "out" / training_file_key(PAIR))


def from_scratch(root: Path, catalog: Catalog, path: Path) -> Run:
    wh = EmbeddedWarehouse(path)
    try:
        return pair_run(root, catalog, wh)
    finally:
        wh.close()


def assert_same_file(got: Run, expected: Run) -> None:
    """Both published, every check passed, the same rows and columns; byte for byte."""
    assert got.built.report.passed, got.built.report.failed
    assert expected.built.report.passed, expected.built.report.failed
    assert pq.read_table(got.file).equals(pq.read_table(expected.file))
    assert got.file.read_bytes() == expected.file.read_bytes()


@pytest.fixture
def before(tmp_path: Path, warehouses: Warehouses, mini: tuple[Catalog, Path]) -> Path:
    """A private copy of the mini warehouse of both pairs, as it is before any append."""
    return warehouses.copy(tmp_path / "before.duckdb", mini[0], pairs=MINI_PAIRS, rows=ROWS)


def test_an_append_while_a_pair_extracts_yields_the_file_of_the_cut(
    tmp_path: Path, mini: tuple[Catalog, Path], before: Path
) -> None:
    """Every table is appended 7 minutes after the step's third table is read: the step reads
    the rest as of its cut (no row-count error), and the file it builds passes every check and
    equals, byte for byte, the file built from scratch from the warehouse as it was at the cut.
    The chunks record the cut; the next step (a later cut) re-extracts only the newest day's
    chunks, whose partitions the append changed, and builds the appended warehouse's file."""
    catalog, _ = mini
    path = shutil.copyfile(before, tmp_path / "w.duckdb")
    wh = AppendingWarehouse(path, after=3, minutes=7)
    try:
        run = pair_run(tmp_path / "run", catalog, wh)
        assert wh.appended_at is not None and run.step.cut.at < wh.appended_at
        assert len(wh.reads) > 3  # tables were read after the append
        assert_same_file(run, from_scratch(tmp_path / "scratch", catalog, before))
        again = pair_run(tmp_path / "run", catalog, wh)
    finally:
        wh.close()
    checkpoints = LocalStorage(tmp_path / "run" / "ckpt")
    for checkpoint in run.step.checkpoints:
        for chunk in checkpoint.chunks:
            assert chunk.manifest.cut == run.step.cut.at.isoformat()
            assert chunk.manifest.complete_at_cut  # the synthetic days ended long before
    # The next step: only the newest day's chunk of each table, changed by the append, is read.
    extracted = {c.source.name: [m.manifest.first for m in c.chunks if m.status == "extracted"]
                 for c in again.step.checkpoints}  # fmt: skip
    newest = max(m.manifest.first for c in run.step.checkpoints for m in c.chunks)
    assert set(map(tuple, extracted.values())) <= {(newest,), ()}, extracted
    # (a table with no row in the appended minutes, e.g. the ETF's closed hours, reuses it)
    assert extracted[catalog.targets[PAIR].name] == extracted[f"agg_{PAIR}"] == [newest]
    assert again.built.report.passed and again.built.merge.rows == run.built.merge.rows + 7
    source = next(c.source for c in again.step.checkpoints if c.source.name == f"agg_{PAIR}")
    manifests = stored_manifests(checkpoints, source).manifests.values()
    assert {m.cut for m in manifests if m.first == newest} == {again.step.cut.at.isoformat()}
    after = tmp_path / "after.duckdb"
    shutil.copyfile(path, after)
    assert_same_file(again, from_scratch(tmp_path / "scratch-after", catalog, after))


def test_without_the_cut_the_same_append_fails_the_step_as_a_changed_table(
    tmp_path: Path, mini: tuple[Catalog, Path], before: Path
) -> None:
    """The control: each read as of its own moment, the same append makes the newest day's rows
    disagree with the states read at the step's start, and the step fails naming the tables."""
    catalog, _ = mini
    path = shutil.copyfile(before, tmp_path / "w.duckdb")
    wh = AppendingWarehouse(path, after=3, minutes=7, as_of_cut=False)
    try:
        with pytest.raises(ExtractionError, match=r"the table changed while it was read"):
            pair_run(tmp_path / "run", catalog, wh)
    finally:
        wh.close()


APPENDED = 30
"""Minutes appended between the shared and the pair step: past the 10 that the synthetic shared
tables run ahead of the spine (`synthetic.SHARED_OVERRUN`), so that a ragged tail shows."""


def split_run(root: Path, catalog: Catalog, wh: EmbeddedWarehouse, *, shared_cut: bool) -> Run:
    """As the graph runs them: the shared step (every pair's spine counts its window), then an
    append of `APPENDED` minutes, then the pair's step (its own tables and targets), as of the
    shared step's cut or its own; then the pair's file built, gated and published."""
    checkpoints = LocalStorage(root / "ckpt", durable=False)
    targets = catalog.targets[PAIR]
    shared = refresh_checkpoints(
        wh, checkpoints, catalog.shared_tables(), [catalog.targets[p] for p in catalog.pairs],
        TrainingWindow(), "shared tables", workdir=root / "work", threads=1,
    )  # fmt: skip
    wh.append(APPENDED)
    own = [t for t in catalog.tables_for(PAIR) if t.scope != "shared"]
    step = refresh_checkpoints(
        wh, checkpoints, [targets, *own], [targets], TrainingWindow(), f"pair {PAIR}",
        workdir=root / "work", threads=1, cut=shared.cut if shared_cut else None,
    )  # fmt: skip
    output = LocalStorage(root / "out")
    built = build_training_file(checkpoints, output, catalog, PAIR, TrainingWindow(), GATE)
    publish_training_file(output, built.training_file)
    return Run(step, built, root / "out" / training_file_key(PAIR))


def test_a_pair_step_read_as_of_the_shared_step_s_cut_builds_the_file_of_that_cut(
    tmp_path: Path, mini: tuple[Catalog, Path], before: Path
) -> None:
    """The shared tables are one run, each pair another: a pair step given the shared step's
    cut reads its tables as of the same moment, so that a file mixing both is the file of that
    cut (equal to a from-scratch build), however much was appended in between. Read as of its
    own later cut, its spine runs past every shared table: a ragged tail that the gate fails
    (`table_coverage`) though nothing upstream is wrong."""
    catalog, _ = mini
    path = shutil.copyfile(before, tmp_path / "w.duckdb")
    wh = EmbeddedWarehouse(path, read_only=False)
    try:
        same = split_run(tmp_path / "same", catalog, wh, shared_cut=True)
    finally:
        wh.close()
    assert_same_file(same, from_scratch(tmp_path / "scratch", catalog, before))
    path = shutil.copyfile(before, tmp_path / "w2.duckdb")
    wh = EmbeddedWarehouse(path, read_only=False)
    try:
        ragged = split_run(tmp_path / "ragged", catalog, wh, shared_cut=False)
    finally:
        wh.close()
    assert ragged.built.merge.rows == same.built.merge.rows + APPENDED
    # Read as of its own cut: the spine runs past the shared tables, a false failure.
    assert ragged.built.report.failed == ("table_coverage",)
    (coverage,) = [o for o in ragged.built.report.outcomes if o.name == "table_coverage"]
    short = {str(r["table"]) for r in listed(coverage, "short_tables")}
    assert short == {t.name for t in catalog.shared_tables()}
    assert f"stops {APPENDED - SHARED_OVERRUN} rows before the spine's end" in str(
        coverage.metadata["summary"]
    )
    assert not ragged.file.exists()


@pytest.mark.slow
def test_ten_runs_appended_to_while_they_extract_each_build_the_file_of_their_cut(
    tmp_path: Path,
) -> None:
    """bench/cut_appends.py at the mini catalog's size: 10 incremental runs of one checkpoint
    root, each appended to after a random number of its reads, each file equal to a from-scratch
    build of its cut, 0 false failures (the baseline without a cut fails where the append lands
    mid-step)."""
    bench = Path(__file__).resolve().parents[3] / "bench" / "cut_appends.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--runs", "10", "--rows", "3000", "--catalog", "mini",
         "--out", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "with the cut: 10/10 files equal to the cut's from-scratch build, 0 false failures" in (
        done.stdout
    )
