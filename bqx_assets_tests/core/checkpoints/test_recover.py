"""Chunks deleted after the checkpoint step: found before the merge, re-extracted through the
refresh, and the training file built equal to one where nothing was deleted."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from bqx_assets.core.build import build_training_file
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.manifest import MANIFEST_SUFFIX, stored_manifests
from bqx_assets.core.checkpoints.recover import (
    check_chunks,
    gone_chunks,
    recover_pair_chunks,
)
from bqx_assets.core.checkpoints.refresh import refresh_checkpoints
from bqx_assets.core.checkpoints.select import stored_window
from bqx_assets.core.checkpoints.window import TrainingWindow
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.publish import publish_training_file
from bqx_assets.core.storage import LocalStorage, ObjectInfo, Storage
from bqx_assets.core.warehouse import Warehouse
from bqx_assets.core.warehouse.embedded import META, EmbeddedWarehouse
from bqx_assets_tests.core.checkpoints.conftest import PAIR, CountingWarehouse, pair_sources

GATE = Thresholds(min_rows=100)
"""The production gate but for the row count: the mini warehouse is short."""


def built_file(checkpoints: Storage, out: Path, catalog: Catalog, window: TrainingWindow) -> str:
    """The pair built and published into `out`; the published file's SHA-256."""
    output = LocalStorage(out)
    built = build_training_file(checkpoints, output, catalog, PAIR, window, GATE)
    assert built.report.passed, built.report.failed
    assert publish_training_file(output, built.training_file).published
    data = output.read_bytes(training_file_key(PAIR))
    assert data is not None
    return hashlib.sha256(data).hexdigest()


def not_opened() -> Warehouse:
    raise AssertionError("the warehouse was opened with nothing missing")


@pytest.mark.parametrize(
    ("window", "spine_both"),
    [(TrainingWindow(), False), (TrainingWindow(days=2), False), (TrainingWindow(days=2), True)],
    ids=["all", "rolling", "rolling-spine-gone"],
)
def test_a_chunk_deleted_after_the_checkpoint_step_is_extracted_again(
    mini: tuple[Catalog, Path],
    warehouse: CountingWarehouse,
    tmp_path: Path,
    window: TrainingWindow,
    spine_both: bool,
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    storage = LocalStorage(tmp_path / "ckpt", durable=False)
    step = refresh_checkpoints(
        warehouse, storage, sources, [catalog.targets[PAIR]], window, f"pair {PAIR}", threads=2
    )
    expected = built_file(storage, tmp_path / "whole", catalog, window)
    # Nothing missing: nothing done, the warehouse not even opened.
    clean = recover_pair_chunks(not_opened, storage, catalog, PAIR, window)
    assert clean.missing == {} and clean.window == step.window

    # After the step: one table loses a chunk file (its manifest stays), another a chunk with
    # its manifest (as the 7-day lifecycle rule deleted both), and the spine its first chunk's
    # file (or, `spine_both`, with its manifest: a rolling window can then not be taken from
    # the stored spine, and is resolved from the warehouse as the checkpoint step did).
    spine, lost_file, lost_both = sources[0], sources[1], sources[2]
    keys = {}
    for source in (spine, lost_file, lost_both):
        key = sorted(stored_manifests(storage, source).manifests)[0 if source is spine else -1]
        keys[source.name] = key
        storage.delete(key)
    for source in (lost_both, spine) if spine_both else (lost_both,):
        storage.delete(keys[source.name].removesuffix(".parquet") + MANIFEST_SUFFIX)
    assert gone_chunks(storage, lost_both) == [Path(keys[lost_both.name]).stem]
    # Without the recovery the merge fails naming a table (or, for a chunk gone with its
    # manifest, would read one chunk fewer).
    if not spine_both:
        with pytest.raises(ExtractionError, match=spine.name):
            built_file(storage, tmp_path / "broken", catalog, window)
    elif window.rolling:
        # The stored spine now gives a window one trading day later: a file one day short.
        moved = stored_window(storage, catalog.targets[PAIR], window)
        assert moved.training.start > step.window.training.start
    found = check_chunks(storage, sources, step.window).missing
    assert set(found) == {spine.name, lost_file.name, lost_both.name}
    assert "does not match its manifest" in found[lost_file.name]
    assert (
        f"chunk(s) {Path(keys[lost_both.name]).stem} listed in its chunk index are gone"
        in (found[lost_both.name])
    )

    # The recovery opens the warehouse itself, and closes it.
    warehouse.close()
    opened: list[CountingWarehouse] = []

    def open_warehouse() -> Warehouse:
        opened.append(CountingWarehouse(warehouse.path))
        return opened[-1]

    recovered = recover_pair_chunks(open_warehouse, storage, catalog, PAIR, window, threads=2)
    assert recovered.window == step.window and len(opened) == 1 + spine_both * window.rolling
    assert set(recovered.tables) == set(found)
    # Only the three tables are read, each its missing chunk only.
    assert sorted(name for name, *_ in opened[-1].reads) == sorted(found)
    assert recovered.chunks_extracted == 3 and recovered.bytes_read > 0
    assert check_chunks(storage, sources, step.window).missing == {}
    # The file equals the one built before anything was deleted, byte for byte.
    assert built_file(storage, tmp_path / "recovered", catalog, window) == expected


class Listed(LocalStorage):
    """A local root that records each folder it lists."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, durable=False)
        self.listed: list[str] = []

    def infos(self, prefix: str) -> dict[str, ObjectInfo]:
        self.listed.append(prefix)
        return super().infos(prefix)


class Billing(CountingWarehouse):
    """Bills BigQuery's 10 MiB minimum per partition look-up (the embedded one bills none)."""

    @property
    def bytes_billed(self) -> int:
        return len(self.lookups) * 10 * 2**20


def test_the_merge_reads_the_chunks_the_recovery_checked_without_listing_them_again(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    storage = Listed(tmp_path / "ckpt")
    window = TrainingWindow()
    refresh_checkpoints(
        warehouse, storage, sources, [catalog.targets[PAIR]], window, f"pair {PAIR}", threads=2
    )
    expected = built_file(storage, tmp_path / "alone", catalog, window)
    lost = sources[1]
    storage.delete(sorted(stored_manifests(storage, lost).manifests)[-1])
    warehouse.close()

    storage.listed.clear()
    recovered = recover_pair_chunks(
        lambda: Billing(warehouse.path), storage, catalog, PAIR, window, threads=2
    )
    assert recovered is not None and recovered.tables == (lost.name,)
    # The refresh's one look-up (the lost table's dataset) billed, for the step's cost.
    assert recovered.query_bytes_billed == 10 * 2**20
    assert set(recovered.chunks) == {s.name for s in sources}
    checked = len(storage.listed)
    assert checked >= len(sources)  # each table's folder listed by the check

    output = LocalStorage(tmp_path / "out")
    built = build_training_file(storage, output, catalog, PAIR, window, GATE, recovered=recovered)
    # The merge read what the recovery checked: no folder listed again, the same bytes.
    assert storage.listed[checked:] == []
    assert built.report.passed and built.window == recovered.window
    assert publish_training_file(output, built.training_file).published
    data = output.read_bytes(training_file_key(PAIR))
    assert data is not None and hashlib.sha256(data).hexdigest() == expected


def test_a_table_that_cannot_be_extracted_again_is_named(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    storage = LocalStorage(tmp_path / "ckpt", durable=False)
    window = TrainingWindow()
    refresh_checkpoints(
        warehouse, storage, sources, [catalog.targets[PAIR]], window, f"pair {PAIR}", threads=2
    )
    lost = sources[3]
    storage.delete(sorted(stored_manifests(storage, lost).manifests)[0])

    # The table is dropped from the warehouse since its checkpoint step.
    warehouse.close()
    con = duckdb.connect(str(warehouse.path))
    try:
        con.execute(f'DROP TABLE "{lost.dataset}"."{lost.name}"')
        con.execute(f"DELETE FROM {META}.partitions WHERE table_name = '{lost.name}'")
    finally:
        con.close()
    dropped = EmbeddedWarehouse(warehouse.path)
    try:
        with pytest.raises(ExtractionError, match=rf"{lost.dataset}\.{lost.name}: not found"):
            recover_pair_chunks(lambda: dropped, storage, catalog, PAIR, window, threads=2)
    finally:
        dropped.close()
