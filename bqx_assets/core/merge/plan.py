"""Each table planned for the merge: its chunks checked against the catalog, its keys located."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import feature_name
from bqx_assets.core.checkpoints.facts import ChunkFacts
from bqx_assets.core.errors import MergeError, StorageError
from bqx_assets.core.keys import check_unique, keys_us
from bqx_assets.core.layout import ARROW_TYPES, KEY, canonical_type
from bqx_assets.core.merge.coverage import SpineIndex, TableCoverage, table_coverage_of
from bqx_assets.core.merge.files import column_ranges, fetch, open_parquet
from bqx_assets.core.merge.inputs import InputTable
from bqx_assets.core.storage import StoredFile

WORKERS = 2
"""Threads that decode, align and encode pieces (pyarrow releases the GIL), and that plan
tables from local files."""
IO_THREADS = 8
"""Ranged reads of remote chunks in flight at once (under the client's HTTP pool of 10)."""
KEPT_FOOTERS = 6_000
"""Local chunks whose footers one merge keeps between checking them and reading their pieces
(~36 KB each as measured: ~0.2 GiB); a merge that opens more reads each footer twice."""


@dataclass
class TablePlan:
    """One table as the merge writes it: the columns it contributes and where its rows are."""

    table: InputTable
    columns: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    types: list[pa.DataType] = field(default_factory=list)
    groups: list[tuple[int, int]] = field(default_factory=list)
    """(min, max) key in microseconds of each chunk row group, from the keys themselves; the
    row groups of all the table's chunks in order."""
    group_at: list[tuple[int, int]] = field(default_factory=list)
    """(chunk, row group in that chunk) of each entry of `groups`."""
    first_column: int = 0
    source_rows: int = 0
    source_nulls: list[int] = field(default_factory=list)
    """Nulls per column in all of the table's chunks (-1: unknown)."""
    coverage: TableCoverage | None = None
    newest_nulls: np.ndarray | None = None
    """Nulls per column written into the newest day's rows, added up piece by piece."""
    reference_nulls: np.ndarray | None = None
    """Nulls per column in the rows of the newest day's reference minutes, added up likewise
    (`coverage.CountedRows`)."""
    metadata: list[pq.FileMetaData | None] = field(default_factory=list)
    """Each chunk's footer where it is kept for the pieces' reads (None: read it again)."""
    unopened: set[int] = field(default_factory=set)
    """Chunks planned from their recorded facts and not opened yet (`open_needed`)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def files(self) -> tuple[StoredFile, ...]:
        return tuple(c.file for c in self.table.chunks)

    @property
    def remote(self) -> bool:
        return any(c.file.remote for c in self.table.chunks)

    @cached_property
    def where(self) -> str:
        return self.table.where()

    def count_nulls(
        self, s: slice, newest: Sequence[int] | None, reference: Sequence[int] | None
    ) -> None:
        """Add the nulls of columns `s` in a piece's newest-day rows and reference rows."""
        with self._lock:  # two pieces of one slice meet when the counted rows span row groups
            assert self.newest_nulls is not None and self.reference_nulls is not None
            if newest is not None:
                self.newest_nulls[s] += newest
            if reference is not None:
                self.reference_nulls[s] += reference


def plan_tables(
    tables: Sequence[InputTable], spine: SpineIndex, newest_from: int
) -> list[TablePlan]:
    """Each table's plan, its chunks checked (columns, types, keys): from their recorded facts,
    or by opening them where they have none. Tables are planned WORKERS at a time (IO_THREADS
    at a time where a chunk is remote: a few small requests each, latency-bound); the first
    table that fails, in order, raises."""
    remote = any(c.file.remote for t in tables for c in t.chunks)
    with ThreadPoolExecutor(IO_THREADS if remote else WORKERS) as pool:
        return list(pool.map(lambda t: _plan(t, spine, newest_from), tables))


def _plan(table: InputTable, spine: SpineIndex, newest_from: int) -> TablePlan:
    plan = TablePlan(table)
    if not table.chunks:
        raise MergeError(f"{plan.where}: has no chunks")
    declared = table.dtypes is not None and table.columns is not None
    facts: list[ChunkFacts] = []
    schema: pa.Schema | None = None  # the first opened chunk's, for undeclared types
    every: list[np.ndarray] = []
    for index, chunk in enumerate(table.chunks):
        found = chunk.facts if declared else None
        keys = _unpacked(found)
        meta = None
        if found is None or keys is None:
            found, meta, opened = _read_facts(chunk.file, plan.where)
            keys = found.keys()
            schema = schema or opened
        else:
            plan.unopened.add(index)
        facts.append(found)
        every.append(keys)
        # A remote chunk's footer is kept for the pieces' ranged reads.
        plan.metadata.append(meta if chunk.file.remote else None)
    _plan_columns(plan, facts, schema)
    plan.source_rows = sum(sum(f.rows) for f in facts)
    if plan.source_rows == 0:
        raise MergeError(f"{plan.where}: has no rows")
    found_columns = [f.columns() for f in facts]
    plan.source_nulls = [
        -1 if any(f[c][1] < 0 for f in found_columns) else sum(f[c][1] for f in found_columns)
        for c in plan.columns
    ]
    for index, (f, keys) in enumerate(zip(facts, every, strict=True)):
        stop = 0
        for g, n in enumerate(f.rows):
            rows = keys[stop : stop + n]
            plan.groups.append((int(rows.min()), int(rows.max())) if n else (1, 0))
            plan.group_at.append((index, g))
            stop += n
    file_keys = np.concatenate(every)
    # Across chunks too: a key in two chunks of one table is an error naming the table.
    check_unique(file_keys, plan.where, MergeError)
    plan.coverage = table_coverage_of(
        table.name, plan.first_column, plan.source_rows, file_keys, spine, newest_from,
        plan.source_nulls,
    )  # fmt: skip
    plan.newest_nulls = np.zeros(len(plan.columns), dtype=np.int64)
    plan.reference_nulls = np.zeros(len(plan.columns), dtype=np.int64)
    return plan


def _unpacked(facts: ChunkFacts | None) -> np.ndarray | None:
    """The keys a chunk's facts record; None when they cannot be unpacked (it is opened)."""
    if facts is None:
        return None
    try:
        return facts.keys()
    except ValueError:
        return None


def _read_facts(file: StoredFile, where: str) -> tuple[ChunkFacts, pq.FileMetaData, pa.Schema]:
    """A chunk's facts read from the chunk itself: its footer (row groups, types, null counts
    from the statistics) and its key column (a remote chunk's in one request)."""
    pf = open_parquet(file, where)
    meta = pf.metadata
    try:
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{where}: unreadable schema: {exc}") from exc
    if KEY not in schema.names:
        raise MergeError(f"{where}: has no {KEY} column")
    if file.remote:
        ranges = column_ranges(meta, range(meta.num_row_groups), [KEY])
        pf = open_parquet(file, where, metadata=meta, blocks=fetch(file, ranges, where))
    try:
        # One read of the chunk's key column, not one per row group.
        column = pf.read(columns=[KEY], use_threads=False).column(0)
    except StorageError as exc:
        raise MergeError(f"{where}: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{where}: not a readable parquet file: {exc}") from exc
    keys = keys_us(column, where, MergeError)
    if len(keys) != meta.num_rows:
        raise MergeError(f"{where}: key column has {len(keys)} rows, footers say {meta.num_rows}")
    leaf = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    names = [n for n in schema.names if n != KEY]
    facts = ChunkFacts(
        tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups)),
        tuple(names),
        tuple(str(canonical_type(schema.field(n).type)) for n in names),
        tuple(_footer_nulls(meta, [leaf[n] for n in names])),
        "",
        unpacked=keys,
    )
    return facts, meta, schema


def _footer_nulls(meta: pq.FileMetaData, leaves: Sequence[int]) -> list[int]:
    """Null cells of each column (by its leaf index), summed from the footer's row-group
    statistics (no data read); -1 for a column whose footer has no null count."""
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


def _plan_columns(plan: TablePlan, facts: Sequence[ChunkFacts], schema: pa.Schema | None) -> None:
    """The columns the table contributes and their types, every chunk checked: against the
    declared types, or, undeclared, against the first chunk's."""
    table = plan.table
    if table.dtypes is not None:
        unknown = sorted(d for d in table.dtypes.values() if d not in ARROW_TYPES)
        if unknown:
            raise MergeError(f"{plan.where}: unsupported expected types {unknown}")
        for file, f in zip(plan.files, facts, strict=True):
            wrong = type_errors(table.dtypes, f.columns())
            if wrong:
                raise MergeError(
                    f"{plan.where}: chunk {file} has other columns or types than the catalog "
                    f"declares: {'; '.join(wrong)}"
                )
    else:
        first = facts[0]
        for file, f in zip(plan.files[1:], facts[1:], strict=True):
            if (f.names, f.types) != (first.names, first.types):
                raise MergeError(
                    f"{plan.where}: chunk {file} has other columns or types than {plan.files[0]}"
                )
    present = facts[0].columns()
    if table.columns is None:
        pairs = [(c, feature_name(table.name, c)) for c in facts[0].names]
    else:
        pairs = list(table.columns)
    missing = [c for c, _ in pairs if c not in present]
    if missing:
        raise MergeError(f"{plan.where}: missing columns {missing}")
    for column, name in pairs:
        plan.columns.append(column)
        plan.names.append(name)
        if table.dtypes is None:
            assert schema is not None  # undeclared tables are opened
            plan.types.append(canonical_type(schema.field(column).type))
        elif column in table.dtypes:
            plan.types.append(ARROW_TYPES[table.dtypes[column]])
        else:
            raise MergeError(f"{plan.where}: column {column} has no declared type")


def type_errors(declared: Mapping[str, str], found: Mapping[str, tuple[str, int]]) -> list[str]:
    """The declared columns (those written and those only checked, such as leak columns) whose
    type in a chunk (`found`: its canonical type as text, by column) is not the one declared."""
    wrong = []
    for column, dtype in declared.items():
        got = found.get(column)
        if got is None:
            wrong.append(f"{column} is missing")
        elif got[0] != str(ARROW_TYPES[dtype]):
            wrong.append(f"{column} is {got[0]}, expected {dtype}")
    return wrong


def open_needed(
    plans: Sequence[TablePlan], keys: np.ndarray, encoded: Sequence[tuple[int, int]]
) -> None:
    """Open the chunks planned from facts that the `encoded` row groups (spine rows) read, and
    check each against its facts: the declared columns and types, the key, and its row
    groups' rows. A remote chunk's footer is kept for the pieces' ranged reads."""
    needed: list[tuple[TablePlan, list[int]]] = []
    for plan in plans:
        if not plan.unopened:
            continue
        wanted = {i for a, b in encoded for i in wanted_groups(plan, keys[a:b])}
        chunks = sorted({plan.group_at[i][0] for i in wanted} & plan.unopened)
        if chunks:
            needed.append((plan, chunks))
    remote = any(plan.files[c].remote for plan, chunks in needed for c in chunks)
    keep = sum(len(chunks) for _, chunks in needed) <= KEPT_FOOTERS

    def check_types(plan: TablePlan, file: StoredFile, meta: pq.FileMetaData) -> None:
        try:
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            raise MergeError(f"{plan.where}: chunk {file}: unreadable schema: {exc}") from exc
        found = {
            n: (str(canonical_type(t)), 0) for n, t in zip(schema.names, schema.types, strict=True)
        }
        wrong = type_errors(plan.table.dtypes or {}, found)
        if KEY not in found:
            wrong.append(f"{KEY} is missing")
        if wrong:
            raise MergeError(
                f"{plan.where}: chunk {file} has other columns or types than the catalog "
                f"declares: {'; '.join(wrong)}"
            )

    def check(item: tuple[TablePlan, list[int]]) -> None:
        # One table's chunks: the first one's schema checked as Arrow types, the others compared
        # with it as parquet schemas (converting every chunk's schema to Arrow in threads grew
        # a merge by ~0.7 GiB at production length).
        plan, chunks = item
        first: pq.ParquetSchema | None = None
        for index in chunks:
            chunk = plan.table.chunks[index]
            assert chunk.facts is not None
            meta = open_parquet(chunk.file, plan.where).metadata
            if first is None or not meta.schema.equals(first):
                check_types(plan, chunk.file, meta)
                first = first or meta.schema
            rows = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            if rows != chunk.facts.rows:
                raise MergeError(
                    f"{plan.where}: chunk {chunk.file} has row groups of {list(rows)} rows, its "
                    f"record says {list(chunk.facts.rows)}: changed since it was checked; re-run "
                    "its checkpoint"
                )
            # A remote chunk's footer is kept for the pieces' ranged reads; a local chunk's
            # when few chunks are opened (a refresh's newest week), so that its pieces do not
            # read and parse it again. A merge from scratch opens every chunk: keeping 14,000
            # footers grew one by ~0.5 GiB.
            if keep or chunk.file.remote:
                plan.metadata[index] = meta

    with ThreadPoolExecutor(IO_THREADS if remote else WORKERS) as pool:
        list(pool.map(check, needed))
    for plan, chunks in needed:
        plan.unopened.difference_update(chunks)


def check_names(spine: InputTable, plans: Sequence[TablePlan]) -> None:
    """Every output column comes from one place: a name from two is an error naming both."""
    seen: dict[str, str] = {KEY: f"{spine.name}.{KEY}"}
    for column, _ in spine.columns or ():
        if column in seen:
            raise MergeError(
                f"output column {column!r} comes from both {seen[column]} and {spine.name}"
            )
        seen[column] = f"{spine.name}.{column}"
    taken: dict[str, tuple[TablePlan, str]] = {}  # the message is only made for a collision
    for plan in plans:
        for column, name in zip(plan.columns, plan.names, strict=True):
            if name in seen or name in taken:
                first = seen.get(name) or _column_text(*taken[name])
                here = _column_text(plan, column)
                raise MergeError(f"output column {name!r} comes from both {first} and {here}")
            taken[name] = (plan, column)


def _column_text(plan: TablePlan, column: str) -> str:
    return f"{plan.table.name}.{column} ({plan.files[0]})"


def wanted_groups(plan: TablePlan, keys: np.ndarray) -> list[int]:
    """The table's chunk row groups whose key range overlaps `keys` (sorted)."""
    lo, hi = int(keys.min()), int(keys.max())
    return [i for i, (a, b) in enumerate(plan.groups) if a <= hi and b >= lo]


def by_chunk(plan: TablePlan, wanted: Sequence[int]) -> dict[int, list[int]]:
    """Wanted row groups (indexes into `plan.groups`) as row groups of each chunk, in order."""
    out: dict[int, list[int]] = {}
    for i in wanted:
        chunk, group = plan.group_at[i]
        out.setdefault(chunk, []).append(group)
    return out


Reads = tuple[tuple[int, StoredFile, tuple[tuple[int, int], ...]], ...]
"""(chunk, file, byte ranges) a piece reads from each remote chunk, fetched before it is made."""


def piece_reads(plan: TablePlan, keys: np.ndarray, s: slice) -> Reads:
    """What one piece (columns `s`, spine rows with `keys`) reads from each remote chunk."""
    if not plan.remote:
        return ()
    out = []
    for index, groups in by_chunk(plan, wanted_groups(plan, keys)).items():
        metadata, file = plan.metadata[index], plan.files[index]
        if metadata is not None and file.remote:
            ranges = column_ranges(metadata, groups, [KEY, *plan.columns[s]])
            out.append((index, file, tuple(ranges)))
    return tuple(out)
