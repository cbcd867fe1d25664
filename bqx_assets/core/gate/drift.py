"""Profile drift: the file against the pair's last published profile, and its families' series."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.report import CheckOutcome, Listing, MetadataValue
from bqx_assets.core.gate.thresholds import Thresholds

SERIES_BUILDS = 10
"""Published profiles shown beside this build in the drift series (newest last)."""


def profile_drift(
    profile: Profile,
    history: Profile | None,
    th: Thresholds,
    series: Sequence[Profile] = (),
) -> CheckOutcome:
    """Judge `profile` against `history` (the pair's last published profile; None: a first
    build); show each family's null share over `series` (the pair's published profiles, newest
    first, as `profile.load_history` gives them) and this build."""
    name = "profile_drift"
    tolerances = (
        f"a family's null share may move {th.drift_family_null_share * 100:g} points or "
        f"{th.drift_relative:.0%} of itself, a column's {th.drift_column_null_share * 100:g} "
        f"points or {th.drift_relative:.0%}; magnitudes {th.drift_range_factor:g}x"
    )
    trend: dict[str, MetadataValue] = {
        f"null_share_{f.family}": round(f.null_share, 6) for f in profile.families
    }
    trend["series"] = _series(profile, series)
    if history is None:
        return CheckOutcome(
            name,
            True,
            CHECK_DESCRIPTIONS[name],
            {
                "summary": "first build of the pair: no published profile to compare with; "
                "judged by the expected null shares (null_completeness)",
                "actual": 0.0,
                "threshold": 0.0,
                "expected": "the pair's last published profile",
                "judged_against": "none: first build of the pair",
                **trend,
            },
        )
    # A file that grew keeps its earlier rows' nulls over more rows: a share that fell by no more
    # than the new rows dilute it (to `before * dilution`, new rows without a null) is no drift
    # (the warm-up nulls of a file's first days weigh less each day an all-time window adds).
    dilution = history.rows / profile.rows if profile.rows > history.rows > 0 else 1.0
    families: list[tuple[str, str, str, str, str]] = []
    for f in profile.families:
        before = history.family(f.family)
        if before is None:
            continue
        allowed = max(th.drift_family_null_share, th.drift_relative * before.null_share)
        moved = f.null_share - before.null_share
        floor = before.null_share * dilution
        down = max(th.drift_family_null_share, th.drift_relative * floor)
        if moved > allowed or floor - f.null_share > down:
            families.append(
                (
                    f.family,
                    f"{before.null_share:.2%}",
                    f"{f.null_share:.2%}",
                    f"{moved * 100:+.2f} points",
                    f"{allowed * 100:.2f} points",
                )
            )
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
    floor_then = share_then * dilution
    moved = (
        share_now - share_then
        > np.maximum(th.drift_column_null_share, th.drift_relative * share_then)
    ) | (
        floor_then - share_now
        > np.maximum(th.drift_column_null_share, th.drift_relative * floor_then)
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

    def flagged(mask: np.ndarray, problem: str, detail: str) -> list[tuple[str, str, str]]:
        out = []
        for k in np.flatnonzero(mask):
            values = {
                "share": f"{share_then[k]:.2%} -> {share_now[k]:.2%}",
                "range": f"[{lo_then[k]:.4g}, {hi_then[k]:.4g}] -> [{lo_now[k]:.4g}, "
                f"{hi_now[k]:.4g}]",
            }
            out.append((names[int(a[k])], problem, values[detail]))
        return out

    kinds = {
        "null share moved": flagged(moved & ~became_null, "null share moved", "share"),
        "became all-null": flagged(became_null, "became all-null", "share"),
        "became constant": flagged(became_constant, "became constant", "range"),
        "magnitude jumped": flagged(jumped & ~became_constant, "magnitude jumped", "range"),
        "retyped": [
            (names[i], "retyped", f"{dtype_then[j]} -> {dtype_now[i]}")
            for i, j in common
            if dtype_now[i] != dtype_then[j]
        ],
    }
    parts = []
    if families:
        parts.append(
            "families' null share moved: " + ", ".join(f"{f[0]} {f[1]} -> {f[2]}" for f in families)
        )
    for label, items in kinds.items():
        if items:
            parts.append(f"{len(items)} columns {label} (e.g. {items[0][0]})")
    against = f"the profile published {history.created} ({history.rows:,} rows)"
    metadata: dict[str, MetadataValue] = {
        "summary": ("; ".join(parts) if parts else f"within tolerance of {against}")
        + f" ({tolerances})",
        # Families and columns that drifted.
        "actual": float(len(families) + sum(len(v) for v in kinds.values())),
        "threshold": 0.0,
        "expected": f"no drift from the last published profile: {tolerances}",
        "judged_against": against,
        "families_drifted": len(families),
        "columns_drifted": sum(len(v) for v in kinds.values()),
    }
    if families:
        metadata["drifted_families"] = Listing.of(
            ("family", "before", "now", "moved", "allowed"), families
        )
    columns = [row for items in kinds.values() for row in items[: th.max_names]]
    if columns:  # at most max_names of each kind
        metadata["drifted_columns"] = Listing(
            ("column", "problem", "before -> now"), tuple(columns), int(metadata["columns_drifted"])
        )
    metadata.update(trend)
    return CheckOutcome(name, not parts, CHECK_DESCRIPTIONS[name], metadata)


def _series(profile: Profile, published: Sequence[Profile]) -> Listing:
    """Null share per family (rows) in each of the last SERIES_BUILDS published profiles and
    this build (columns, oldest first)."""
    builds = [*reversed(published[:SERIES_BUILDS]), profile]
    heads: list[str] = []
    for p in builds[:-1]:
        head = p.created[:19].replace("T", " ")
        heads.append(head if head not in heads else f"{head} ({len(heads) + 1})")
    heads.append("this build")
    families = list(dict.fromkeys(f.family for p in builds for f in p.families))
    rows = []
    for family in families:
        cells = []
        for p in builds:
            f = p.family(family)
            cells.append("-" if f is None else f"{f.null_share:.2%}")
        rows.append((family, *cells))
    return Listing.of(("family", *heads), rows)
