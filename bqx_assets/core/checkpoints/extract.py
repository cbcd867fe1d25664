"""Chunks written: read from the warehouse or joined from day chunks; file, then manifest."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.checkpoints.facts import ChunkFacts
from bqx_assets.core.checkpoints.manifest import ChunkManifest
from bqx_assets.core.checkpoints.schema import (
    Source,
    conform,
    expected_schema,
    owner_of,
    schema_fingerprint,
    write_checkpoint,
)
from bqx_assets.core.checkpoints.window import ChunkRange, micros
from bqx_assets.core.errors import BqxError, ExtractionError
from bqx_assets.core.keys import key_text, keys_us
from bqx_assets.core.layout import KEY, chunk_folder, chunk_key, chunk_manifest_key
from bqx_assets.core.storage import ObjectInfo, Storage
from bqx_assets.core.warehouse import Cut, DateRange, TableRead, Warehouse

log = logging.getLogger(__name__)
ChunkStatus = Literal["extracted", "reused", "compacted"]


@dataclass(frozen=True)
class RefreshedChunk:
    status: ChunkStatus
    manifest: ChunkManifest
    stored: ObjectInfo | None = field(default=None, compare=False)
    """Its manifest file as just written (size, CRC32C), for the table's chunk index."""

    def key(self, owner: str) -> str:
        m = self.manifest
        return chunk_key(owner, m.table, date.fromisoformat(m.first), date.fromisoformat(m.last))


@dataclass
class ChunkPlan:
    chunk: ChunkRange
    partitions: dict[str, list[int | str]]
    done: RefreshedChunk | None = None
    parts: list[tuple[str, ChunkManifest]] = field(default_factory=list)
    """Stored current chunks that together make this one (a closed month's day chunks)."""

    @property
    def rows(self) -> int:
        """Rows of its days, as their partitions say."""
        return sum(int(state[0]) for state in self.partitions.values())


def clear_temporaries(storage: Storage, source: Source, workdir: Path | None = None) -> int:
    """Delete the temporary files a killed writer of this table left: in its chunk folder and
    in the local work folder. One step writes a table, except a cov table, which the steps of
    both its pairs may write at once: a temporary file of the other, live, writer deleted here
    is made again by its `put_file`, and where both publish a chunk, the later one keeps the
    other's identical bytes. In the work folder only dead processes' files are deleted."""
    owner = owner_of(source)
    removed = 0
    for key in list(storage.temporaries(chunk_folder(owner, source.name))):
        storage.delete(key)
        removed += 1
    if workdir is not None and workdir.is_dir():
        pattern = f".{source.name}.*.tmp"
        # One scan of the folder (as `glob` with that pattern, without building a selector
        # per table).
        with os.scandir(workdir) as entries:
            names = [e.name for e in entries if fnmatch.fnmatchcase(e.name, pattern)]
        for path in (workdir / name for name in names):
            if not _writer_alive(path):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _writer_alive(path: Path) -> bool:
    """Whether the process that named this local temporary file (`...{pid}-{uuid}.tmp`) still
    runs: a work folder (the system's temporary folder by default) can be shared by the runs of
    other pairs on the same machine, and a cov table is written by either of its two pairs."""
    tag = path.name.removesuffix(".tmp").rsplit(".", 1)[-1]
    pid_text, _, _ = tag.partition("-")
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def compact(
    storage: Storage,
    source: Source,
    plan: ChunkPlan,
    work: Path,
    row_group_rows: int,
    cut: Cut | None = None,
) -> RefreshedChunk | None:
    """This chunk made by concatenating its stored parts (verified as they are read back), or
    None when a part cannot be read (the chunk is then read from the warehouse)."""
    tables = []
    for key, manifest in plan.parts:
        try:
            path = storage.fetch(key, work / "compact")
            tables.append(pq.read_table(path))
        except (BqxError, OSError, pa.ArrowException) as exc:
            log.warning("chunk %s cannot be compacted (%s): reading it again", key, exc)
            return None
        if tables[-1].num_rows != manifest.rows:
            return None
    data = pa.concat_tables(tables).combine_chunks()
    with contextlib.suppress(OSError):
        for key, _ in plan.parts:
            local = work / "compact" / key
            if storage.local_path(key) != local:
                local.unlink(missing_ok=True)
    fingerprint = schema_fingerprint(data.schema)
    return write_chunk(
        storage, source, plan, data, fingerprint, 0, work, row_group_rows, "compacted", cut=cut
    )


def extract_run(
    warehouse: Warehouse,
    source: Source,
    storage: Storage,
    run: Sequence[ChunkPlan],
    fingerprint: str,
    work: Path,
    row_group_rows: int,
    exported: TableRead | None = None,
    cut: Cut | None = None,
) -> None:
    """Read neighbouring chunks in one restricted read as of `cut`, or take the chunks from the
    table's `exported` rows (an export as of the same cut), and publish each chunk's rows."""
    where = f"{source.dataset}.{source.name}"
    method: Literal["read", "export"] = "read" if exported is None else "export"
    read = exported
    if read is None:
        window = DateRange(run[0].chunk.start, run[-1].chunk.end)
        names = expected_schema(source).names
        read = warehouse.read(source.dataset, source.name, names, window, cut=cut)
    data = conform(read.data, source)
    if schema_fingerprint(data.schema) != fingerprint:
        raise ExtractionError(f"{where}: schema differs from the catalog after conform")
    keys = keys_us(data.column(KEY), where, ExtractionError)
    total = max(1, data.num_rows)
    shared = 0
    for i, plan in enumerate(run):
        chunk = plan.chunk
        lo, hi = (
            int(np.searchsorted(keys, micros(chunk.start))),
            int(np.searchsorted(keys, micros(chunk.end))),
        )
        expected = plan.rows
        if chunk.whole and hi - lo != expected:
            raise ExtractionError(
                f"{where}: days {chunk.first}..{chunk.last} have {hi - lo} rows, their partitions "
                f"say {expected}: the table changed while it was read; run the refresh again"
            )  # read as of the states' cut, only a warehouse that ignores the cut gets here
        part = read.bytes_read * (hi - lo) // total
        if i == len(run) - 1:
            part = read.bytes_read - shared
        shared += part
        plan.done = write_chunk(
            storage, source, plan, data.slice(lo, hi - lo), fingerprint, part, work,
            row_group_rows, method, keys[lo:hi], cut=cut,
        )  # fmt: skip


def write_chunk(
    storage: Storage,
    source: Source,
    plan: ChunkPlan,
    data: pa.Table,
    fingerprint: str,
    bytes_read: int,
    work: Path,
    row_group_rows: int,
    method: Literal["read", "export", "compacted"],
    keys: np.ndarray | None = None,
    *,
    cut: Cut | None = None,
) -> RefreshedChunk:
    """Write and store one chunk's rows `data` (whose schema's fingerprint is `fingerprint`;
    `keys`: its keys in microseconds where the caller has them; `cut`: the moment they are as
    of), then its manifest."""
    owner = owner_of(source)
    chunk = plan.chunk
    where = f"{source.dataset}.{source.name}"
    local = work / f".{source.name}.{chunk.first}_{chunk.last}.{os.getpid()}-{uuid.uuid4().hex}.tmp"
    try:
        written = write_checkpoint(data, local, row_group_rows)
        # The file first, the manifest last: a file without a current manifest is redone.
        info = storage.put_file(
            local, chunk_key(owner, source.name, chunk.first, chunk.last), move=True
        )
    finally:
        local.unlink(missing_ok=True)
    column = data.column(KEY)
    key_us = keys if keys is not None else keys_us(column, where, ExtractionError)
    manifest = ChunkManifest(
        table=source.name,
        dataset=source.dataset,
        first=chunk.first.isoformat(),
        last=chunk.last.isoformat(),
        window=chunk.window_text,
        partitions=plan.partitions,
        rows=data.num_rows,
        schema_fingerprint=fingerprint,
        bytes=info.size,
        crc32c=info.crc32c,
        bytes_read=bytes_read,
        # From the integer keys: a time-zone-aware scalar's `as_py` imports pandas.
        key_min=key_text(column[0].value) if len(column) else None,
        key_max=key_text(column[-1].value) if len(column) else None,
        method=method,
        cut=cut.at.isoformat() if cut is not None else None,
        facts=ChunkFacts.of(written, data, key_us).to_json(),
    )
    stored = storage.write_bytes(
        chunk_manifest_key(owner, source.name, chunk.first, chunk.last), manifest.to_json()
    )
    return RefreshedChunk("compacted" if method == "compacted" else "extracted", manifest, stored)
