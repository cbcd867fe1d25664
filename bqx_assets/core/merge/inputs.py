"""What the merge reads: the spine and every feature table, each an ordered list of chunks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bqx_assets.core.catalog import Catalog, Table, TargetsTable
from bqx_assets.core.checkpoints.facts import ChunkFacts
from bqx_assets.core.checkpoints.manifest import ChunkManifest
from bqx_assets.core.checkpoints.select import require_chunks
from bqx_assets.core.checkpoints.window import Window, micros
from bqx_assets.core.errors import ExtractionError, StorageError
from bqx_assets.core.storage import LocalFile, Storage, StoredFile


@dataclass(frozen=True)
class ChunkId:
    """What a row group copied from an earlier file depends on for one chunk: the key range
    it may hold rows in, [start, end) in microseconds, and a digest of its bytes (its
    manifest's CRC32C and size)."""

    start: int
    end: int
    digest: str


@dataclass(frozen=True)
class InputChunk:
    """One chunk of a table: its file, read in place; its id (without one, no row group that
    depends on it is copied from an earlier file); its facts (without them, it is opened to
    be planned)."""

    file: StoredFile
    id: ChunkId | None = None
    facts: ChunkFacts | None = None


@dataclass(frozen=True)
class InputTable:
    """A table as the merge reads it: its chunks in key order (their keys must not repeat
    across chunks) and the columns it contributes. A single parquet file is a table of one
    chunk (`of_files`)."""

    name: str
    chunks: tuple[InputChunk, ...]
    columns: tuple[tuple[str, str], ...] | None = None
    """(column in the chunks, name in the training file) in output order; None: every column
    but the key, named `{table}__{column}` (the spine's: as they are)."""
    dtypes: Mapping[str, str] | None = None
    """Declared BigQuery type per column (leak columns too): a chunk that differs is an
    error. None: the types of the first chunk, which the others must share."""

    @classmethod
    def of_files(
        cls,
        name: str,
        *paths: Path | str,
        columns: tuple[tuple[str, str], ...] | None = None,
        dtypes: Mapping[str, str] | None = None,
    ) -> InputTable:
        """A table of local parquet files, one chunk each, in key order."""
        return cls(name, tuple(InputChunk(LocalFile(p)) for p in paths), columns, dtypes)

    def where(self) -> str:
        first = self.chunks[0].file if self.chunks else "no chunk"
        more = f" and {len(self.chunks) - 1} more chunks" if len(self.chunks) > 1 else ""
        return f"table {self.name} ({first}{more})"


def pair_tables(
    catalog: Catalog, pair: str, chunks_of: Callable[[Table], tuple[InputChunk, ...]]
) -> list[InputTable]:
    """The pair's feature tables in catalog order, named by the catalog's prefix rule; leak
    columns (`target_*` of feature tables) are checked against the catalog but not written."""
    by_table: dict[str, list[tuple[str, str]]] = {}
    for feature in catalog.feature_columns(pair):
        by_table.setdefault(feature.table.name, []).append((feature.column.name, feature.name))
    return [
        InputTable(
            table.name,
            chunks_of(table),
            tuple(by_table.get(table.name, ())),
            {c.name: c.dtype for c in table.columns},
        )
        for table in catalog.tables_for(pair)
    ]


def spine_table(targets: TargetsTable, chunks: tuple[InputChunk, ...]) -> InputTable:
    """The pair's spine: its targets table's chunks and its target columns."""
    return InputTable(targets.name, chunks, tuple((t, t) for t in targets.targets))


@dataclass(frozen=True)
class PairInputs:
    """What the merge reads for a pair: its spine and its feature tables in catalog order."""

    spine: InputTable
    tables: list[InputTable]

    @property
    def chunks(self) -> int:
        return sum(len(t.chunks) for t in self.tables)


def chunk_id(manifest: ChunkManifest) -> ChunkId:
    """A chunk as the merge tells changed inputs apart: its key range and its bytes' digest."""
    r = manifest.range
    return ChunkId(micros(r.start), micros(r.end), f"{manifest.crc32c}:{manifest.bytes}")


def pair_inputs(
    storage: Storage,
    catalog: Catalog,
    pair: str,
    window: Window,
    chosen: Mapping[str, list[tuple[str, ChunkManifest]]] | None = None,
) -> PairInputs:
    """The pair's verified chunks inside `window` as the merge's inputs, each opened in place
    (in an object store, pinned to the version whose size and CRC32C its manifest records)
    with its id and recorded facts; fails naming every table without verified chunks.
    `chosen`: each table's chunks where the caller checked them already (`recover`)."""
    targets = catalog.targets[pair]
    tables = [*catalog.tables_for(pair), targets]
    if chosen is None or any(t.name not in chosen for t in tables):
        chosen = require_chunks(storage, tables, window, f"pair {pair}")
    else:
        chosen = {t.name: chosen[t.name] for t in tables}
    opened = _opened(storage, chosen)
    return PairInputs(
        spine_table(targets, opened[targets.name]),
        pair_tables(catalog, pair, lambda table: opened[table.name]),
    )


def _opened(
    storage: Storage, chosen: Mapping[str, list[tuple[str, ChunkManifest]]]
) -> dict[str, tuple[InputChunk, ...]]:
    def open_one(item: tuple[str, ChunkManifest]) -> InputChunk:
        key, manifest = item
        try:
            file = storage.open_file(key, size=manifest.bytes, crc32c=manifest.crc32c)
        except StorageError as exc:
            raise ExtractionError(f"table {manifest.table}: {exc}") from exc
        return InputChunk(file, chunk_id(manifest), _facts(manifest))

    every = [item for chunks in chosen.values() for item in chunks]
    if storage.concurrency > 1:  # an object store's files a few at a time: latency-bound
        with ThreadPoolExecutor(storage.concurrency) as pool:
            opened = iter(pool.map(open_one, every))
    else:
        opened = map(open_one, every)
    return {name: tuple(next(opened) for _ in chunks) for name, chunks in chosen.items()}


def _facts(manifest: ChunkManifest) -> ChunkFacts | None:
    """The chunk's recorded facts, or None when it has no readable ones (it is then opened)."""
    facts = ChunkFacts.from_json(manifest.facts) if manifest.facts is not None else None
    return facts if facts is not None and sum(facts.rows) == manifest.rows else None
