"""Export-mode extraction against the local-bigquery emulator: extract jobs instead of reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.extraction import Source, extract_table, extract_tables, owner_of
from bqx_assets.core.errors import ExtractionError, WarehouseError
from bqx_assets.core.layout import KEY, PAIR_COLUMN, checkpoint_key
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import SourceState
from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse
from bqx_assets_tests.emulators.bigquery import (
    BigQueryEmulator,
    bigquery_emulator,  # noqa: F401 - the session fixture
    load_tables,
)
from bqx_assets_tests.test_bigquery import WINDOW, source_table

pytestmark = pytest.mark.emulator

TABLES = ("div_eurusd", "base_idx_eurusd", "mkt_corr")
STAGING = "gs://bqx-ml-staging/exports"


@dataclasses.dataclass
class Loaded:
    emulator: BigQueryEmulator
    dataset: str
    sources: list[Source]
    rows: dict[str, pa.Table]


@pytest.fixture(scope="module")
def loaded(bigquery_emulator: BigQueryEmulator) -> Loaded:  # noqa: F811
    """A pair table with `pair` and a BOOL column, one with STRING columns, a shared one."""
    catalog = Catalog.load()
    dataset = bigquery_emulator.dataset("export")
    sources: list[Source] = [dataclasses.replace(catalog.table(n), dataset=dataset) for n in TABLES]
    rows = {}
    for source in sources:
        pair = source.pairs[0] if source.scope in ("pair", "corr") else None
        rows[source.name] = source_table(source.name, source.columns, pair)
    load_tables(bigquery_emulator.client(), dataset, rows)
    return Loaded(bigquery_emulator, dataset, sources, rows)


@pytest.fixture
def warehouse(loaded: Loaded) -> Iterator[BigQueryWarehouse]:
    # The emulator's extract jobs write gs:// objects under data_dir/gcs, read back from there.
    wh = loaded.emulator.warehouse(
        loaded.dataset, loaded.dataset, gcs_local_root=str(loaded.emulator.data_dir / "gcs")
    )
    yield wh
    wh.close()


def _staged(loaded: Loaded) -> list[Path]:
    root = loaded.emulator.gcs_path(STAGING)
    return sorted(p for p in root.rglob("*.parquet")) if root.exists() else []


def _checkpoint(storage: LocalStorage, source: Source) -> pa.Table:
    path = storage.local_path(checkpoint_key(owner_of(source), source.name))
    assert path is not None
    return pq.read_table(path)


def test_export_mode_checkpoints_equal_read_mode(
    loaded: Loaded, warehouse: BigQueryWarehouse, tmp_path: Path
):
    read_root = LocalStorage(tmp_path / "read")
    export_root = LocalStorage(tmp_path / "export")
    read = extract_tables(warehouse, loaded.sources, read_root, threads=3)
    exported = extract_tables(
        warehouse, loaded.sources, export_root, threads=3, mode="export", staging_uri=STAGING
    )
    assert all(c.manifest.method == "read" and c.manifest.bytes_read > 0 for c in read)
    assert all(c.manifest.method == "export" and c.manifest.bytes_read == 0 for c in exported)
    for by_read, by_export in zip(read, exported, strict=True):
        source = by_read.source
        checkpoint = _checkpoint(export_root, source)
        assert checkpoint.equals(_checkpoint(read_root, source)), source.name
        assert PAIR_COLUMN not in checkpoint.column_names
        assert checkpoint.num_rows == loaded.rows[source.name].num_rows
        manifest, other = by_export.manifest, by_read.manifest
        assert (manifest.rows, manifest.crc32c) == (other.rows, other.crc32c), source.name
        assert (manifest.key_min, manifest.key_max) == (other.key_min, other.key_max)
    assert _staged(loaded) == []  # the shards are deleted once read
    # A checkpoint made by a read is current for an export-mode run, and the other way round.
    again = extract_tables(
        warehouse, loaded.sources, read_root, threads=3, mode="export", staging_uri=STAGING
    )
    assert {c.status for c in again} == {"reused"}


def test_a_windowed_extraction_falls_back_to_read(
    loaded: Loaded, warehouse: BigQueryWarehouse, tmp_path: Path
):
    storage = LocalStorage(tmp_path)
    done = extract_tables(
        warehouse, loaded.sources, storage, window=WINDOW, mode="export", staging_uri=STAGING
    )
    assert all(c.manifest.method == "read" and c.manifest.bytes_read > 0 for c in done)
    assert all(c.manifest.rows == 120 for c in done)
    assert _staged(loaded) == []


def test_export_table_selects_and_sorts_like_read(loaded: Loaded, warehouse: BigQueryWarehouse):
    source = loaded.sources[0]
    wanted = [KEY, source.columns[-1].name, PAIR_COLUMN]
    result = warehouse.export_table(loaded.dataset, source.name, wanted, STAGING)
    assert result.bytes_read == 0
    assert result.data.column_names == wanted
    assert result.data.equals(loaded.rows[source.name].sort_by(KEY).select(wanted))
    with pytest.raises(WarehouseError, match=rf"{source.name}: no column\(s\) no_such_column"):
        warehouse.export_table(loaded.dataset, source.name, [KEY, "no_such_column"], STAGING)
    assert _staged(loaded) == []


def test_a_missing_table_fails_naming_it(
    loaded: Loaded, warehouse: BigQueryWarehouse, tmp_path: Path
):
    missing = dataclasses.replace(Catalog.load().table("agg_bqx_gbpusd"), dataset=loaded.dataset)
    with pytest.raises(ExtractionError, match=r"1 of 2 tables failed.*agg_bqx_gbpusd"):
        extract_tables(
            warehouse,
            [loaded.sources[2], missing],
            LocalStorage(tmp_path),
            mode="export",
            staging_uri=STAGING,
        )
    # The extract job itself fails naming the table when the state look-up did not.
    state = SourceState(loaded.dataset, missing.name, 1, "2024-01-01T00:00:00+00:00", 1)
    with pytest.raises(WarehouseError, match=rf"{loaded.dataset}\.agg_bqx_gbpusd"):
        extract_table(
            warehouse,
            missing,
            LocalStorage(tmp_path),
            state=state,
            mode="export",
            staging_uri=STAGING,
        )


def test_export_mode_needs_a_staging_uri(
    loaded: Loaded, warehouse: BigQueryWarehouse, tmp_path: Path
):
    with pytest.raises(ExtractionError, match="mkt_corr: export mode needs a staging URI"):
        extract_table(warehouse, loaded.sources[2], LocalStorage(tmp_path), mode="export")
    with pytest.raises(ExtractionError, match="'copy' is not one of read, export"):
        extract_table(warehouse, loaded.sources[2], LocalStorage(tmp_path), mode="copy")  # type: ignore[arg-type]
