"""Profile drift: the file against the pair's last published profile."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.report import CheckOutcome, cap
from bqx_assets.core.gate.thresholds import Thresholds


def profile_drift(profile: Profile, history: Profile | None, th: Thresholds) -> CheckOutcome:
    name = "profile_drift"
    threshold = {
        "family_null_share": th.drift_family_null_share,
        "column_null_share": th.drift_column_null_share,
        "relative": th.drift_relative,
        "range_factor": th.drift_range_factor,
    }
    if history is None:
        return CheckOutcome(
            name,
            True,
            CHECK_DESCRIPTIONS[name],
            {
                "summary": "first build of the pair: no published profile to compare with; "
                "judged by the expected null shares (null_completeness)",
                "actual": "no history",
                "expected": "the pair's last published profile",
                "threshold": threshold,
            },
        )
    families: dict[str, dict[str, float]] = {}
    for f in profile.families:
        before = history.family(f.family)
        if before is not None and abs(f.null_share - before.null_share) > max(
            th.drift_family_null_share, th.drift_relative * before.null_share
        ):
            families[f.family] = {
                "before": round(before.null_share, 6),
                "now": round(f.null_share, 6),
            }
    now, then = profile.columns, history.columns
    then_index = {c: i for i, c in enumerate(then.column("column").to_pylist())}
    names = now.column("column").to_pylist()
    common = [(i, then_index[c]) for i, c in enumerate(names) if c in then_index]
    a = np.asarray([i for i, _ in common], dtype=np.int64)
    b = np.asarray([j for _, j in common], dtype=np.int64)

    def values(table: pa.Table, column: str, idx: np.ndarray) -> np.ndarray:
        array = table.column(column).combine_chunks().take(pa.array(idx, pa.int64()))
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)

    share_now, share_then = values(now, "null_share", a), values(then, "null_share", b)
    lo_now, lo_then = values(now, "min", a), values(then, "min", b)
    hi_now, hi_then = values(now, "max", a), values(then, "max", b)
    dtype_now = now.column("dtype").to_pylist()
    dtype_then = then.column("dtype").to_pylist()
    moved = np.abs(share_now - share_then) > np.maximum(
        th.drift_column_null_share, th.drift_relative * share_then
    )
    became_null = (share_now >= 1.0) & (share_then < 1.0)
    span = hi_then - lo_then
    became_constant = (lo_now == hi_now) & (span > 0)
    scale_now = np.fmax(np.abs(lo_now), np.abs(hi_now))
    scale_then = np.fmax(np.abs(lo_then), np.abs(hi_then))
    with np.errstate(invalid="ignore"):
        jumped = (
            (scale_now > 0)
            & (scale_then > 0)
            & (
                (scale_now > th.drift_range_factor * scale_then)
                | (scale_then > th.drift_range_factor * scale_now)
            )
        )
    retyped = [
        f"{names[i]}: {dtype_then[j]} -> {dtype_now[i]}"
        for i, j in common
        if dtype_now[i] != dtype_then[j]
    ]

    def named(mask: np.ndarray) -> list[str]:
        return [names[int(a[k])] for k in np.flatnonzero(mask)]

    lists = {
        "null_share_moved": named(moved & ~became_null),
        "became_all_null": named(became_null),
        "became_constant": named(became_constant),
        "range_jumped": named(jumped & ~became_constant),
        "retyped": retyped,
    }
    parts = []
    if families:
        parts.append(
            "families' null share moved: "
            + ", ".join(f"{k} {v['before']:.1%} -> {v['now']:.1%}" for k, v in families.items())
        )
    for label, items in lists.items():
        if items:
            parts.append(f"{len(items)} columns {label.replace('_', ' ')} (e.g. {items[0]})")
    return CheckOutcome(
        name,
        not parts,
        CHECK_DESCRIPTIONS[name],
        {
            "summary": "; ".join(parts)
            if parts
            else f"within tolerance of the profile of {history.created}",
            "actual": {k: len(v) for k, v in lists.items()} | {"families": len(families)},
            "expected": f"the profile published {history.created} ({history.rows:,} rows)",
            "threshold": threshold,
            "families": families,
            **{k: cap(v, th.max_names) for k, v in lists.items()},
        },
    )
