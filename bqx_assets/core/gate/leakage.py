"""Target leakage: no feature named like a target or carrying a target's values."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.report import CheckOutcome, Expectation, Listing, MetadataValue
from bqx_assets.core.gate.stats import ColumnStats
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.layout import PREFIX_SEPARATOR

# A target token anywhere in a feature name: `target_45`, `base_bqx__target_45`, `x_target`.
_LEAK_NAME = re.compile(r"(?:^|_)target(?:_|$)")
_MAX_VALUE_COMPARISONS = 100
"""Feature/target pairs with equal footer min/max compared row by row, at most (bounded cost)."""


def _looks_like_target(name: str) -> bool:
    _, sep, column = name.partition(PREFIX_SEPARATOR)
    return bool(_LEAK_NAME.search(name)) or (bool(sep) and column.startswith("target"))


def _same_values(pf: pq.ParquetFile, group: int, feature: str, target: str) -> bool:
    """True when a feature equals a target row by row (a copy, not a shifted series) in one
    row group; both columns are read from that row group only."""
    try:
        table = pf.read_row_group(group, columns=[feature, target], use_threads=False)
    except (OSError, pa.ArrowException):  # a duplicated name: column_count reports it
        return False
    a, b = table.column(0), table.column(1)
    both = len(a) - int(pc.sum(pc.or_(pc.is_null(a), pc.is_null(b))).as_py() or 0)
    equal = int(pc.sum(pc.equal(a, b)).as_py() or 0)
    return both > 0 and equal >= 0.99 * both


def no_target_leakage(
    pf: pq.ParquetFile,
    stats: ColumnStats,
    index: dict[str, int],
    exp: Expectation,
    th: Thresholds,
) -> CheckOutcome:
    allowed = set(th.leak_allow)
    features = [stats.names[j] for j in exp.features(stats.names)]
    by_name = [c for c in features if c not in allowed and _looks_like_target(c)]
    by_value: dict[str, str] = {}
    compared = 0
    if th.value_leak and stats.minmax:
        fingerprints: dict[tuple[float, float], list[str]] = {}
        for t in exp.targets:
            if t in index and index[t] in stats.minmax:
                fingerprints.setdefault(stats.minmax[index[t]], []).append(t)
        for c in features:
            mm = stats.minmax.get(index[c])
            # Equal min and max only nominate a column: a target is a lead of bqx_{w}, so the
            # feature bqx_{w} shares its extremes; only row-by-row equality is a copy.
            if not mm or mm[0] >= mm[1] or mm not in fingerprints or c in allowed:
                continue
            for t in fingerprints[mm]:
                if compared >= _MAX_VALUE_COMPARISONS:
                    break
                compared += 1
                if _same_values(pf, stats.sample_group, c, t):
                    by_value[c] = t
                    break
    offenders = list(dict.fromkeys([*by_name, *by_value]))
    summary = (
        f"{len(offenders)} feature columns look like targets: {', '.join(offenders[:5])}"
        if offenders
        else f"no target-like feature among {len(features):,}"
    )
    how = [(c, "named like a target") for c in by_name]
    how += [(c, f"equals {t} row by row") for c, t in by_value.items() if c not in by_name]
    metadata: dict[str, MetadataValue] = {
        "summary": summary
        + (f" (allow-listed: {', '.join(th.leak_allow)})" if th.leak_allow else ""),
        "actual": float(len(offenders)),
        "threshold": 0.0,
        "expected": "no feature named like a target or equal to one, but the allow-listed",
        "by_name": len(by_name),
        "by_value": len(by_value),
        "value_comparisons": compared,
        "allow_list": ", ".join(th.leak_allow) or "none",
    }
    if how:
        metadata["leaked"] = Listing.of(("column", "why"), how, th.max_names)
    return CheckOutcome(
        "no_target_leakage", not offenders, CHECK_DESCRIPTIONS["no_target_leakage"], metadata
    )
