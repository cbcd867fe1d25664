"""Spine + feature checkpoints -> one wide parquet file, streaming, in memory that does not grow."""

# How it works, and why
# ---------------------
# The training file is a LEFT JOIN of the spine (the targets table) with every feature table on
# `interval_time`. A join engine holds all of it at once (the first team's iterative Polars join
# peaked at 56-65 GB), and a row-wise streaming writer still needs a whole output row group of
# all ~17K columns in memory (rows x 136 KB) plus, for each of 667 files, the decoded checkpoint
# row group that straddles the batch boundary (~1 GB at 16,384-row checkpoint row groups).
#
# Parquet stores a row group column chunk after column chunk, and a column chunk does not depend
# on any other. So the merge writes the file one *piece* at a time: a piece is a few columns of
# one table for the rows of one output row group. Each piece is aligned to the spine (vectorised
# searchsorted + take, never per-row Python), encoded by pyarrow's own parquet writer into a
# small in-memory parquet file, and its column chunks are appended to the output; the footer is
# assembled from the pieces' footers (offsets shifted) at the end. Memory is one piece per
# worker (PIECE_BYTES decoded, whatever the number of columns or rows; a wide table is cut into
# several pieces, each realigned from the table's key column) plus a few encoded pieces waiting
# to be written, the spine and the footer, so it does not grow with the number of tables, and
# the row-group size is free to be chosen for the readers rather than for the writer (measured:
# under 1 GiB peak at 668 tables x 177,748 rows, where the iterative join needs ~45 GiB).
#
# Output layout: a row group per calendar month (UTC) of the spine, and in the newest month a
# row group per trading week (Sunday to Saturday: the FX week opens on Sunday evening), each cut
# to at most DEFAULT_ROW_GROUP_ROWS (262,144) rows. The boundaries are a function of the spine's
# keys alone, so a refresh and a from-scratch build of the same window cut the same row groups.
# That is what makes the merge incremental: each row group's footer record holds a signature of
# everything its bytes depend on (the column plan, the encoder, and the digests of the input
# chunks overlapping its days) and the CRC32C of its bytes; a refresh copies every row group
# whose signature is unchanged byte for byte from the previous training file (checked against
# that CRC32C; its footer entry's offsets moved to where it now falls, the column chunks hold
# none: no page index is written) and encodes the rest: an appended day re-encodes its week
# (and the week before on a Monday), a corrected day its month or week, a rolling window's
# move its first month, not every month. When a month closes, its weeks become one month
# row group, encoded once. Why weeks and not days: a column chunk costs ~0.3 ms to read, align,
# encode and record whatever its rows (measured: a day of 17K columns ~6-9 CPU-s, mostly that
# fixed cost), so day row groups doubled a full build's merge at 44,437 rows while a refresh's
# re-encoded week costs about what two days cost. At production's 177,748 rows (about six
# months) that is ~6 month row groups plus up to 5 week row groups: ~11 x 17K column chunks in
# the footer, against 347 x 17K in the first team's file. Readers select columns; a month's
# column chunk (~30K float64) is ~200 KB.
# Compression is zstd level 1 with BYTE_STREAM_SPLIT for float columns: on smooth float series
# it compresses 1.32x vs 1.09x for plain zstd and encodes 2.5x and decodes 5x faster (numbers in
# bench/README.md); zstd also entropy-codes the int/string columns, which lz4 does not.
# Dictionary encoding only for int/bool/string columns (codes, flags, constant labels), not for
# high-cardinality floats, where it costs a failed dictionary attempt per column chunk.
# Statistics (null count, min/max) stay on: validation reads null counts from the footer.
#
# Two threads decode, align and encode pieces (pyarrow releases the GIL) while the main thread
# appends finished pieces in order, so decoding and encoding overlap on two cores.

from __future__ import annotations

import base64
import errno
import hashlib
import io
import itertools
import json
import os
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Catalog, Table, feature_name
from bqx_assets.core.coverage import (
    COVERAGE_KEY,
    Coverage,
    SpineIndex,
    TableCoverage,
    newest_day_start,
    table_coverage_of,
)
from bqx_assets.core.errors import MergeError, StorageError
from bqx_assets.core.footer import MAGIC, FooterAssembler, Piece
from bqx_assets.core.keys import check_unique, key_array, keys_us, pack_keys, unpack_keys
from bqx_assets.core.layout import ARROW_TYPES, KEY, KEY_TYPE
from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes
from bqx_assets.core.storage import StagedFile, StagedUpload, StoredFile

DEFAULT_ROW_GROUP_ROWS = 262_144
"""Most rows in one output row group (a month holds ~32K minutes; see the notes above)."""
ROW_GROUPS_KEY = "bqx:row_groups"
"""Footer key-value metadata: each row group's rows, byte span, CRC32C, signature, and its
RowGroup struct's span and CRC32C: what a later merge needs to copy it (`_Reuse`)."""
LAYOUT_FORMAT = 2
"""Bumped whenever the output's bytes for the same inputs change: no row group is copied from a
file of another format."""
_COPY_BYTES = 16 * 1024 * 1024  # a copied row group moves in blocks of this size
_SPLICE_BYTES = 256 * 1024 * 1024  # a kernel copy's step: a cancelled copy stops within one
_NO_SPLICE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}
"""copy_file_range's errors for files it cannot copy between (other filesystems, old kernels)."""
OUTPUT_COMPRESSION = "zstd"
OUTPUT_COMPRESSION_LEVEL = 1
PIECE_BYTES = 32 * 1024 * 1024
"""Decoded size of one piece (columns x rows x 8 bytes): what one worker holds at a time."""
WORKERS = 2
_IN_FLIGHT = 2 * WORKERS  # finished pieces waiting for the writer: bounds memory, keeps both busy

# Checkpoints in an object store (gs://) are read in place, never copied to local disk: for each
# piece only the byte ranges of its column chunks (and the key column's) in the row groups it
# overlaps, located from the footer read once per file. Those ranges are fetched by IO_THREADS
# threads ahead of the two decoding workers, up to PREFETCH_BYTES of compressed bytes, so the
# network latency of one request (~30 ms on GCS) overlaps decoding instead of adding to it.
IO_THREADS = 8
"""Ranged reads in flight at once (under the client's HTTP connection pool of 10)."""
PREFETCH_BYTES = 128 * 1024 * 1024
"""Compressed bytes fetched ahead of the decoding workers: bounds memory, hides latency."""
_GAP = 256 * 1024  # column chunks closer than this are fetched in one request
KEPT_FOOTERS = 6_000
"""Local chunks whose footers one merge keeps between checking them and reading their pieces
(~36 KB each as measured: ~0.2 GiB); a merge that opens more reads each footer twice."""

Input = Path | StoredFile
"""A checkpoint: a local file, or a stored object read in place by byte ranges."""
Inputs = Input | tuple[Input, ...]
"""A table's checkpoint: one file, or its date-range chunks in key order (core/chunks.py)."""
_Blocks = list[tuple[int, bytes]]
_PartBlocks = dict[int, _Blocks]
"""Byte ranges fetched ahead, by chunk (part) of a table."""


@dataclass(frozen=True)
class PartId:
    """What a row group copied from an earlier file depends on for one input part (a chunk):
    the key range it may hold rows in, [start, end) in microseconds, and a digest of its bytes
    (its manifest's CRC32C and size)."""

    start: int
    end: int
    digest: str


@dataclass(frozen=True)
class PartFacts:
    """What planning a merge needs of one part (a chunk), recorded when the part is written:
    each row group's rows, each column's type and null cells (its footer statistics; -1 where
    they have none) and the part's keys, packed (`keys.pack_keys`; in file order). A merge
    plans a table from its parts' facts and opens only the parts whose rows it encodes: a
    refresh that copies most row groups reads no footer or key column of the parts behind them
    (~15,000 at production length). Facts are trusted as far as the part's bytes are: a
    chunk's are in its manifest, checked against the file's size and CRC32C before the merge;
    a part that is opened is checked against them (columns, types, row groups). The keys stay
    packed until a table is planned (a pair's keys unpacked are ~1 GB at production length)."""

    rows: tuple[int, ...]
    names: tuple[str, ...]
    """The part's columns but the key, in file order; `types` (their `_canonical` Arrow types
    as text) and `nulls` (null cells) are theirs. Tuples of interned text: a pair holds
    ~15,000 parts'."""
    types: tuple[str, ...]
    nulls: tuple[int, ...]
    packed_keys: str

    @classmethod
    def of(cls, meta: pq.FileMetaData, data: pa.Table, keys: np.ndarray) -> PartFacts:
        """The facts of a part from its footer as written (its row groups), the table written
        (its columns' types and null cells: what the footer's statistics count; taken from the
        table, where they are known, rather than the footer) and its keys."""
        schema = data.schema
        names, types = schema.names, schema.types
        at = [i for i, n in enumerate(names) if n != KEY]
        columns = data.columns
        return cls(
            tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups)),
            tuple(names[i] for i in at),
            tuple(str(_canonical(types[i])) for i in at),
            tuple(columns[i].null_count for i in at),
            pack_keys(keys),
        )

    def columns(self) -> dict[str, tuple[str, int]]:
        """(type as text, null cells) by column name."""
        return dict(zip(self.names, zip(self.types, self.nulls, strict=True), strict=True))

    def keys(self) -> np.ndarray:
        """The part's keys, int64 microseconds; ValueError when the record does not hold as
        many as its row groups' rows."""
        return unpack_keys(self.packed_keys, sum(self.rows))

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": list(self.rows),
            "columns": {
                n: [t, c] for n, t, c in zip(self.names, self.types, self.nulls, strict=True)
            },
            "keys": self.packed_keys,
        }

    @classmethod
    def from_json(cls, data: Any) -> PartFacts | None:
        """None when `data` is not a record of facts (the part is then opened and read); its
        keys are unpacked, and checked, when the table is planned."""
        try:
            rows = tuple(int(n) for n in data["rows"])
            columns = [
                (sys.intern(str(n)), sys.intern(str(t)), int(c))
                for n, (t, c) in data["columns"].items()
            ]
            names, types, nulls = (
                (tuple(v) for v in zip(*columns, strict=True)) if columns else ((), (), ())
            )
            return cls(rows, names, types, nulls, str(data["keys"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass(frozen=True)
class VouchedFile:
    """A local previous training file whose storage vouches for its bytes: a checksum recorded
    with the file when it was written, still bound to its size and mtime
    (`LocalStorage.vouches`). A refresh copies its unchanged row groups without reading them
    again to check them against their recorded CRC32C (on XFS or btrfs the copy then shares
    their extents: no read, no write). The trust is the checksum record's, as for chunks: only
    a change that keeps the file's size and mtime goes unseen."""

    path: Path


@dataclass(frozen=True)
class FeatureSource:
    """One feature table's checkpoint and the columns it contributes, in output order."""

    table: str
    path: Inputs
    """The checkpoint file, or the table's chunks in key order: read as one table (their keys
    must not repeat across chunks)."""
    columns: tuple[tuple[str, str], ...] | None = None
    """(source column, output name) in output order; None = every non-key column of the file,
    named `{table}__{column}`."""
    dtypes: Mapping[str, str] | None = None
    """Expected BigQuery type per source column; a file that differs is an error."""
    ids: tuple[PartId, ...] = ()
    """One per part of `path`, in the same order; without them no row group is copied from
    a previous file."""
    facts: tuple[PartFacts, ...] = ()
    """One per part of `path`, in the same order: the table is planned from them and only the
    parts it encodes rows from are opened; without them every part is opened and its key
    column read."""


@dataclass(frozen=True)
class MergeReport:
    rows: int
    columns: int
    seconds: float
    peak_rss_bytes: int
    bytes_written: int
    row_groups: int
    coverage: Coverage | None = None
    """Which spine rows each feature table covered (also in the file's footer metadata)."""
    staged: StagedFile | None = None
    """The verified temporary object when the output was a `StagedUpload`."""
    reused_row_groups: int = 0
    """Leading row groups copied from the previous file (unchanged inputs)."""
    reused_bytes: int = 0
    parts: int = 0
    """Input parts (chunks) of the feature tables."""
    parts_opened: int = 0
    """Of those, the parts whose files were opened: all of them but where a refresh copies the
    row groups they feed and their facts were known (`PartFacts`)."""


def sources_for_pair(
    catalog: Catalog,
    pair: str,
    path_of: Callable[[Table], Inputs],
    ids_of: Callable[[Table], tuple[PartId, ...]] | None = None,
    facts_of: Callable[[Table], tuple[PartFacts, ...]] | None = None,
) -> list[FeatureSource]:
    """The pair's feature tables in catalog order, named by the catalog's prefix rule; leak
    columns (`target_*` of feature tables) are checked against the catalog but not written."""
    by_table: dict[str, list[tuple[str, str]]] = {}
    for feature in catalog.feature_columns(pair):
        by_table.setdefault(feature.table.name, []).append((feature.column.name, feature.name))
    return [
        FeatureSource(
            table=table.name,
            path=path_of(table),
            columns=tuple(by_table.get(table.name, ())),
            dtypes={c.name: c.dtype for c in table.columns},
            ids=ids_of(table) if ids_of else (),
            facts=facts_of(table) if facts_of else (),
        )
        for table in catalog.tables_for(pair)
    ]


def merge_checkpoints(
    spine: Inputs | str,
    spine_columns: Sequence[str],
    features: Sequence[FeatureSource],
    out: Path | StagedUpload,
    *,
    row_group_rows: int | None = None,
    progress: Callable[[str], None] | None = None,
    spine_ids: Sequence[PartId] = (),
    previous: Input | VouchedFile | None = None,
) -> MergeReport:
    """Write `out`: the spine's rows in spine order, columns `interval_time`, `spine_columns`,
    then each feature source's columns, left-joined on `interval_time`.

    Every input is checked before anything heavy is done (schemas, key types, duplicate keys,
    name collisions), but for the copy of a refresh's unchanged leading row groups into a local
    output, which starts first and stops on an error; the file is written to a temporary path
    beside `out`, verified by reading its footer and key column back, and only then renamed. On
    any error `out` is untouched.

    `out` may instead be a `StagedUpload` (a gs:// output root): the file is streamed into it
    as it is written, committed, and verified by ranged reads of the stored object; the report
    names the staged object, which the caller publishes or discards. On any error the upload is
    aborted and no object is left.

    `previous` (an earlier training file of the pair, e.g. the published one) and the inputs'
    part ids (`spine_ids`, `FeatureSource.ids`) make the merge incremental: its row groups
    whose inputs are unchanged are copied, checked against their CRC32C, instead of encoded;
    the result is the file a from-scratch merge writes, byte for byte. The copied bytes are
    read and checked against each row group's recorded CRC32C, unless `previous` is a
    `VouchedFile` (its storage vouches for its bytes): then a local output gets them from the
    kernel unread.
    """
    watch = Stopwatch()
    say = progress or (lambda _line: None)
    spine = spine if isinstance(spine, tuple) else _input(spine)
    rows_per_group = row_group_rows or DEFAULT_ROW_GROUP_ROWS
    if rows_per_group < 1:
        raise MergeError(f"row_group_rows must be positive, got {rows_per_group}")

    keys, spine_table = _read_spine(spine, spine_columns)
    newest_from = newest_day_start(keys)
    groups = row_groups(keys, rows_per_group)
    signatures = _signatures(keys, groups, spine, spine_ids, features)
    vouched = isinstance(previous, VouchedFile)
    if isinstance(previous, VouchedFile):
        previous = previous.path
    previous = _input(previous) if previous is not None else None

    def layout_of(names: Sequence[str], types: Sequence[pa.DataType]) -> _Layout:
        return _Layout(_plan_digest(names, [*spine_table.schema.types, *types], rows_per_group),
                       signatures)  # fmt: skip

    def reuse_of(layout: _Layout, names: Sequence[str]) -> _Reuse | None:
        if previous is None:
            return None
        reuse = _reuse(previous, layout, names, groups, keys, newest_from, say)
        return replace(reuse, vouched=vouched) if reuse is not None else None

    # What to copy from a local previous file into a local output is known before the inputs
    # are checked when the catalog declares every column and type: the copy starts first.
    early: tuple[_Layout, _Reuse | None] | None = None
    declared = _declared(features)
    if declared is not None and isinstance(previous, Path) and not isinstance(out, StagedUpload):
        names = [KEY, *spine_columns, *declared[0]]
        layout = layout_of(names, declared[1])
        early = (layout, reuse_of(layout, names))

    def prepare() -> tuple[list[_Plan], list[str], _Layout, _Reuse | None]:
        say(f"spine {_shown(_parts(spine))}: {len(keys):,} rows; checking {len(features)} tables")
        plans = _plan_sources(features, SpineIndex.of(keys), newest_from)
        names = [KEY, *spine_columns] + [n for p in plans for n in p.names]
        _check_names(spine, spine_columns, plans)
        first_column = 1 + len(spine_columns)
        for plan in plans:
            plan.first_column, first_column = first_column, first_column + len(plan.columns)
            if plan.coverage is not None:
                plan.coverage = replace(plan.coverage, first_column=plan.first_column)
        say(f"inputs checked: {len(names):,} output columns")
        layout = layout_of(names, [t for p in plans for t in p.types])
        if early is None:
            reuse = reuse_of(layout, names)
        elif layout != early[0]:  # the checks hold the files to the declared columns and types
            raise MergeError("the checked inputs' columns differ from the catalog's declaration")
        else:
            reuse = early[1]
        copied = reuse.groups if reuse is not None else {}
        _open_needed(plans, keys, [g for r, g in enumerate(groups) if r not in copied])
        return plans, names, layout, reuse

    staged: StagedFile | None = None
    if isinstance(out, StagedUpload):
        try:
            plans, names, layout, reuse = prepare()
            coverage = _write(
                out, keys, spine_table, plans, groups, say, newest_from, layout, reuse
            )
            staged = out.commit()
            _verify(staged.file, keys, names, len(groups))
        except BaseException:
            out.abort()
            raise
        written = staged.info.size
    else:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
        try:
            # Read too: copied row groups are checked where they landed.
            with open(tmp, "w+b") as f, _Ahead(f, early[1] if early else None) as copier:
                plans, names, layout, reuse = prepare()
                coverage = _write(
                    f, keys, spine_table, plans, groups, say, newest_from, layout, reuse, copier
                )
            _verify(tmp, keys, names, len(groups))
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written = out.stat().st_size
    report = MergeReport(
        rows=len(keys),
        columns=len(names),
        seconds=round(watch.seconds, 3),
        peak_rss_bytes=peak_rss_bytes(),
        bytes_written=written,
        row_groups=len(groups),
        coverage=coverage,
        staged=staged,
        reused_row_groups=reuse.count if reuse else 0,
        reused_bytes=reuse.bytes if reuse else 0,
        parts=sum(len(p.parts) for p in plans),
        parts_opened=sum(len(p.parts) - len(p.unopened) for p in plans),
    )
    out = staged.info.uri if staged is not None else out
    say(f"wrote {out}: {report.rows:,} rows x {report.columns:,} columns in {report.seconds:.1f}s")
    return report


def row_groups(keys: np.ndarray, cap: int = DEFAULT_ROW_GROUP_ROWS) -> list[tuple[int, int]]:
    """The output's row groups as (start, stop) rows of the spine: a row group per calendar
    month (UTC) before the newest month, a row group per trading week (from Sunday, when the FX
    week opens) in the newest month, each cut to at most `cap` rows. A function of the keys
    alone: a refresh and a from-scratch build of the same spine cut the same row groups."""
    if not len(keys):
        return []
    stamps = keys.astype("datetime64[us]")
    months = stamps.astype("datetime64[M]").astype(np.int64)
    weeks = (stamps.astype("datetime64[D]").astype(np.int64) - _FIRST_SUNDAY) // 7
    label = np.where(months == months[-1], weeks * 2 + 1, months * 2)  # odd: a week, even: a month
    edges = [0, *(np.flatnonzero(label[1:] != label[:-1]) + 1).tolist(), len(keys)]
    return [
        (a, min(a + cap, stop))
        for start, stop in itertools.pairwise(edges)
        for a in range(start, stop, cap)
    ]


_FIRST_SUNDAY = 3  # 1970-01-04, day 3 of the epoch: weeks counted from it start on Sundays


# -- incremental: which row groups can be copied from the previous file ----------------------
@dataclass(frozen=True)
class _Layout:
    plan: str
    """Digest of what every row group's bytes depend on besides its inputs: the columns, their
    types, the encoder and its settings."""
    signatures: list[str | None]
    """Per row group: digest of `plan` and the ids of the input parts overlapping its keys
    (None when an input has no ids: such a row group is never copied)."""


@dataclass(frozen=True)
class _Adopted:
    """A row group of the previous file to copy: its record there (byte span, CRC32C, ...), its
    RowGroup struct and its index there when that struct matched its recorded CRC32C (so the
    footer can keep its bytes unparsed where it does not move)."""

    record: dict[str, Any]
    raw: bytes
    was: int | None


@dataclass(frozen=True)
class _Reuse:
    """The row groups to copy from `source`, by their index in the new file."""

    source: Input
    groups: dict[int, _Adopted]
    vouched: bool = False
    """The source is a `VouchedFile`: its row groups are copied unread (see `_splice`)."""

    @property
    def count(self) -> int:
        return len(self.groups)

    @property
    def bytes(self) -> int:
        return sum(int(g.record["end"]) - int(g.record["start"]) for g in self.groups.values())


def _plan_digest(names: Sequence[str], types: Sequence[pa.DataType], rows_per_group: int) -> str:
    text = json.dumps(
        [
            LAYOUT_FORMAT,
            pa.__version__,
            OUTPUT_COMPRESSION,
            OUTPUT_COMPRESSION_LEVEL,
            rows_per_group,
            list(names),
            [str(t) for t in types],
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _signatures(
    keys: np.ndarray,
    groups: Sequence[tuple[int, int]],
    spine: Inputs,
    spine_ids: Sequence[PartId],
    features: Sequence[FeatureSource],
) -> list[str | None]:
    """Each row group's digest of the ids of every input part that may hold rows for it: the
    spine's parts (its keys and targets) and each table's parts, in output order."""
    known = len(spine_ids) == len(_parts(spine)) and all(
        len(s.ids) == len(_parts(s.path)) for s in features
    )
    if not known:
        return [None] * len(groups)
    out: list[str | None] = []
    for a, b in groups:
        lo, hi = int(keys[a:b].min()), int(keys[a:b].max())
        digest = hashlib.sha256()
        for ids in [spine_ids, *(s.ids for s in features)]:
            digest.update(b"|")
            for part in ids:
                if part.start <= hi and part.end > lo:
                    digest.update(f"{part.start}:{part.end}:{part.digest};".encode())
        out.append(digest.hexdigest())
    return out


def _declared(features: Sequence[FeatureSource]) -> tuple[list[str], list[pa.DataType]] | None:
    """The feature columns' output names and types as the sources declare them (the catalog's
    columns and types: what `_plan_one` makes of them once the files match), or None when a
    source leaves them to its file."""
    names: list[str] = []
    types: list[pa.DataType] = []
    for source in features:
        if source.columns is None or source.dtypes is None:
            return None
        for column, name in source.columns:
            dtype = source.dtypes.get(column)
            if dtype not in ARROW_TYPES:
                return None
            names.append(name)
            types.append(ARROW_TYPES[dtype])
    return names, types


def _read_range(source: Input, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of a local file or a stored object; MergeError when it ends early."""
    if isinstance(source, StoredFile):
        return source.read_range(start, stop)
    with open(source, "rb") as f:
        f.seek(start)
        data = f.read(stop - start)
    if len(data) != stop - start:
        raise MergeError(f"previous training file {source}: ends early")
    return data


def _tail(source: Input) -> tuple[int, bytes]:
    """The file's size and its footer (FileMetaData bytes)."""
    size = source.size if isinstance(source, StoredFile) else source.stat().st_size
    end = _read_range(source, size - 8, size)
    length = int.from_bytes(end[:4], "little")
    if end[4:] != MAGIC or length + 12 > size:
        raise MergeError(f"previous training file {source}: not a parquet file")
    return size, _read_range(source, size - 8 - length, size - 8)


def _reuse(
    previous: Input,
    layout: _Layout,
    names: Sequence[str],
    groups: Sequence[tuple[int, int]],
    keys: np.ndarray,
    newest_from: int,
    say: Callable[[str], None],
) -> _Reuse | None:
    """The row groups of `previous` whose signature and rows match one of this merge's, by the
    index they get here. The row groups holding the newest day are always encoded (they also
    count its nulls)."""
    try:
        size, footer = _tail(previous)
        meta = pq.read_metadata(
            pa.BufferReader(MAGIC + footer + len(footer).to_bytes(4, "little") + MAGIC)
        )
        record = json.loads((meta.metadata or {}).get(ROW_GROUPS_KEY.encode(), b"null"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, StorageError, MergeError, pa.ArrowException) as exc:
        # Not an error: the file being built replaces it, from scratch.
        say(f"previous training file {previous} not reused: {exc}")
        return None
    if not isinstance(record, dict) or record.get("format") != LAYOUT_FORMAT:
        say(f"previous training file {previous} not reused: written by another layout")
        return None
    theirs = record.get("groups") or []
    # The record must describe this very footer: a file rewritten by another writer can carry
    # it over (pyarrow keeps a table's key-value metadata) without its row groups.
    described = meta.num_row_groups == len(theirs) and all(
        meta.row_group(r).num_rows == g.get("rows") for r, g in enumerate(theirs)
    )
    if record.get("plan") != layout.plan or meta.schema.names != list(names) or not described:
        say(f"previous training file {previous} not reused: other columns, types or encoder")
        return None
    # Any row group whose inputs are unchanged, wherever it was: a rolling window drops days at
    # the start and a corrected day changes one row group, the others move as they are.
    by_signature = {g.get("signature"): (i, g) for i, g in enumerate(theirs) if g.get("signature")}
    chosen: dict[int, _Adopted] = {}
    for r, (a, b) in enumerate(groups):
        if int(keys[b - 1]) >= newest_from:
            break  # the newest day's row groups are always encoded: they count its nulls
        was, g = by_signature.get(layout.signatures[r], (None, None))
        if g is None or g.get("rows") != b - a:
            continue
        if not len(MAGIC) <= int(g["start"]) < int(g["end"]) <= size - len(footer) - 8:
            continue
        raw = footer[int(g["footer"][0]) : int(g["footer"][1])]
        checked = g.get("footer_crc32c") == _crc32c(raw)
        chosen[r] = _Adopted(g, raw, was if checked else None)
    return _Reuse(previous, chosen) if chosen else None


def _crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


_UNREAD = ""
"""What `_splice` returns for bytes copied unread (a vouched-for source): nothing to check."""


def _splice(
    source: Path,
    fd: int,
    start: int,
    stop: int,
    at: int,
    cancel: threading.Event | None = None,
    *,
    read: bool = True,
) -> str | None:
    """Copy bytes [start, stop) of the local file `source` to `at` in the file open as `fd`;
    their CRC32C, or None when `cancel` is set on the way.

    With `read=False` (the source's storage vouches for its bytes: `VouchedFile`) the kernel
    copies them unread, and `_UNREAD` is returned: on XFS or btrfs that shares their extents
    and costs neither a read nor a write. Where the kernel cannot copy between the two files,
    they are read, checked and written as below.

    Each step is checksummed as it is read from the source (its pages are in the page cache,
    having just been read), then copied by the kernel (no pass through Python's buffers: a
    refresh copies ~9 GB; on a filesystem with shared extents, XFS or btrfs, the copy shares
    them instead of writing) where it can copy between the two files, else written from the
    bytes read. The checked bytes are the copied ones unless the previous file is rewritten in
    place during the copy; it is only ever replaced by a rename, which this open file outlives."""
    kernel = hasattr(os, "copy_file_range")
    if kernel and not read:
        copied = _kernel_copy(source, fd, start, stop, at, cancel)
        if copied is None:
            return None
        if copied:
            return _UNREAD
        kernel = False  # the whole range again, read, checked and written
    crc = google_crc32c.Checksum()
    block = bytearray(min(_COPY_BYTES, max(stop - start, 1)))
    view = memoryview(block)
    with open(source, "rb", buffering=0) as src:
        done = start
        while done < stop:
            if cancel is not None and cancel.is_set():
                return None
            step = min(stop - done, _SPLICE_BYTES)
            before, read = crc.copy(), 0
            while read < step:
                n = os.preadv(src.fileno(), [view[: min(len(block), step - read)]], done + read)
                if n == 0:
                    raise MergeError(f"previous training file {source}: ends early")
                crc.update(np.frombuffer(block, dtype=np.uint8, count=n))  # no copy
                if not kernel:
                    _write_all(fd, view[:n], at + done - start + read)
                read += n
            if kernel:
                try:
                    _copy_range(src.fileno(), fd, done, at + done - start, step)
                except OSError as exc:
                    if exc.errno not in _NO_SPLICE:
                        raise
                    kernel, crc = False, before
                    continue  # this step again, written from what is read
            done += step
    return base64.b64encode(crc.digest()).decode()


def _kernel_copy(
    source: Path, fd: int, start: int, stop: int, at: int, cancel: threading.Event | None = None
) -> bool | None:
    """Copy bytes [start, stop) of `source` to `at` in `fd` by the kernel alone, unread: True
    when copied, False when the kernel cannot copy between the two files, None when `cancel`
    is set on the way. Extents are shared (XFS, btrfs) only where `start` and `at` fall at the
    same offset within a block; elsewhere the kernel copies the bytes (~1 GB/s here)."""
    try:
        with open(source, "rb", buffering=0) as src:
            for done in range(start, stop, _SPLICE_BYTES):
                if cancel is not None and cancel.is_set():
                    return None
                step = min(stop - done, _SPLICE_BYTES)
                _copy_range(src.fileno(), fd, done, at + done - start, step)
        return True
    except OSError as exc:
        if exc.errno not in _NO_SPLICE:
            raise
        return False


def _copy_range(src: int, dst: int, offset: int, to: int, count: int) -> None:
    while count > 0:
        n = os.copy_file_range(src, dst, count, offset, to)
        if n == 0:
            raise OSError(errno.EIO, "copy_file_range copied nothing")
        offset, to, count = offset + n, to + n, count - n


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _damaged(reuse: _Reuse, r: int) -> MergeError:
    return MergeError(
        f"previous training file {reuse.source}: its row group for row group {r} does not "
        "match the CRC32C recorded when it was written (the file was changed or damaged "
        "since); nothing was published: move it away and run again to build from scratch"
    )


class _Checksummed:
    """A writer that keeps the CRC32C of what was written since its last `mark`."""

    def __init__(self, f: BinaryIO | StagedUpload) -> None:
        self._f = f
        self._crc = google_crc32c.Checksum()

    @property
    def local(self) -> io.BufferedRandom | None:
        """The output as a local file open for reading too (copies land in it in place), or
        None (a streaming upload)."""
        return self._f if isinstance(self._f, io.BufferedRandom) else None

    def write(self, data: bytes | memoryview) -> int:
        # The C extension refuses memoryviews; a numpy view of the same bytes is no copy.
        self._crc.update(np.frombuffer(data, dtype=np.uint8) if len(data) else b"")
        return self._f.write(data)

    def splice(self, source: Path, start: int, stop: int, *, read: bool = True) -> str:
        """Append bytes [start, stop) of the local file `source` (`_splice`); their CRC32C
        (`_UNREAD` when copied unread)."""
        f = self.local
        assert f is not None
        f.flush()
        at = f.tell()
        crc = _splice(source, f.fileno(), start, stop, at, read=read)
        assert crc is not None
        f.seek(at + stop - start)
        self.mark()  # what landed is checked by the caller against its record
        return crc

    def cut(self) -> None:
        """End a segment of a streaming upload here (`StagedUpload.cut`)."""
        if isinstance(self._f, StagedUpload):
            self._f.cut()

    def refer(self, size: int, crc32c: str) -> bool:
        """Append, unsent, a segment an earlier upload kept with these bytes
        (`StagedUpload.refer`); False when there is none."""
        if isinstance(self._f, StagedUpload) and self._f.refer(size, crc32c):
            self.mark()
            return True
        return False

    def skip_to(self, offset: int) -> None:
        """Go on writing at `offset` of a local file (the bytes before it are copied there by
        `_Ahead`)."""
        f = self.local
        assert f is not None
        f.seek(offset)
        self.mark()

    def tell(self) -> int:
        return self._f.tell()

    def mark(self) -> str:
        digest = base64.b64encode(self._crc.digest()).decode()
        self._crc = google_crc32c.Checksum()
        return digest


def _copy(reuse: _Reuse, r: int, f: _Checksummed) -> None:
    """Copy the bytes of reused row group `r`, checked against the CRC32C it was written with."""
    g = reuse.groups[r].record
    start, end = int(g["start"]), int(g["end"])
    try:
        if isinstance(reuse.source, Path) and f.local is not None:
            crc = f.splice(reuse.source, start, end, read=not reuse.vouched)
        elif f.refer(end - start, g["crc32c"]):
            # Composed from the segment an earlier upload kept: GCS holds these bytes with this
            # CRC32C (its own, from the listing), neither downloaded nor uploaded.
            crc = g["crc32c"]
        else:
            for at in range(start, end, _COPY_BYTES):
                f.write(_read_range(reuse.source, at, min(at + _COPY_BYTES, end)))
            crc = f.mark()
    except StorageError as exc:
        raise MergeError(f"previous training file {reuse.source}: {exc}") from exc
    if crc not in (_UNREAD, g["crc32c"]):
        raise _damaged(reuse, r)


class _Ahead:
    """The leading row groups a refresh copies (its unchanged months and weeks), copied into
    their final place in a local output by a thread that starts before the inputs are checked:
    the copy waits on the disk, the checks and the encoding of the row groups after them on
    the CPU, so they overlap. `wait` raises what the copy raised (a damaged previous file)."""

    def __init__(self, f: io.BufferedRandom, reuse: _Reuse | None) -> None:
        self.reuse = reuse
        self.count = 0
        while reuse is not None and self.count in reuse.groups:
            self.count += 1
        self.starts: list[int] = []  # where each one goes
        at = len(MAGIC)
        for r in range(self.count):
            assert reuse is not None
            g = reuse.groups[r].record
            self.starts.append(at)
            at += int(g["end"]) - int(g["start"])
        self.end = at
        # Where each lands is where it lay in the previous file (both begin with the magic):
        # the whole span can then be copied as one.
        self.in_place = reuse is not None and all(
            self.starts[r] == int(reuse.groups[r].record["start"]) for r in range(self.count)
        )
        self._fd = f.fileno()
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bqx-copy-ahead", daemon=True)

    def __enter__(self) -> _Ahead:
        if self.count:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cancel.set()  # after `wait` it is done; on an error it stops between steps
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        reuse = self.reuse
        assert reuse is not None and isinstance(reuse.source, Path)
        try:
            if reuse.vouched and self.in_place and hasattr(os, "copy_file_range"):
                # The leading row groups keep their offsets, the magic before them too: one
                # copy of the file's first `end` bytes to the same offsets, block-aligned, so
                # that XFS or btrfs share every whole block (a copy per row group starts
                # mid-block and makes the kernel copy the bytes: 11 s at production length).
                copied = _kernel_copy(reuse.source, self._fd, 0, self.end, 0, self._cancel)
                if copied is not False:
                    return
            for r in range(self.count):
                g = reuse.groups[r].record
                start, end = int(g["start"]), int(g["end"])
                crc = _splice(
                    reuse.source, self._fd, start, end, self.starts[r], self._cancel,
                    read=not reuse.vouched,
                )  # fmt: skip
                if crc is None:
                    return
                if crc not in (_UNREAD, g["crc32c"]):
                    raise _damaged(reuse, r)
        except BaseException as exc:
            self._error = exc

    def wait(self) -> None:
        if self.count:
            self._thread.join()
        if self._error is not None:
            raise self._error


# -- inputs ----------------------------------------------------------------------------------
@dataclass
class _Plan:
    source: FeatureSource
    columns: list[str]
    names: list[str]
    types: list[pa.DataType]
    groups: list[tuple[int, int]]
    """(min, max) key in microseconds of each checkpoint row group, from the keys themselves;
    the row groups of all the table's parts (chunks) in order."""
    first_column: int = 0
    source_rows: int = 0
    source_nulls: list[int] = field(default_factory=list)
    """Nulls per column in the whole checkpoint, from its footer statistics (-1: none there)."""
    coverage: TableCoverage | None = None
    newest_nulls: np.ndarray | None = None
    """Nulls per column written into the newest day's rows, added up piece by piece."""
    metadata: list[pq.FileMetaData | None] = field(default_factory=list)
    """The footer of each stored part, read once and reused by every piece (None: local)."""
    group_at: list[tuple[int, int]] = field(default_factory=list)
    """(part, row group in that part) of each entry of `groups`."""
    unopened: set[int] = field(default_factory=set)
    """Parts planned from their facts and not opened yet (`_open_needed`)."""

    @cached_property
    def parts(self) -> tuple[Input, ...]:
        return _parts(self.source.path)

    @property
    def stored(self) -> bool:
        return any(isinstance(p, StoredFile) for p in self.parts)

    @cached_property
    def where(self) -> str:
        return f"table {self.source.table} ({_shown(self.parts)})"


def _shown(parts: Sequence[Input]) -> str:
    return str(parts[0]) if len(parts) == 1 else f"{parts[0]} and {len(parts) - 1} more chunks"


def _parts(path: Inputs) -> tuple[Input, ...]:
    return tuple(_input(p) for p in path) if isinstance(path, tuple) else (_input(path),)


def _input(path: Input | str) -> Input:
    return path if isinstance(path, (StoredFile, Path)) else Path(path)


def _open(
    path: Input,
    where: str,
    *,
    metadata: pq.FileMetaData | None = None,
    blocks: _Blocks | None = None,
) -> pq.ParquetFile:
    """A parquet reader over a local file, or over a stored object by ranged reads (`blocks`:
    ranges fetched ahead; `metadata`: its footer, so it is not fetched again)."""
    try:
        if isinstance(path, StoredFile):
            # Without blocks, pre_buffer coalesces the reads into few requests; with them,
            # each column chunk is read on its own, from the blocks.
            return pq.ParquetFile(
                path.open(blocks or ()), metadata=metadata, pre_buffer=blocks is None
            )
        # An open file, not a path: pyarrow would resolve a filesystem for each of ~4,000
        # chunk files (~0.1 ms each). The file closes with the reader.
        return pq.ParquetFile(pa.OSFile(str(path)), metadata=metadata)
    except FileNotFoundError:
        raise MergeError(f"{where}: file does not exist") from None
    except StorageError as exc:
        raise MergeError(f"{where}: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{where}: not a readable parquet file: {exc}") from exc


def _chunk_ranges(
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


def _fetch(path: StoredFile, ranges: Sequence[tuple[int, int]], where: str) -> _Blocks:
    try:
        return [(start, path.read_range(start, stop)) for start, stop in ranges]
    except StorageError as exc:
        raise MergeError(f"{where}: {exc}") from exc


def _canonical(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    return kind


def _matches(dtype: str, kind: pa.DataType) -> bool:
    if dtype == "STRING":
        return _canonical(kind) == pa.string()
    return kind == ARROW_TYPES[dtype]


def _read_spine(path: Inputs, columns: Sequence[str]) -> tuple[np.ndarray, pa.Table]:
    parts = _parts(path)
    if len(parts) > 1:
        tables = [_read_spine_part(p, columns, f"spine {p}") for p in parts]
        table = pa.concat_tables(tables)
        where = f"spine {parts[0]} and {len(parts) - 1} more chunks"
    else:
        where = f"spine {parts[0]}"
        table = _read_spine_part(parts[0], columns, where)
    if table.num_rows == 0:
        raise MergeError(f"{where}: has no rows")
    keys = keys_us(table.column(KEY), where, MergeError)
    check_unique(keys, where, MergeError)
    fields = [pa.field(c, _canonical(table.schema.field(c).type)) for c in columns]
    spine_table = table.drop_columns([KEY]).cast(pa.schema(fields)).combine_chunks()
    return keys, spine_table


def _read_spine_part(path: Input, columns: Sequence[str], where: str) -> pa.Table:
    pf = _open(path, where)
    schema = pf.schema_arrow
    missing = [c for c in [KEY, *columns] if c not in schema.names]
    if missing:
        raise MergeError(f"{where}: missing columns {missing}")
    try:
        # One file: ParquetFile.read (pq.read_table would load pyarrow.dataset, and pandas).
        # A stored one is pre-buffered: the columns in a few coalesced requests.
        table = pf.read(columns=[KEY, *columns])
    except StorageError as exc:
        raise MergeError(f"{where}: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{where}: not a readable parquet file: {exc}") from exc
    return table


def _plan_sources(
    features: Sequence[FeatureSource], spine: SpineIndex, newest_from: int
) -> list[_Plan]:
    """Each source's plan, its inputs checked (schemas, types, keys) and inspected: one pass
    over its parts, each opened once, tables WORKERS at a time (IO_THREADS at a time when any
    part is a stored object: a few small requests each, latency-bound). The first table that
    fails, in order, raises."""
    stored = any(isinstance(p, StoredFile) for s in features for p in _parts(s.path))
    with ThreadPoolExecutor(IO_THREADS if stored else WORKERS) as pool:
        return list(pool.map(lambda s: _plan_one(s, spine, newest_from), features))


def _plan_one(source: FeatureSource, spine: SpineIndex, newest_from: int) -> _Plan:
    if _from_facts(source):
        try:
            return _plan_from_facts(_Plan(source, [], [], [], []), spine, newest_from)
        except _Unpacked:
            pass  # a record without readable keys: the parts are opened, as without facts
    plan = _Plan(source, [], [], [], [])
    # Each part opened once: a local file's footer serves the checks and the key column's read;
    # a stored object's is fetched (its key column comes next, in one request).
    files = [_open(part, plan.where) for part in plan.parts]
    metas = [pf.metadata for pf in files]
    plan.metadata = [
        meta if isinstance(part, StoredFile) else None
        for part, meta in zip(plan.parts, metas, strict=True)
    ]
    try:
        schema = metas[0].schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{plan.where}: unreadable schema: {exc}") from exc
    if KEY not in schema.names:
        raise MergeError(f"{plan.where}: has no {KEY} column")
    for part, other in zip(plan.parts[1:], metas[1:], strict=True):
        if not other.schema.equals(metas[0].schema):
            raise MergeError(
                f"{plan.where}: chunk {part} has other columns or types than {plan.parts[0]}"
            )
    if sum(m.num_rows for m in metas) == 0:
        raise MergeError(f"{plan.where}: has no rows")
    expected = dict(source.dtypes or {})
    unknown = sorted(d for d in expected.values() if d not in ARROW_TYPES)
    if unknown:
        raise MergeError(f"{plan.where}: unsupported expected types {unknown}")
    absent = [c for c in expected if c not in schema.names]
    if absent:
        raise MergeError(f"{plan.where}: missing expected columns {absent}")
    wrong = [
        f"{c} is {schema.field(c).type}, expected {d}"
        for c, d in expected.items()
        if not _matches(d, schema.field(c).type)
    ]
    if wrong:
        raise MergeError(f"{plan.where}: schema differs from the catalog: {'; '.join(wrong)}")
    if source.columns is None:
        pairs = [(c, feature_name(source.table, c)) for c in schema.names if c != KEY]
    else:
        pairs = list(source.columns)
    missing = [c for c, _ in pairs if c not in schema.names]
    if missing:
        raise MergeError(f"{plan.where}: missing columns {missing}")
    for column, name in pairs:
        plan.columns.append(column)
        plan.names.append(name)
        dtype = expected.get(column)
        plan.types.append(ARROW_TYPES[dtype] if dtype else _canonical(schema.field(column).type))
    plan.source_rows = sum(m.num_rows for m in metas)
    # The parts' schemas are equal (checked above): the columns' leaf indexes are found once.
    leaf = {metas[0].schema.column(i).path: i for i in range(metas[0].num_columns)}
    at = [leaf[c] for c in plan.columns]
    nulls = [_source_nulls(m, at) for m in metas]
    plan.source_nulls = [
        -1 if any(n[i] < 0 for n in nulls) else sum(n[i] for n in nulls)
        for i in range(len(plan.columns))
    ]
    _inspect(plan, spine, newest_from, files)
    return plan


def _from_facts(source: FeatureSource) -> bool:
    """Whether a source is planned from its parts' facts: one per part, and its columns and
    their types declared."""
    return (
        bool(source.facts)
        and len(source.facts) == len(_parts(source.path))
        and source.columns is not None
        and source.dtypes is not None
    )


def _type_errors(plan: _Plan, types: Callable[[str], str | None]) -> list[str]:
    """The declared columns (those written and those only checked, such as leak columns) whose
    type in a part (its `_canonical` type as text; None: absent) is not the one declared: what
    `_matches` tells of an Arrow type."""
    wrong = []
    for column, dtype in (plan.source.dtypes or {}).items():
        found = types(column)
        if found is None:
            wrong.append(f"{column} is missing")
        elif found != str(ARROW_TYPES[dtype]):
            wrong.append(f"{column} is {found}, expected {dtype}")
    return wrong


class _Unpacked(Exception):
    """A part's recorded keys cannot be unpacked."""


def _plan_from_facts(plan: _Plan, spine: SpineIndex, newest_from: int) -> _Plan:
    """`_plan_one` and `_inspect` from the parts' facts: no part is opened here; those whose
    rows are encoded are opened and checked against their facts by `_open_needed`."""
    source = plan.source
    assert source.columns is not None and source.dtypes is not None
    unknown = sorted(d for d in source.dtypes.values() if d not in ARROW_TYPES)
    if unknown:
        raise MergeError(f"{plan.where}: unsupported expected types {unknown}")
    for column, name in source.columns:
        if column not in source.dtypes:
            raise MergeError(f"{plan.where}: column {column} has no declared type")
        plan.columns.append(column)
        plan.names.append(name)
        plan.types.append(ARROW_TYPES[source.dtypes[column]])
    found = [facts.columns() for facts in source.facts]
    for part, columns in zip(plan.parts, found, strict=True):

        def type_of(column: str, columns: dict[str, tuple[str, int]] = columns) -> str | None:
            return columns[column][0] if column in columns else None

        wrong = _type_errors(plan, type_of)
        if wrong:
            raise MergeError(
                f"{plan.where}: chunk {part} has other columns or types than the catalog "
                f"declares: {'; '.join(wrong)}"
            )
    plan.source_rows = sum(sum(f.rows) for f in source.facts)
    if plan.source_rows == 0:
        raise MergeError(f"{plan.where}: has no rows")
    plan.source_nulls = [
        -1 if any(f[c][1] < 0 for f in found) else sum(f[c][1] for f in found) for c in plan.columns
    ]
    plan.metadata = [None] * len(plan.parts)
    plan.group_at, plan.groups = [], []
    every = []
    for index, facts in enumerate(source.facts):
        try:
            keys = facts.keys()
        except ValueError:
            raise _Unpacked from None
        every.append(keys)
        stop = 0
        for g, n in enumerate(facts.rows):
            part = keys[stop : stop + n]
            plan.groups.append((int(part.min()), int(part.max())) if n else (1, 0))
            plan.group_at.append((index, g))
            stop += n
    file_keys = np.concatenate(every)
    check_unique(file_keys, plan.where, MergeError)
    plan.coverage = table_coverage_of(
        source.table, plan.first_column, plan.source_rows, file_keys, spine, newest_from,
        plan.source_nulls,
    )  # fmt: skip
    plan.newest_nulls = np.zeros(len(plan.columns), dtype=np.int64)
    plan.unopened = set(range(len(plan.parts)))
    return plan


def _open_needed(
    plans: Sequence[_Plan], keys: np.ndarray, encoded: Sequence[tuple[int, int]]
) -> None:
    """Open the parts planned from facts that the `encoded` row groups (spine rows) read, and
    check each against its facts: the declared columns and types, and its row groups' rows.
    A stored part's footer is kept for the pieces' ranged reads."""
    needed: list[tuple[_Plan, list[int]]] = []
    for plan in plans:
        if not plan.unopened:
            continue
        wanted = {i for a, b in encoded for i in _wanted(plan, keys[a:b])}
        parts = sorted({plan.group_at[i][0] for i in wanted} & plan.unopened)
        if parts:
            needed.append((plan, parts))
    stored = any(isinstance(plan.parts[p], StoredFile) for plan, parts in needed for p in parts)
    keep = sum(len(parts) for _, parts in needed) <= KEPT_FOOTERS

    def check_types(plan: _Plan, path: Input, meta: pq.FileMetaData) -> None:
        try:
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            raise MergeError(f"{plan.where}: chunk {path}: unreadable schema: {exc}") from exc
        names = set(schema.names)
        wrong = _type_errors(
            plan, lambda c: str(_canonical(schema.field(c).type)) if c in names else None
        )
        if KEY not in names:
            wrong.append(f"{KEY} is missing")
        if wrong:
            raise MergeError(
                f"{plan.where}: chunk {path} has other columns or types than the catalog "
                f"declares: {'; '.join(wrong)}"
            )

    def check(item: tuple[_Plan, list[int]]) -> None:
        # One table's parts: the first one's schema checked as Arrow types, the others compared
        # with it as parquet schemas (converting every part's schema to Arrow in threads grew
        # a merge by ~0.7 GiB at production length).
        plan, parts = item
        first: pq.ParquetSchema | None = None
        for part in parts:
            path, facts = plan.parts[part], plan.source.facts[part]
            meta = _open(path, plan.where).metadata
            if first is None or not meta.schema.equals(first):
                check_types(plan, path, meta)
                first = first or meta.schema
            rows = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            if rows != facts.rows:
                raise MergeError(
                    f"{plan.where}: chunk {path} has row groups of {list(rows)} rows, its record "
                    f"says {list(facts.rows)}: changed since it was checked; re-run its checkpoint"
                )
            # A stored part's footer is kept for the pieces' ranged reads; a local part's
            # when few parts are opened (a refresh's newest week), so that its pieces do not
            # read and parse it again. A merge from scratch opens every chunk: keeping 14,000
            # footers grew one by ~0.5 GiB.
            if keep or isinstance(path, StoredFile):
                plan.metadata[part] = meta

    with ThreadPoolExecutor(IO_THREADS if stored else WORKERS) as pool:
        list(pool.map(check, needed))
    for plan, parts in needed:
        plan.unopened.difference_update(parts)


def _source_nulls(meta: pq.FileMetaData, leaves: Sequence[int]) -> list[int]:
    """Null cells of each column (by its leaf index) in a checkpoint, summed from its footer's
    row-group statistics (no data read); -1 for a column whose footer has no null count."""
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    counts = []
    for leaf in leaves:
        total = 0
        for group in groups:
            stats = group.column(leaf).statistics
            if stats is None or not stats.has_null_count:
                total = -1
                break
            total += stats.null_count
        counts.append(total)
    return counts


def _check_names(spine: Inputs, spine_columns: Sequence[str], plans: Sequence[_Plan]) -> None:
    seen: dict[str, str] = {KEY: f"{spine}.{KEY}"}
    for column in spine_columns:
        if column in seen:
            raise MergeError(f"output column {column!r} comes from both {seen[column]} and {spine}")
        seen[column] = f"{spine}.{column}"
    taken: dict[str, tuple[_Plan, str]] = {}  # the message is only made for a collision
    for plan in plans:
        for column, name in zip(plan.columns, plan.names, strict=True):
            if name in seen or name in taken:
                first = seen.get(name) or _column_text(*taken[name])
                here = _column_text(plan, column)
                raise MergeError(f"output column {name!r} comes from both {first} and {here}")
            taken[name] = (plan, column)


def _column_text(plan: _Plan, column: str) -> str:
    return f"{plan.source.table}.{column} ({plan.parts[0]})"


def _inspect(
    plan: _Plan, spine: SpineIndex, newest_from: int, files: Sequence[pq.ParquetFile]
) -> None:
    """Read the key column only: convert it, reject duplicates, note each row group's range and
    which spine keys the table covers (`files`: the parts opened by `_plan_one`; a stored one
    is opened again over its key column's byte ranges, fetched in one request)."""
    columns: list[pa.Array] = []
    sizes: list[int] = []
    plan.group_at = []
    for index, (path, metadata) in enumerate(zip(plan.parts, plan.metadata, strict=True)):
        pf = files[index]
        if isinstance(path, StoredFile) and metadata is not None:
            every = range(metadata.num_row_groups)
            blocks = _fetch(path, _chunk_ranges(metadata, every, [KEY]), plan.where)
            pf = _open(path, plan.where, metadata=metadata, blocks=blocks)
        try:
            # One read of the part's key column, one conversion for the table (not one of
            # each per row group: ~17,000 chunk files per pair).
            columns.extend(pf.read(columns=[KEY], use_threads=False).column(0).chunks)
            for i in range(pf.metadata.num_row_groups):
                sizes.append(pf.metadata.row_group(i).num_rows)
                plan.group_at.append((index, i))
        except StorageError as exc:
            raise MergeError(f"{plan.where}: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise MergeError(f"{plan.where}: not a readable parquet file: {exc}") from exc
    try:
        column = pa.chunked_array(columns) if columns else pa.chunked_array([], KEY_TYPE)
    except pa.ArrowException as exc:
        raise MergeError(f"{plan.where}: key columns of its chunks differ: {exc}") from exc
    file_keys = keys_us(column, plan.where, MergeError)
    if sum(sizes) != len(file_keys):
        raise MergeError(
            f"{plan.where}: key column has {len(file_keys)} rows, footers say {sum(sizes)}"
        )
    ends = np.cumsum(sizes)
    plan.groups = [
        (int(file_keys[e - n : e].min()), int(file_keys[e - n : e].max())) if n else (1, 0)
        for n, e in zip(sizes, ends, strict=True)
    ]
    # Across chunks too: a key in two chunks of one table is an error naming the table.
    check_unique(file_keys, plan.where, MergeError)
    plan.coverage = table_coverage_of(
        plan.source.table,
        plan.first_column,
        plan.source_rows,
        file_keys,
        spine,
        newest_from,
        plan.source_nulls,
    )
    plan.newest_nulls = np.zeros(len(plan.columns), dtype=np.int64)


_NEWEST_LOCK = threading.Lock()  # two pieces of one slice meet when the newest day spans groups


def _count_newest(
    plan: _Plan,
    keys: np.ndarray,
    s: slice,
    columns: Sequence[pa.Array | pa.ChunkedArray],
    newest_from: int,
) -> None:
    """Add the nulls that a piece writes into the newest day's rows to the table's record."""
    if plan.newest_nulls is None or not len(keys) or int(keys[-1]) < newest_from:
        return
    start = int(np.searchsorted(keys, newest_from))
    counts = [c.slice(start).null_count for c in columns]
    with _NEWEST_LOCK:
        plan.newest_nulls[s] += counts


# -- pieces ----------------------------------------------------------------------------------
def encode_piece(columns: Sequence[pa.Array | pa.ChunkedArray], names: Sequence[str]) -> pa.Buffer:
    """One piece as a complete parquet file in memory (one row group) with the output settings."""
    table = pa.table(list(columns), names=list(names))
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    dictionary = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(
        sink,
        table.schema,
        compression=OUTPUT_COMPRESSION,
        compression_level=OUTPUT_COMPRESSION_LEVEL,
        use_dictionary=dictionary or False,
        use_byte_stream_split=floats or False,
        write_page_index=False,  # a page index holds absolute offsets: a copied row group moves
        write_statistics=True,
        store_schema=False,
    ) as writer:
        writer.write_table(table, row_group_size=max(1, table.num_rows))
    return sink.getvalue()


def piece_slices(count: int, rows: int) -> Iterator[slice]:
    width = max(1, PIECE_BYTES // max(1, rows * 8))
    for start in range(0, count, width):
        yield slice(start, min(start + width, count))


def _spine_piece(keys: np.ndarray, spine_table: pa.Table, a: int, b: int, s: slice) -> pa.Buffer:
    part = spine_table.slice(a, b - a)
    columns = [key_array(keys[a:b]), *part.columns][s]
    return encode_piece(columns, [KEY, *part.column_names][s])


def _align(file_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each spine key, its row in `file_keys` and whether it is there at all."""
    if len(file_keys) > 1 and not bool(np.all(file_keys[1:] > file_keys[:-1])):
        order = np.argsort(file_keys, kind="stable")
        ordered = file_keys[order]
    else:
        order, ordered = None, file_keys
    pos = np.minimum(np.searchsorted(ordered, keys), len(ordered) - 1)
    found = ordered[pos] == keys
    return (order[pos] if order is not None else pos), found


def _indices(pos: np.ndarray, found: np.ndarray) -> pa.Array:
    """`pos` as take indices, null where not `found` (from the buffers: `pa.array` of a NumPy
    array imports pandas)."""
    data = np.ascontiguousarray(pos, dtype=np.int64)
    valid = pa.py_buffer(np.packbits(found, bitorder="little"))
    nulls = len(found) - int(np.count_nonzero(found))
    return pa.Array.from_buffers(pa.int64(), len(data), [valid, pa.py_buffer(data)], nulls)


def _wanted(plan: _Plan, keys: np.ndarray) -> list[int]:
    """The checkpoint's row groups whose key range overlaps `keys` (sorted)."""
    lo, hi = int(keys.min()), int(keys.max())
    return [i for i, (a, b) in enumerate(plan.groups) if a <= hi and b >= lo]


def _by_part(plan: _Plan, wanted: Sequence[int]) -> dict[int, list[int]]:
    """Wanted row groups (indexes into `plan.groups`) as row groups of each part, in order."""
    out: dict[int, list[int]] = {}
    for i in wanted:
        part, group = plan.group_at[i]
        out.setdefault(part, []).append(group)
    return out


def _piece_ranges(
    plan: _Plan, keys: np.ndarray, s: slice
) -> tuple[tuple[int, StoredFile, tuple[tuple[int, int], ...]], ...]:
    """(part, stored object, byte ranges) one piece reads from each stored part (none for
    local files)."""
    if not plan.stored:
        return ()
    out = []
    for part, groups in _by_part(plan, _wanted(plan, keys)).items():
        metadata, path = plan.metadata[part], plan.parts[part]
        if metadata is not None and isinstance(path, StoredFile):
            ranges = _chunk_ranges(metadata, groups, [KEY, *plan.columns[s]])
            out.append((part, path, tuple(ranges)))
    return tuple(out)


def _feature_piece(
    plan: _Plan, keys: np.ndarray, s: slice, newest_from: int, blocks: _PartBlocks | None = None
) -> pa.Buffer:
    """Columns `s` of one table for the spine rows whose keys are `keys` (`blocks`: the piece's
    byte ranges of stored checkpoints, fetched ahead, by part).

    The alignment is recomputed for each piece of a wide table from its key column (~1 MB):
    cheaper than holding a table's decoded columns, and it keeps one piece the unit of memory."""
    rows = len(keys)
    names, types = plan.names[s], plan.types[s]
    wanted = _wanted(plan, keys)
    if not wanted:
        empty = [pa.nulls(rows, t) for t in types]
        _count_newest(plan, keys, s, empty, newest_from)
        return encode_piece(empty, names)
    try:
        reads = []
        for part, groups in _by_part(plan, wanted).items():
            path, metadata = plan.parts[part], plan.metadata[part]
            if metadata is None:
                pf = _open(path, plan.where)
            else:
                got = (blocks or {}).get(part)
                pf = _open(path, plan.where, metadata=metadata, blocks=got)
            reads.append(
                pf.read_row_groups(groups, columns=[KEY, *plan.columns[s]], use_threads=False)
            )
        read = reads[0] if len(reads) == 1 else pa.concat_tables(reads)
        pos, found = _align(keys_us(read.column(0), plan.where, MergeError), keys)
        read = read.drop_columns([KEY])
        if found.all() and pos[-1] - pos[0] == rows - 1 and bool(np.all(np.diff(pos) == 1)):
            aligned = read.slice(int(pos[0]), rows)  # same keys in the same order: no copy
        else:
            aligned = read.take(_indices(pos, found))
        columns = [
            c if c.type == t else pc.cast(c, t) for c, t in zip(aligned.columns, types, strict=True)
        ]
        _count_newest(plan, keys, s, columns, newest_from)
        return encode_piece(columns, names)
    except StorageError as exc:
        raise MergeError(f"{plan.where}: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{plan.where}: not a readable parquet file: {exc}") from exc


# -- output ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    """One piece to write: which output row group, how to make it, and for a stored checkpoint
    the byte ranges to fetch first."""

    group: int
    make: Callable[[_PartBlocks | None], pa.Buffer]
    reads: tuple[tuple[int, StoredFile, tuple[tuple[int, int], ...]], ...] = ()
    """(part, stored object, byte ranges) to fetch before the piece is made."""
    where: str = ""

    @property
    def stored(self) -> bool:
        return bool(self.reads)

    @property
    def nbytes(self) -> int:
        return sum(stop - start for _, _, ranges in self.reads for start, stop in ranges)


def _write(
    out: BinaryIO | StagedUpload,
    keys: np.ndarray,
    spine_table: pa.Table,
    plans: Sequence[_Plan],
    groups: Sequence[tuple[int, int]],
    say: Callable[[str], None],
    newest_from: int,
    layout: _Layout,
    reuse: _Reuse | None = None,
    copier: _Ahead | None = None,
) -> Coverage:
    """Write the row groups in order, each copied from `reuse` (moved to where it now falls) or
    built from pieces, then the footer with the coverage record and the row groups' record;
    returns the coverage record. The leading copied row groups that `copier` copies are only
    recorded here, the writing starting after them."""
    footer = FooterAssembler()
    f = _Checksummed(out)
    # A streaming upload's segments: the magic, then each row group (`_Checksummed.cut`).
    if not f.refer(len(MAGIC), _crc32c(MAGIC)):
        f.write(MAGIC)
        f.mark()
        f.cut()
    written: list[dict[str, Any]] = []  # the row groups' record, without their footer spans
    copied = reuse.groups if reuse is not None else {}
    if reuse is not None:
        say(f"copying {reuse.count} unchanged row groups ({reuse.bytes:,} B) from {reuse.source}")

    def adopt(index: int, start: int) -> None:
        adopted = copied[index]
        g = adopted.record
        footer.adopt(adopted.raw, start - int(g["start"]), index, adopted.was)
        written.append(  # the same keys in the same order as a built row group's
            {
                "rows": g["rows"],
                "start": start,
                "end": start + int(g["end"]) - int(g["start"]),
                "crc32c": g["crc32c"],
                "signature": g["signature"],
            }
        )

    if copier is not None and copier.count:
        for index, start in enumerate(copier.starts):
            adopt(index, start)
        f.skip_to(copier.end)

    def copy_until(r: int) -> None:
        """Copy the reused row groups before row group `r` that are not written yet."""
        while len(written) < r:
            index = len(written)
            assert reuse is not None and index in copied  # the others are built, in order
            start = f.tell()
            _copy(reuse, index, f)
            f.cut()
            adopt(index, start)

    tasks: list[_Task] = []
    for r, (a, b) in enumerate(groups):
        if r in copied:
            continue
        for s in piece_slices(1 + spine_table.num_columns, b - a):
            tasks.append(
                _Task(r, lambda _, a=a, b=b, s=s: _spine_piece(keys, spine_table, a, b, s))
            )
        for plan in plans:
            for s in piece_slices(len(plan.columns), b - a):
                tasks.append(
                    _Task(
                        r,
                        lambda blocks, p=plan, a=a, b=b, s=s: _feature_piece(
                            p, keys[a:b], s, newest_from, blocks
                        ),
                        _piece_ranges(plan, keys[a:b], s),
                        plan.where,
                    )
                )
    every = max(1, len(tasks) // 10)
    stop = threading.Event()
    stored = any(t.stored for t in tasks)

    def fetch(task: _Task) -> _PartBlocks | None:
        if stop.is_set() or not task.stored:
            return None
        return {part: _fetch(path, ranges, task.where) for part, path, ranges in task.reads}

    def run(task: _Task, fetched: Future[_PartBlocks | None] | None) -> Piece | None:
        if stop.is_set():  # an earlier piece failed: don't start more
            return None
        blocks = fetched.result() if fetched is not None else None
        return Piece.parse(task.make(blocks))  # parsed here, off the writing thread

    def close_group(r: int, start: int) -> None:
        written.append(
            {
                "rows": groups[r][1] - groups[r][0],
                "start": start,
                "end": f.tell(),
                "crc32c": f.mark(),
                "signature": layout.signatures[r],
            }
        )
        f.cut()

    io_pool = ThreadPoolExecutor(IO_THREADS) if stored else nullcontext()
    with ThreadPoolExecutor(WORKERS) as pool, io_pool as io:
        building, start = -1, f.tell()
        pending: deque[tuple[_Task, Future[Piece | None]]] = deque()
        fetches: dict[int, Future[_PartBlocks | None]] = {}
        ahead = 0  # next task to prefetch
        fetching = 0  # compressed bytes fetched or being fetched for tasks not yet written
        submitted = 0
        try:
            for done in range(len(tasks)):
                while len(pending) < _IN_FLIGHT and submitted < len(tasks):
                    # Prefetch ranges ahead of the workers within the byte budget (always at
                    # least the next task's own).
                    while (
                        ahead < len(tasks)
                        and io is not None
                        and (ahead <= submitted or fetching + tasks[ahead].nbytes <= PREFETCH_BYTES)
                    ):
                        if tasks[ahead].stored:
                            fetches[ahead] = io.submit(fetch, tasks[ahead])
                            fetching += tasks[ahead].nbytes
                        ahead += 1
                    task = tasks[submitted]
                    pending.append((task, pool.submit(run, task, fetches.pop(submitted, None))))
                    submitted += 1
                task, future = pending.popleft()
                piece = future.result()
                if task.stored:
                    fetching -= task.nbytes
                if piece is not None:
                    if task.group != building:  # tasks come in row-group order
                        if building >= 0:
                            close_group(building, start)
                        copy_until(task.group)
                        building, start = task.group, f.tell()
                    footer.add(f, piece, task.group, groups[task.group][1] - groups[task.group][0])
                if (done + 1) % every == 0:
                    say(f"merged {done + 1}/{len(tasks)} pieces; {f.tell():,} bytes written")
        except BaseException:
            stop.set()
            for _, future in pending:
                future.cancel()
            for waiting in fetches.values():
                waiting.cancel()
            raise
        coverage = Coverage(
            spine_rows=len(keys),
            first_key=int(keys[0]),
            last_key=int(keys[-1]),
            newest_from=newest_from,
            newest_rows=len(keys) - int(np.searchsorted(keys, newest_from)),
            tables=tuple(
                replace(p.coverage, newest_nulls=tuple(int(v) for v in p.newest_nulls))
                for p in plans
                if p.coverage is not None and p.newest_nulls is not None
            ),
        )
        if building >= 0:
            close_group(building, start)
        copy_until(len(groups))
        if copier is not None:
            copier.wait()

        def record(spans: list[tuple[int, int]], encoded: bytes) -> dict[str, str]:
            body = [
                {**g, "footer": [a, b], "footer_crc32c": _crc32c(encoded[a:b])}
                for g, (a, b) in zip(written, spans, strict=True)
            ]
            return {
                ROW_GROUPS_KEY: json.dumps(
                    {"format": LAYOUT_FORMAT, "plan": layout.plan, "groups": body},
                    separators=(",", ":"),
                )
            }

        f.write(
            footer.encode(sum(b - a for a, b in groups), {COVERAGE_KEY: coverage.encode()}, record)
        )
        # No fsync of a local file: it is verified by reading it back, and it reaches its final
        # storage through Storage.put_file, which syncs and checksums what it publishes; syncing
        # 17 GB here as well would only wait for the disk.
    return coverage


def _verify(tmp: Input, keys: np.ndarray, names: Sequence[str], groups: int) -> None:
    """Read the written file's footer and key column back before publishing it (a stored
    object by ranged reads: the footer, then the key column's chunks)."""
    where = f"merged file {tmp}"
    try:
        pf = pq.ParquetFile(tmp.open() if isinstance(tmp, StoredFile) else tmp, pre_buffer=True)
        meta = pf.metadata
        if meta.num_rows != len(keys) or meta.num_row_groups != groups:
            raise MergeError(
                f"{where}: footer says {meta.num_rows} rows in {meta.num_row_groups} row groups, "
                f"expected {len(keys)} in {groups}"
            )
        written = pf.schema_arrow.names
        if written != list(names):
            raise MergeError(f"{where}: columns differ from the plan ({len(written)} written)")
        back = keys_us(pf.read(columns=[KEY]).column(0), where, MergeError)
    except StorageError as exc:
        raise MergeError(f"{where}: cannot be read back: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{where}: cannot be read back: {exc}") from exc
    if not np.array_equal(back, keys):
        raise MergeError(f"{where}: key column read back differs from the spine")
