"""What the merge tests build their inputs with: small parquet tables, and a pair refreshed from
an embedded warehouse into a checkpoint root and merged."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.facts import ChunkFacts
from bqx_assets.core.checkpoints.refresh import refresh_tables
from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.checkpoints.window import ALL_TIME, Window
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge import (
    InputChunk,
    InputTable,
    MergeReport,
    merge_checkpoints,
    pair_inputs,
)
from bqx_assets.core.storage import LocalFile, LocalStorage, Storage, StoredFile, open_storage
from bqx_assets.core.warehouse import Warehouse

START = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
TARGETS = ("target_a", "target_b")
PAIR = "eurusd"
DAY = 1440


# -- small tables -----------------------------------------------------------------------------
def minutes(values: Sequence[int], unit: str = "us", tz: str | None = "UTC") -> pa.Array:
    """Keys `START + m minutes` as timestamps of the given unit and zone."""
    stamps = [START + timedelta(minutes=int(m)) for m in values]
    return pa.array(stamps, pa.timestamp("us", tz="UTC")).cast(pa.timestamp(unit, tz=tz))


def write(path: Path, columns: Mapping[str, pa.Array | list], *, row_group_size: int = 4) -> Path:
    pq.write_table(pa.table(dict(columns)), path, row_group_size=row_group_size)
    return path


def feature(folder: Path, name: str, keys: Sequence[int], **kwargs: int) -> Path:
    """A float table whose value is 10 x the minute (so alignment is checkable) and an int."""
    columns: dict = {
        KEY: minutes(keys),
        "x": [10.0 * k for k in keys],
        "n": pa.array([int(k) for k in keys], pa.int64()),
    }
    return write(folder / f"{name}.parquet", columns, **kwargs)


def spine_of(path: Path | StoredFile, targets: Sequence[str] = TARGETS) -> InputTable:
    """The spine as the merge reads it: one file, its target columns."""
    file = path if isinstance(path, StoredFile) else LocalFile(path)
    return InputTable("targets", (InputChunk(file),), tuple((t, t) for t in targets))


def table_of(
    name: str,
    *paths: Path | StoredFile,
    columns: tuple[tuple[str, str], ...] | None = None,
    dtypes: Mapping[str, str] | None = None,
    facts: Sequence[ChunkFacts | None] | None = None,
) -> InputTable:
    """A table of files (one chunk each, in key order), with their recorded facts if given."""
    files = [p if isinstance(p, StoredFile) else LocalFile(p) for p in paths]
    found = list(facts) if facts is not None else [None] * len(files)
    chunks = tuple(InputChunk(f, facts=c) for f, c in zip(files, found, strict=True))
    return InputTable(name, chunks, columns, dtypes)


def facts_of(path: Path) -> ChunkFacts:
    """A chunk's facts as a refresh records them, through their JSON form."""
    from bqx_assets.core.keys import keys_us

    data = pq.read_table(path)
    keys = keys_us(data.column(KEY), str(path))
    facts = ChunkFacts.from_json(ChunkFacts.of(pq.read_metadata(path), data, keys).to_json())
    assert facts is not None
    return facts


def merge_to(
    out: Path, spine: InputTable, tables: Sequence[InputTable], **kwargs: object
) -> MergeReport:
    """Merge into a sink beside `out` and publish it as `out`."""
    root = LocalStorage(out.parent, durable=False)
    report = merge_checkpoints(spine, tables, root.stage(out.name), **kwargs)  # type: ignore[arg-type]
    root.publish_staged(report.staged, out.name)
    return report


def temporaries(folder: Path) -> list[str]:
    """Hidden files a writer left in `folder` (a sink's `.{name}.{uuid}.tmp`)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- a pair from a warehouse ------------------------------------------------------------------
def sources(catalog: Catalog, pair: str = PAIR) -> list[Source]:
    return [catalog.targets[pair], *catalog.tables_for(pair)]


def refresh(
    warehouse: Warehouse, catalog: Catalog, root: Path | str, window: Window = ALL_TIME
) -> Storage:
    """The pair's chunks refreshed into the checkpoint root `root`."""
    storage = open_storage(str(root), durable=False)
    refresh_tables(warehouse, sources(catalog), storage, window=window, threads=2)
    return storage


def merge_pair(
    storage: Storage,
    catalog: Catalog,
    out: Path,
    previous: StoredFile | None = None,
    window: Window = ALL_TIME,
    **kwargs: object,
) -> MergeReport:
    """The pair's stored chunks merged into `out`, copying from `previous`."""
    inputs = pair_inputs(storage, catalog, PAIR, window)
    return merge_to(out, inputs.spine, inputs.tables, previous=previous, **kwargs)


def build(
    warehouse: Warehouse,
    catalog: Catalog,
    root: Path | str,
    out: Path,
    previous: StoredFile | Path | None = None,
    window: Window = ALL_TIME,
) -> MergeReport:
    """Refresh the pair's chunks into `root`, then merge them into `out`, copying from
    `previous` (a path: a file of no root, its bytes checked as they are copied)."""
    storage = refresh(warehouse, catalog, root, window)
    if isinstance(previous, Path):
        previous = LocalFile(previous)
    return merge_pair(storage, catalog, out, previous, window)


def same_file(a: Path, b: Path) -> None:
    """Equal as data and as bytes: same row groups, same column chunks, same footer."""
    left, right = pq.read_table(a), pq.read_table(b)
    assert left.column_names == right.column_names
    for name in left.column_names:
        assert left.column(name).equals(right.column(name)), name
    assert a.read_bytes() == b.read_bytes()


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def copy_tree(src: Path, dest: Path) -> Path:
    """A private copy of a checkpoint root (its files' checksum records come along)."""
    shutil.copytree(src, dest)
    return dest
