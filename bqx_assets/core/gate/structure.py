"""The file's shape: its rows, its columns, its targets and its key column."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.report import CheckOutcome, Expectation, cap, iso, share
from bqx_assets.core.gate.stats import ColumnStats
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.keys import EXAMPLES, duplicated
from bqx_assets.core.keys import int64s as _int64s
from bqx_assets.core.layout import KEY, KEY_TZ, KEY_UNIT

_TARGET_NAME = re.compile(r"^target_bqx(?P<window>\d+)_h(?P<horizon>\d+)$")


def row_count(rows: int, exp: Expectation, th: Thresholds) -> CheckOutcome:
    in_bounds = th.min_rows <= rows <= th.max_rows
    passed = rows == exp.spine_rows and in_bounds
    if rows == exp.spine_rows:
        why = f"{rows:,} rows, as the spine"
    elif rows > exp.spine_rows:
        extra = rows - exp.spine_rows
        why = f"{rows:,} rows, {extra:,} more than the spine's {exp.spine_rows:,} (fan-out)"
    else:
        why = f"{rows:,} rows, {exp.spine_rows - rows:,} fewer than the spine's {exp.spine_rows:,}"
    if not in_bounds:
        why += f"; outside the bounds {th.min_rows:,}-{th.max_rows:,}"
    return CheckOutcome(
        "row_count",
        passed,
        CHECK_DESCRIPTIONS["row_count"],
        {
            "summary": why,
            "actual": rows,
            "expected": exp.spine_rows,
            "threshold": {"min_rows": th.min_rows, "max_rows": th.max_rows},
            "difference": rows - exp.spine_rows,
        },
    )


def column_count(names: list[str], exp: Expectation, th: Thresholds) -> CheckOutcome:
    expected = set(exp.columns)
    actual = set(names)
    missing = [c for c in exp.columns if c not in actual]
    unexpected = [c for c in names if c not in expected]
    seen: set[str] = set()
    duplicates = [c for c in names if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
    passed = not missing and not unexpected and not duplicates and len(names) == len(exp.columns)
    in_order = tuple(names) == exp.columns
    parts = [f"{len(names):,} columns, expected {len(exp.columns):,}"]
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if duplicates:
        parts.append(f"{len(duplicates)} duplicated (e.g. {', '.join(duplicates[:3])})")
    if passed and not in_order:
        parts.append("not in catalog order")
    return CheckOutcome(
        "column_count",
        passed,
        CHECK_DESCRIPTIONS["column_count"],
        {
            "summary": "; ".join(parts),
            "actual": len(names),
            "expected": len(exp.columns),
            "threshold": "exact set of names",
            "missing_count": len(missing),
            "missing": cap(missing, th.max_names),
            "unexpected_count": len(unexpected),
            "unexpected": cap(unexpected, th.max_names),
            "duplicate_count": len(duplicates),
            "duplicates": cap(duplicates, th.max_names),
            "in_catalog_order": in_order,
        },
    )


def target_horizons(
    rows: int, stats: ColumnStats, index: dict[str, int], exp: Expectation, th: Thresholds
) -> CheckOutcome:
    missing = [t for t in exp.targets if t not in index]
    not_float = {
        t: str(stats.types[index[t]])
        for t in exp.targets
        if t in index and not pa.types.is_floating(stats.types[index[t]])
    }
    shares = {t: share(int(stats.nulls[index[t]]), rows) for t in exp.targets if t in index}
    over = {t: round(s, 6) for t, s in shares.items() if s > th.target_null_share}
    missing_horizons = sorted({int(m["horizon"]) for t in missing if (m := _TARGET_NAME.match(t))})
    missing_windows = sorted({int(m["window"]) for t in missing if (m := _TARGET_NAME.match(t))})
    passed = not missing and not not_float and not over
    ok = len(exp.targets) - len(missing) - len(not_float)
    parts = [f"{ok} of {len(exp.targets)} targets present and float"]
    if missing:
        parts.append(f"missing {', '.join(missing[:5])}")
    if not_float:
        parts.append(f"not float: {', '.join(list(not_float)[:5])}")
    if over:
        parts.append(f"{len(over)} over {th.target_null_share:.1%} null")
    worst = max(shares.values(), default=0.0)
    parts.append(f"worst null share {worst:.2%}")
    return CheckOutcome(
        "target_horizons",
        passed,
        CHECK_DESCRIPTIONS["target_horizons"],
        {
            "summary": "; ".join(parts),
            "actual": ok,
            "expected": len(exp.targets),
            "threshold": th.target_null_share,
            "missing": cap(missing, th.max_names),
            "missing_horizons": missing_horizons,
            "missing_windows": missing_windows,
            "not_float": dict(list(not_float.items())[: th.max_names]),
            "over_threshold": dict(sorted(over.items(), key=lambda kv: -kv[1])[: th.max_names]),
            "worst_null_share": round(worst, 6),
        },
    )


def key_integrity(pf: pq.ParquetFile, names: list[str], th: Thresholds) -> CheckOutcome:
    expected = f"timestamp[{KEY_UNIT}, tz={KEY_TZ}], unique, strictly increasing, in key_range"
    threshold = {"key_range": [th.key_start.isoformat(), th.key_end.isoformat()]}

    def failed(summary: str, actual: str) -> CheckOutcome:
        metadata = {"summary": summary, "actual": actual, "expected": expected}
        return CheckOutcome(
            "key_integrity",
            False,
            CHECK_DESCRIPTIONS["key_integrity"],
            {**metadata, "threshold": threshold},
        )

    if KEY not in names:
        return failed(f"no {KEY} column", "missing")
    if names.count(KEY) > 1:
        n = names.count(KEY)
        return failed(f"{KEY} appears {n} times: the join key is ambiguous", f"{n} columns")
    try:
        column = pf.read(columns=[KEY], use_threads=False).column(0).combine_chunks()
    except (OSError, pa.ArrowException) as exc:  # a corrupt page or a duplicated key column
        return failed(f"{KEY} unreadable: {exc}", "unreadable")
    dtype = column.type
    problems: list[str] = []
    type_ok = pa.types.is_timestamp(dtype) and dtype.unit == KEY_UNIT and dtype.tz == KEY_TZ
    if not type_ok:
        problems.append(f"type {dtype}, not timestamp[{KEY_UNIT}, tz={KEY_TZ}]")
    nulls = column.null_count
    if nulls:
        problems.append(f"{nulls:,} null keys")
    if pa.types.is_timestamp(dtype):
        # Compare as the unit the file claims: a µs value stored as ns shows up as 1970.
        keys = _int64s(pc.cast(column.drop_null(), pa.timestamp("us", tz=dtype.tz)))
    elif pa.types.is_integer(dtype):
        keys = _int64s(column.drop_null())
    else:
        keys = np.zeros(0, dtype=np.int64)
        problems.append("keys are not timestamps; order and range not checked")
    steps = np.diff(keys)
    distinct = len(np.unique(keys))
    duplicates = len(keys) - distinct
    non_increasing = int((steps <= 0).sum())
    if duplicates:
        problems.append(f"{duplicates:,} duplicate keys ({distinct:,} distinct of {len(keys):,})")
    if non_increasing:
        problems.append(f"{non_increasing:,} keys not after the previous one")
    start_us = int(th.key_start.timestamp() * 1_000_000)
    end_us = int(th.key_end.timestamp() * 1_000_000)
    outside = (keys < start_us) | (keys >= end_us)
    out_of_range = int(outside.sum())
    if out_of_range:
        problems.append(
            f"{out_of_range:,} keys outside {th.key_start.date()}..{th.key_end.date()} "
            f"(e.g. {iso(int(keys[outside][0]))})"
        )
    actual = {
        "type": str(dtype),
        "rows": len(column),
        "distinct": distinct,
        "duplicates": duplicates,
        "non_increasing": non_increasing,
        "nulls": nulls,
        "out_of_range": out_of_range,
        "min": iso(int(keys.min())) if len(keys) else None,
        "max": iso(int(keys.max())) if len(keys) else None,
    }
    metadata: dict[str, Any] = {
        "summary": "; ".join(problems)
        if problems
        else f"{len(keys):,} unique increasing keys {actual['min']} .. {actual['max']}",
        "actual": actual,
        "expected": expected,
        "threshold": threshold,
    }
    if duplicates:
        metadata["duplicate_examples"] = [iso(int(v)) for v in duplicated(keys)[1][:EXAMPLES]]
    if out_of_range:
        metadata["out_of_range_examples"] = [iso(int(v)) for v in np.unique(keys[outside])[:5]]
    return CheckOutcome(
        "key_integrity", not problems, CHECK_DESCRIPTIONS["key_integrity"], metadata
    )
