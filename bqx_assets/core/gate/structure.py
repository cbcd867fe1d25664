"""The file's shape: its rows, its columns, its targets and its key column."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.report import (
    CheckOutcome,
    Expectation,
    Listing,
    MetadataValue,
    cap,
    iso,
    share,
)
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
    why += (
        f"; within the bounds {th.min_rows:,}-{th.max_rows:,}"
        if in_bounds
        else f"; outside the bounds {th.min_rows:,}-{th.max_rows:,}"
    )
    return CheckOutcome(
        "row_count",
        passed,
        CHECK_DESCRIPTIONS["row_count"],
        {
            "summary": why,
            "actual": float(rows),
            "threshold": float(exp.spine_rows),
            "expected": "rows = the spine's rows, within min_rows..max_rows",
            "difference": rows - exp.spine_rows,
            "min_rows": th.min_rows,
            "max_rows": th.max_rows,
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
    offending = [
        *((c, "missing") for c in missing[: th.max_names]),
        *((c, "unexpected") for c in unexpected[: th.max_names]),
        *((c, "duplicated") for c in duplicates[: th.max_names]),
    ]
    metadata: dict[str, MetadataValue] = {
        "summary": "; ".join(parts),
        "actual": float(len(names)),
        "threshold": float(len(exp.columns)),
        "expected": "exactly the catalog's columns, each once",
        "missing_count": len(missing),
        "unexpected_count": len(unexpected),
        "duplicate_count": len(duplicates),
        "in_catalog_order": in_order,
    }
    if offending:  # at most max_names of each kind
        metadata["columns"] = Listing(
            ("column", "problem"),
            tuple(offending),
            len(missing) + len(unexpected) + len(duplicates),
        )
    return CheckOutcome("column_count", passed, CHECK_DESCRIPTIONS["column_count"], metadata)


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
    parts.append(f"worst null share {worst:.2%} (at most {th.target_null_share:.1%})")
    problems: list[tuple[str, str]] = [(t, "missing") for t in missing]
    problems += [(t, f"type {d}, not float") for t, d in not_float.items()]
    problems += [
        (t, f"{v:.2%} null > {th.target_null_share:.1%}")
        for t, v in sorted(over.items(), key=lambda kv: -kv[1])
    ]
    metadata: dict[str, MetadataValue] = {
        "summary": "; ".join(parts),
        "actual": round(worst, 6),
        "threshold": th.target_null_share,
        "expected": f"all {len(exp.targets)} targets present, float, each at most "
        f"{th.target_null_share:.1%} null",
        "targets_ok": ok,
        "targets_expected": len(exp.targets),
        "missing": cap(missing, th.max_names),
    }
    if missing_horizons:
        metadata["missing_horizons"] = ", ".join(map(str, missing_horizons))
        metadata["missing_windows"] = ", ".join(map(str, missing_windows))
    if problems:
        metadata["targets"] = Listing.of(("target", "problem"), problems, th.max_names)
    return CheckOutcome("target_horizons", passed, CHECK_DESCRIPTIONS["target_horizons"], metadata)


def key_integrity(pf: pq.ParquetFile, names: list[str], th: Thresholds) -> CheckOutcome:
    key_range = f"{th.key_start.isoformat()} .. {th.key_end.isoformat()}"
    expected = (
        f"timestamp[{KEY_UNIT}, tz={KEY_TZ}], no nulls, unique, strictly increasing, in "
        f"[{key_range})"
    )

    def failed(summary: str, problem: str) -> CheckOutcome:
        metadata: dict[str, MetadataValue] = {
            "summary": summary,
            "actual": 1.0,
            "threshold": 0.0,
            "expected": expected,
            "problem": problem,
        }
        return CheckOutcome("key_integrity", False, CHECK_DESCRIPTIONS["key_integrity"], metadata)

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
    first = iso(int(keys.min())) if len(keys) else None
    last = iso(int(keys.max())) if len(keys) else None
    metadata: dict[str, MetadataValue] = {
        "summary": "; ".join(problems)
        if problems
        else f"{len(keys):,} unique increasing keys {first} .. {last}, inside [{key_range})",
        # Keys at fault: nulls, repeats, steps back and keys out of range (a wrong type counts
        # one).
        "actual": float(nulls + duplicates + non_increasing + out_of_range + (not type_ok)),
        "threshold": 0.0,
        "expected": expected,
        "key_type": str(dtype),
        "key_range": f"[{key_range})",
        "rows": len(column),
        "distinct": distinct,
        "first_key": first,
        "last_key": last,
    }
    faults = [
        ("null keys", nulls, ""),
        (
            "duplicate keys",
            duplicates,
            ", ".join(iso(int(v)) for v in duplicated(keys)[1][:EXAMPLES]) if duplicates else "",
        ),
        ("keys not after the previous one", non_increasing, ""),
        (
            "keys outside the range",
            out_of_range,
            ", ".join(iso(int(v)) for v in np.unique(keys[outside])[:5]) if out_of_range else "",
        ),
    ]
    rows = [(what, n, examples) for what, n, examples in faults if n]
    if rows:
        metadata["problems"] = Listing.of(("problem", "keys", "examples"), rows)
    return CheckOutcome(
        "key_integrity", not problems, CHECK_DESCRIPTIONS["key_integrity"], metadata
    )
