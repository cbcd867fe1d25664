"""Chunk files as the merge reads them: opened as parquet, their byte ranges fetched ahead."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.errors import MergeError, StorageError
from bqx_assets.core.storage import StoredFile

Blocks = list[tuple[int, bytes]]
"""Byte ranges of one file fetched ahead: (offset, bytes)."""

_GAP = 256 * 1024
"""Column chunks closer than this are fetched in one request."""


def open_parquet(
    file: StoredFile,
    where: str,
    *,
    metadata: pq.FileMetaData | None = None,
    blocks: Blocks | None = None,
) -> pq.ParquetFile:
    """A parquet reader over `file` (`metadata`: its footer, so it is not read again; `blocks`:
    ranges of a remote file fetched ahead, read from memory). A remote file without blocks is
    pre-buffered: the columns read come in a few coalesced requests."""
    try:
        return pq.ParquetFile(
            file.reader(blocks or ()),
            metadata=metadata,
            pre_buffer=file.remote and blocks is None,
        )
    except FileNotFoundError:
        raise MergeError(f"{where}: file does not exist") from None
    except StorageError as exc:
        raise MergeError(f"{where}: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{where}: not a readable parquet file: {exc}") from exc


def column_ranges(
    meta: pq.FileMetaData, groups: Sequence[int], columns: Sequence[str]
) -> list[tuple[int, int]]:
    """(start, stop) byte ranges holding `columns` of row groups `groups`, neighbours merged."""
    leaf = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    spans = []
    for g in groups:
        row_group = meta.row_group(g)
        for column in columns:
            chunk = row_group.column(leaf[column])
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and 0 < (chunk.dictionary_page_offset or 0) < start:
                start = chunk.dictionary_page_offset
            spans.append((start, start + chunk.total_compressed_size))
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start - merged[-1][1] <= _GAP:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def fetch(file: StoredFile, ranges: Sequence[tuple[int, int]], where: str) -> Blocks:
    """The bytes of `ranges` of `file`, one request each."""
    try:
        return [(start, file.read_range(start, stop)) for start, stop in ranges]
    except StorageError as exc:
        raise MergeError(f"{where}: {exc}") from exc
