"""A training file's profile: per column nulls and range, per family and table, from its footer."""

# Why: docs/design/gate.md.

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.errors import ValidationError
from bqx_assets.core.merge.coverage import COVERAGE_KEY, Coverage, CoverageVersionError
from bqx_assets.core.storage import Storage

PROFILE_KEY = "bqx:profile"
"""Key of the profile's summary (pair, rows, families, tables) in its parquet metadata."""

UNEXPECTED_FAMILY = "unexpected"
"""Family of a feature column the catalog does not know (reported by column_count too)."""

_SCHEMA = pa.schema(
    [
        pa.field("column", pa.string()),
        pa.field("family", pa.string()),
        pa.field("table", pa.string()),
        pa.field("dtype", pa.string()),
        pa.field("nulls", pa.int64()),
        pa.field("null_share", pa.float64()),
        pa.field("merge_nulls", pa.int64()),
        pa.field("source_nulls", pa.int64()),
        pa.field("newest_nulls", pa.int64()),
        pa.field("min", pa.float64()),
        pa.field("max", pa.float64()),
    ]
)
"""One row per feature column. merge_nulls: spine rows its table has no row for; source_nulls:
the rest of its nulls (values null in the source); newest_nulls: nulls in the newest day (-1
without a coverage record); min/max: footer statistics of numeric columns, null otherwise."""


def profile_key(pair: str) -> str:
    """Storage key of a published file's profile, beside `training_{pair}.parquet`."""
    return f"training_{pair}.profile.parquet"


HISTORY_KEEP = 30
"""Profiles of published files kept per pair, newest first: the series the gate shows drift in."""
_STAMP = "%Y%m%dT%H%M%S%fZ"


def history_prefix(pair: str) -> str:
    """Folder of the pair's published profiles, one per publication, named by its time."""
    return f"profiles/training_{pair}"


def history_key(pair: str, published_at: datetime) -> str:
    return f"{history_prefix(pair)}/{published_at.astimezone(UTC).strftime(_STAMP)}.profile.parquet"


@dataclass(frozen=True)
class FamilyProfile:
    """Null shares of one feature family (cells of the family in the file as denominator)."""

    family: str
    columns: int
    null_share: float
    merge_null_share: float
    """Cells null because the table had no row for the spine key (the merge made them)."""
    source_null_share: float
    """Cells null in the table's own rows (the source had them)."""
    all_null_columns: int
    newest_null_share: float | None = None
    """Null share of the newest day's rows (None without a coverage record)."""
    newest_source_null_share: float | None = None
    """Share of null values among the newest day's rows that the tables have."""
    whole_source_null_share: float | None = None
    """Share of null values among all the rows the tables have."""
    reference_source_null_share: float | None = None
    """Share of null values among the rows the tables have at the newest day's reference minutes
    (the same minutes of the latest earlier day that has them): what the newest day is judged
    against. None without a record of them (a profile of an older gate)."""
    reference_cells: int | None = None
    """Cells (rows the tables have x their columns) behind `reference_source_null_share`; 0: no
    earlier day has the newest day's minutes, or no table of the family a row at them."""
    newest_cells: int | None = None
    """Cells behind `newest_source_null_share`."""

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FamilyProfile:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Profile:
    """A training file's profile: the per-column frame and its per-family summary."""

    pair: str
    rows: int
    created: str
    columns: pa.Table
    families: tuple[FamilyProfile, ...]
    coverage: Coverage | None = None

    def family(self, name: str) -> FamilyProfile | None:
        return next((f for f in self.families if f.family == name), None)

    def to_bytes(self) -> bytes:
        summary = {
            "pair": self.pair,
            "rows": self.rows,
            "created": self.created,
            "families": [f.to_json() for f in self.families],
        }
        metadata = {PROFILE_KEY: json.dumps(summary, separators=(",", ":"))}
        if self.coverage is not None:
            metadata[COVERAGE_KEY] = self.coverage.encode()
        table = self.columns.replace_schema_metadata(metadata)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Profile:
        try:
            table = pq.read_table(io.BytesIO(data))
            metadata = table.schema.metadata or {}
            summary = json.loads(metadata[PROFILE_KEY.encode()])
            try:
                coverage = Coverage.from_metadata(metadata)
            except CoverageVersionError:
                # A record of another merge version: drift, all a history profile is read for,
                # does not use it.
                coverage = None
            return cls(
                pair=str(summary["pair"]),
                rows=int(summary["rows"]),
                created=str(summary["created"]),
                columns=table.replace_schema_metadata(None).cast(_SCHEMA),
                families=tuple(FamilyProfile.from_json(f) for f in summary["families"]),
                coverage=coverage,
            )
        except (OSError, pa.ArrowException, KeyError, ValueError, TypeError) as exc:
            raise ValidationError(f"{where}: not a training-file profile: {exc}") from exc

    def family_markdown(self) -> str:
        """Per-family null shares as a markdown table: all, made by the merge, in the source,
        and in the newest day."""
        lines = [
            "| family | columns | null share | merge-made | in source | newest day | all-null |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for f in self.families:
            newest = "-" if f.newest_null_share is None else f"{f.newest_null_share:.2%}"
            lines.append(
                f"| {f.family} | {f.columns:,} | {f.null_share:.2%} | {f.merge_null_share:.2%} "
                f"| {f.source_null_share:.2%} | {newest} | {f.all_null_columns} |"
            )
        return "\n".join(lines)


def build_profile(
    pair: str,
    rows: int,
    names: Sequence[str],
    types: Sequence[pa.DataType],
    nulls: np.ndarray,
    mins: np.ndarray,
    maxs: np.ndarray,
    features: Sequence[int],
    family_of: Mapping[str, str],
    family_order: Sequence[str],
    coverage: Coverage | None,
) -> Profile:
    """The profile of the feature columns `features` (indexes into `names`) of a file of `rows`
    rows, from footer null counts and min/max (NaN where absent) and the merge's coverage."""
    idx = np.asarray(features, dtype=np.int64)
    n = len(idx)
    table_of = coverage.table_of_column() if coverage else {}
    merge = np.zeros(n, dtype=np.int64)
    newest = np.full(n, -1, dtype=np.int64)
    newest_merge = np.zeros(n, dtype=np.int64)
    newest_rows_had = np.zeros(n, dtype=np.int64)  # newest-day rows the column's table has
    reference = np.zeros(n, dtype=np.int64)  # nulls in the newest day's reference minutes
    reference_merge = np.zeros(n, dtype=np.int64)
    reference_rows_had = np.zeros(n, dtype=np.int64)
    rows_had = np.full(n, rows, dtype=np.int64)  # rows the column's table has
    tables: list[str] = []
    for i, j in enumerate(idx):
        t = table_of.get(int(j))
        if t is None:
            tables.append("")
            continue
        tables.append(t.table)
        merge[i] = rows - t.matched
        rows_had[i] = t.matched
        newest[i] = t.newest_nulls[int(j) - t.first_column]
        newest_merge[i] = coverage.newest_rows - t.newest_matched if coverage else 0
        newest_rows_had[i] = t.newest_matched
        reference[i] = t.reference_nulls[int(j) - t.first_column]
        reference_merge[i] = coverage.reference_rows - t.reference_matched if coverage else 0
        reference_rows_had[i] = t.reference_matched
    col_nulls = nulls[idx] if n else np.zeros(0, dtype=np.int64)
    source = np.maximum(col_nulls - merge, 0)
    families = [family_of.get(names[j], UNEXPECTED_FAMILY) for j in idx]
    numeric = np.array(
        [pa.types.is_integer(types[j]) or pa.types.is_floating(types[j]) for j in idx], dtype=bool
    )
    lo = np.where(numeric, mins[idx], np.nan) if n else np.zeros(0)
    hi = np.where(numeric, maxs[idx], np.nan) if n else np.zeros(0)
    frame = pa.table(
        [
            pa.array([names[j] for j in idx], pa.string()),
            pa.array(families, pa.string()),
            pa.array(tables, pa.string()),
            pa.array([str(types[j]) for j in idx], pa.string()),
            pa.array(col_nulls, pa.int64()),
            pa.array(col_nulls / rows if rows else np.zeros(n), pa.float64()),
            pa.array(merge, pa.int64()),
            pa.array(source, pa.int64()),
            pa.array(newest, pa.int64()),
            pa.array(lo, pa.float64(), mask=np.isnan(lo)),
            pa.array(hi, pa.float64(), mask=np.isnan(hi)),
        ],
        schema=_SCHEMA,
    )
    fam = np.asarray(families, dtype=object)
    order = {f: i for i, f in enumerate(family_order)}
    summaries = []
    for family in sorted(set(families), key=lambda f: (order.get(f, len(order)), f)):
        m = fam == family
        cells = rows * int(m.sum())
        summary: dict[str, Any] = {
            "family": family,
            "columns": int(m.sum()),
            "null_share": _share(int(col_nulls[m].sum()), cells),
            "merge_null_share": _share(int(merge[m].sum()), cells),
            "source_null_share": _share(int(source[m].sum()), cells),
            "all_null_columns": int((col_nulls[m] >= rows).sum()) if rows else 0,
        }
        if coverage is not None:
            newest_cells = coverage.newest_rows * int(m.sum())
            had = int(newest_rows_had[m].sum())
            reference_had = int(reference_rows_had[m].sum())
            summary["newest_null_share"] = _share(int(newest[m].sum()), newest_cells)
            summary["newest_source_null_share"] = _share(
                int((newest[m] - newest_merge[m]).clip(min=0).sum()), had
            )
            summary["whole_source_null_share"] = _share(
                int(source[m].sum()), int(rows_had[m].sum())
            )
            summary["reference_source_null_share"] = _share(
                int((reference[m] - reference_merge[m]).clip(min=0).sum()), reference_had
            )
            summary["reference_cells"] = reference_had
            summary["newest_cells"] = had
        summaries.append(FamilyProfile(**summary))
    return Profile(
        pair=pair,
        rows=rows,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        columns=frame,
        families=tuple(summaries),
        coverage=coverage,
    )


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def publish_profile(
    storage: Storage, profile: Profile, published_at: datetime, *, keep: int = HISTORY_KEEP
) -> str:
    """Make `profile` the pair's published profile (beside its training file: what the next
    build is judged against) and one more entry of its history, of which the newest `keep` are
    kept; returns the published profile's URI."""
    data = profile.to_bytes()
    storage.write_bytes(history_key(profile.pair, published_at), data)
    uri = storage.write_bytes(profile_key(profile.pair), data).uri
    for key in sorted(storage.list(history_prefix(profile.pair)))[:-keep]:
        storage.delete(key)
    return uri


def load_profile(storage: Storage, pair: str) -> Profile | None:
    """The profile of the pair's last published training file, None before its first."""
    data = storage.read_bytes(profile_key(pair))
    if data is None:
        return None
    return Profile.from_bytes(data, storage.uri_of(profile_key(pair)))


def load_history(storage: Storage, pair: str, limit: int = HISTORY_KEEP) -> list[Profile]:
    """The profiles of the pair's last `limit` published files, newest first."""
    keys = sorted(storage.list(history_prefix(pair)), reverse=True)[:limit]
    out = []
    for key in keys:
        data = storage.read_bytes(key)
        if data is not None:
            out.append(Profile.from_bytes(data, storage.uri_of(key)))
    return out
