"""Every gate check of a training file, computed from its parquet footer and its key column only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import FAMILY_ORDER
from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.drift import profile_drift
from bqx_assets.core.gate.leakage import no_target_leakage
from bqx_assets.core.gate.nulls import newest_rows, null_completeness
from bqx_assets.core.gate.profile import Profile, build_profile
from bqx_assets.core.gate.report import Expectation, ValidationReport
from bqx_assets.core.gate.stats import check_footer_size, fill_missing_nulls, footer_stats
from bqx_assets.core.gate.structure import column_count, key_integrity, row_count, target_horizons
from bqx_assets.core.gate.tables import table_coverage
from bqx_assets.core.gate.thresholds import DEFAULTS, Thresholds
from bqx_assets.core.merge.coverage import Coverage
from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes

CHECK_NAMES: tuple[str, ...] = tuple(CHECK_DESCRIPTIONS)
"""The gate's checks in the order they run, the report lists them and the UI shows them."""


def validate_training_file(
    path: Path | str,
    expectation: Expectation,
    thresholds: Thresholds | None = None,
    history: Profile | None = None,
    *,
    source: BinaryIO | None = None,
    series: Sequence[Profile] = (),
) -> ValidationReport:
    """Run every gate check on a training file without loading it: footer statistics, the merge's
    coverage record and the key column only. `history` is the profile of the pair's last
    published file (None for a first build); `series` the pair's last published profiles, newest
    first (`profile.load_history`), whose families' null shares profile_drift shows beside this
    file's. Raises ValidationError only when the file cannot be read as parquet or its coverage
    record is corrupt. `source`: the file already opened (a stored object read by ranges),
    `path` then only names it."""
    th = thresholds or DEFAULTS
    clock = Stopwatch()
    path = Path(path) if source is None else path
    check_footer_size(path, expectation.pair, th.max_footer_bytes, source)
    try:
        pf = pq.ParquetFile(source if source is not None else path)
    except (OSError, pa.ArrowException) as exc:
        raise ValidationError(
            f"pair {expectation.pair}: cannot read {path} as parquet: {exc}"
        ) from exc
    rows = pf.metadata.num_rows
    names = pf.schema_arrow.names
    index = {c: j for j, c in enumerate(names)}
    want: set[int] = set()
    if th.value_leak:
        want = {j for j, t in enumerate(pf.schema_arrow.types) if pa.types.is_floating(t)}
    stats = footer_stats(pf, path, want)
    read_columns = fill_missing_nulls(pf, stats)
    try:
        coverage = Coverage.from_metadata(pf.metadata.metadata)
    except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise ValidationError(
            f"pair {expectation.pair}: {path} has a corrupt coverage record: {exc}"
        ) from exc
    profile = build_profile(
        expectation.pair,
        rows,
        names,
        stats.types,
        stats.nulls,
        stats.mins,
        stats.maxs,
        expectation.features(names),
        expectation.family_of,
        FAMILY_ORDER,
        coverage,
    )
    nulls, families = null_completeness(rows, stats, expectation, th, read_columns, profile)
    outcomes = (
        row_count(rows, expectation, th),
        column_count(names, expectation, th),
        target_horizons(rows, stats, index, expectation, th),
        nulls,
        key_integrity(pf, names, th),
        no_target_leakage(pf, stats, index, expectation, th),
        table_coverage(coverage, rows, expectation, th),
        newest_rows(profile, stats, expectation, th),
        profile_drift(profile, history, th, series),
    )
    return ValidationReport(
        pair=expectation.pair,
        path=str(path),
        rows=rows,
        columns=len(names),
        outcomes=outcomes,
        seconds=clock.seconds,
        peak_rss_bytes=peak_rss_bytes(),
        families=families,
        profile=profile,
        row_groups=pf.metadata.num_row_groups,
    )
